import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { Readable, Transform, type Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import zlib from 'node:zlib';
import { startHashing, type Hashed } from './upload-hashing.js';

/** The CLI's `upload` command: streams a build to a preview-gate server from any CI. */
export interface UploadIo {
  stdout: Writable;
  stderr: Writable & { isTTY?: boolean };
  env: NodeJS.ProcessEnv;
  /** First wait before retrying a 502/503/504 or a refused connection; doubled each time (tests shorten it). */
  retryDelayMs?: number;
}

export const UPLOAD_USAGE = `  preview-gate upload <dir|archive.tgz> --pr <n> --sha <sha> --url <base> [--retries 4] [--full]
        [--timeout 300] [--token-env VAR | --repo <owner/repo> [--secret-env VAR]]
                                                    upload a build; the token is $PREVIEW_GATE_TOKEN (or --token-env),
                                                    or signed here with the upload secret $PREVIEW_GATE_SECRET and
                                                    --repo, or on GitHub Actions (id-token: write) an OIDC token;
                                                    a folder is sent by digest (only the files the server lacks)
                                                    unless --full is given or the server does not take digests;
                                                    gives up when the server sends nothing for --timeout seconds`;

const DEFAULT_TOKEN_ENV = 'PREVIEW_GATE_TOKEN';
const DEFAULT_SECRET_ENV = 'PREVIEW_GATE_SECRET';
const RETRYABLE = new Set([502, 503, 504]);
/**
 * How long the server may send nothing (no answer, nor read a byte of the body) before the CLI gives up: a
 * server that takes the build and never answers must not hold a CI job until the CI's own limit (hours).
 * Generous: the server answers once the build is stored and GitHub has been asked (each ask bounded in time).
 */
const DEFAULT_TIMEOUT_S = 300;

/** The server sent nothing for the whole --timeout. */
class NoAnswer extends Error {}

class UsageError extends Error {}

/** Node's parseArgs messages, shortened to the option they are about. */
export function parseArgsMessage(err: Error): string {
  const code = (err as { code?: string }).code;
  const option = /option '([^']+)'/.exec(err.message)?.[1];
  if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && option) return `unknown option ${option}.`;
  if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && option) return `the option ${option.split(' ')[0]} needs a value.`;
  if (code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') return 'unexpected argument.';
  return err.message;
}

/** Exit codes: 0 stored (or already stored), 1 refused or failed, 2 wrong arguments. */
export async function runUpload(args: string[], io: UploadIo): Promise<number> {
  let options: UploadOptions;
  try {
    options = parseUploadArgs(args, io.env);
  } catch (err) {
    if (!(err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS'))) throw err;
    io.stderr.write(`preview-gate upload: ${parseArgsMessage(err as Error)}\nusage:\n${UPLOAD_USAGE}\n`);
    return 2;
  }
  // On a terminal the progress line is redrawn in place: cleared before anything else is said.
  const say = (line: string) => io.stderr.write(`${io.stderr.isTTY ? '\r\x1b[K' : ''}preview-gate upload: ${line}\n`);
  try {
    options.token ??= options.secret ? await travisStyleToken(options) : await githubActionsToken(io.env, options.url);
  } catch (err) {
    say((err as Error).message);
    return 1;
  }
  const endpoint = `${options.url}/create-build/${options.pr}/${options.sha}`;
  const send = (url: string, request: () => UploadRequest) => sendWithRetries(url, request, options, io, say);
  const full = async () => {
    const { create: createTar } = await loadTar();
    return send(endpoint, () => {
      const stream = openBuild(options.source, createTar);
      // An archive's size is known: a server whose limit it exceeds refuses it (413) before a byte is sent.
      const headers = options.size === undefined ? undefined : { 'content-length': String(options.size) };
      return { body: stream, contentType: 'application/gzip', headers, size: options.size, source: options.source.path };
    });
  };

  if (options.source.kind === 'file' || options.full) return finish(await full());
  // Digest mode: the manifest first, then only the files the server lacks (twice at most: an object the
  // server removed in between is asked for again).
  let manifest: Manifest;
  try {
    manifest = await manifestOf(options.source.path);
  } catch (err) {
    say((err as Error).message);
    return 1;
  }
  void loadTar().catch(() => undefined); // loads while the manifest is on its way
  for (let round = 0; round < 2; round++) {
    const asked = await send(`${endpoint}/manifest`, () => ({ body: manifest.json, contentType: 'application/json', headers: { 'content-encoding': 'gzip' } }));
    if (typeof asked === 'number') return asked;
    if (serverLacksDigests(asked)) {
      say('the server does not take digest uploads; sending the whole build');
      return finish(await full());
    }
    if (asked.status !== 200 || !Array.isArray(asked.body.missing)) return finish(asked);
    const missing = new Set(asked.body.missing);
    const files = manifest.firstPathOf.filter(([hash]) => missing.has(hash)).map(([, rel]) => rel);
    const { create: createTar } = await loadTar();
    const sent = await send(endpoint, () => ({
      body: createTar({ gzip: true, cwd: options.source.path, portable: true }, files) as unknown as Readable,
      contentType: 'application/gzip',
      headers: { 'preview-gate-manifest': manifest.digest },
      source: options.source.path,
      note: files.length < manifest.count ? `${files.length} of ${manifest.count} files; the server had the others` : undefined,
    }));
    if (typeof sent !== 'number' && sent.status === 400 && /send the manifest again/.test(sent.body.error ?? '') && round === 0) continue;
    return finish(sent);
  }
  return 1;

  function finish(answer: Answer | number): number {
    return typeof answer === 'number' ? answer : report(answer.status, answer.body, options.sha, io);
  }
}

interface UploadRequest {
  body: Readable | Buffer;
  contentType: string;
  headers?: Record<string, string>;
  /** For the progress bar: the body's size when known. */
  size?: number;
  /** The file or folder read, for the message when reading it fails. */
  source?: string;
  /** Said after the summary of what was sent. */
  note?: string;
}

type AnswerBody = { url?: string; visibility?: string; reason?: string; error?: string; missing?: unknown };
interface Answer {
  status: number;
  body: AnswerBody;
}

/**
 * POSTs one request, retrying refused connections and 502/503/504 (Retry-After honoured) with the body made
 * anew each time. Returns the server's answer, or the exit code when it could not be had.
 */
async function sendWithRetries(url: string, request: () => UploadRequest, options: UploadOptions, io: UploadIo, say: (line: string) => void): Promise<Answer | number> {
  let delay = io.retryDelayMs ?? 2000;
  let claimWaitedMs = 0;
  for (let attempt = 0; ; attempt++) {
    const { body, contentType, headers, size, source, note } = request();
    let res: RawAnswer;
    let readFailure: Error | undefined;
    let progress: ReturnType<typeof withProgress> | undefined;
    if (!Buffer.isBuffer(body)) {
      body.once('error', (err: Error) => (readFailure = err));
      progress = withProgress(body, size, io.stderr);
    }
    try {
      const sent = progress ? progress.stream : (body as Buffer);
      res = await httpRequest('POST', url, { authorization: `Bearer ${options.token}`, 'content-type': contentType, ...headers }, options.timeoutMs, sent);
    } catch (err) {
      if (readFailure) {
        say(`could not read ${source}: ${readFailure.message}`);
        return 1;
      }
      // Not retried: the server may have stored the build (a new attempt would be answered 409, which is fine,
      // but each attempt could wait as long again).
      if (err instanceof NoAnswer) {
        say(`no answer from ${url} for ${seconds(options.timeoutMs)} s; gave up (--timeout <seconds> waits longer; uploading again is safe: a stored build is not stored twice).`);
        return 1;
      }
      const why = networkProblem(err);
      if (attempt < options.retries) {
        say(`cannot reach ${options.url} (${why}); retrying in ${delay / 1000} s`);
        await sleep(delay);
        delay *= 2;
        continue;
      }
      say(`cannot reach ${options.url} (${why}).`);
      return 1;
    }
    // Said only once the server took the build (2xx): a connection that failed or a refusal sent nothing worth
    // counting. Decided by the answer, not by whether the body's stream ended first: the server answers once the
    // archive's last entry is stored, which can come before the stream's end (the line then went missing).
    if (progress && res.status >= 200 && res.status < 300) say(`${progress.summary()}${note ? ` (${note})` : ''}`);
    const answer = parseAnswer(res.text);
    if (RETRYABLE.has(res.status) && attempt < options.retries) {
      const wait = retryAfterMs(res.retryAfter) ?? delay;
      say(`the server is busy (HTTP ${res.status}${answer.error ? `: ${answer.error}` : ''}); retrying in ${seconds(wait)} s`);
      await sleep(wait);
      delay *= 2;
      continue;
    }
    // 409 with Retry-After: another upload of this SHA is being stored (not yet stored). Waited for up to a
    // claim's lease and a margin (a dead uploader's claim is taken over once its lease ends), not counted as a retry.
    const claimWait = res.status === 409 ? retryAfterMs(res.retryAfter) : undefined;
    const stillStoring = (answer.error ?? 'another upload of this commit is being stored').replace(/\.$/, '');
    if (claimWait !== undefined) {
      if (claimWaitedMs >= CLAIM_WAIT_LIMIT_MS) {
        say(`${stillStoring}; gave up after ${claimWaitedMs / 1000} s (it is not stored yet)`);
        return 1;
      }
      const wait = Math.min(Math.max(claimWait, 1000), CLAIM_WAIT_LIMIT_MS - claimWaitedMs);
      say(`${stillStoring}; asking again in ${seconds(wait)} s`);
      await sleep(wait);
      claimWaitedMs += wait;
      attempt--;
      continue;
    }
    return { status: res.status, body: answer };
  }
}

/** How long an upload waits in all for another one of its SHA to finish: the claim lease (30 s) and a margin. */
const CLAIM_WAIT_LIMIT_MS = 45_000;

interface RawAnswer {
  status: number;
  retryAfter?: string;
  text: string;
}

/**
 * One request with node:http(s), answered as soon as the server's answer has arrived (even while the body is
 * still going out). Not fetch: Node loads its HTTP client (undici) on the first call, 40 ms of a 0.3 s digest
 * upload.
 */
async function httpRequest(method: 'GET' | 'POST', url: string | URL, headers: Record<string, string>, timeoutMs: number, body?: Readable | Buffer): Promise<RawAnswer> {
  const target = new URL(url);
  const client = target.protocol === 'https:' ? await import('node:https') : http;
  return new Promise((resolve, reject) => {
    // Idle, not total: a large build may take long to send, but a socket on which nothing moves for
    // `timeoutMs` (the server neither reads nor answers) is given up on.
    const req = client.request(target, { method, headers, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('error', reject);
      res.on('end', () => {
        const retryAfter = res.headers['retry-after'];
        resolve({ status: res.statusCode ?? 0, retryAfter, text: Buffer.concat(chunks).toString('utf8') });
        // Answered before the whole body was sent (a refusal before reading it): the rest is not sent. Without
        // this the process waited, its socket full, until the server dropped the connection (30 s later).
        if (!req.writableFinished && body !== undefined && !Buffer.isBuffer(body)) {
          body.unpipe(req);
          body.destroy();
          req.destroy();
        }
      });
    });
    req.on('timeout', () => req.destroy(new NoAnswer(`no answer for ${seconds(timeoutMs)} s`)));
    req.on('error', (err) => {
      // The build's stream stops too (a tar stream still reading files would keep the process alive).
      if (body !== undefined && !Buffer.isBuffer(body)) body.destroy();
      reject(err);
    });
    if (body === undefined || Buffer.isBuffer(body)) {
      req.end(body);
      return;
    }
    body.on('error', (err) => req.destroy(err));
    body.pipe(req);
  });
}

function parseAnswer(text: string): AnswerBody {
  try {
    const parsed: unknown = JSON.parse(text);
    return parsed && typeof parsed === 'object' ? (parsed as AnswerBody) : {};
  } catch {
    return {};
  }
}

/**
 * A server without the digest protocol: no such route (404/405, or this app's own sentence for an unknown
 * /create-build/ URL), or a manifest too large for it: the whole build is sent instead.
 */
function serverLacksDigests(answer: Answer): boolean {
  const { status, body } = answer;
  if (status === 404 || status === 405 || status === 501) return true;
  if (status === 400 && /^The upload URL must be/.test(body.error ?? '')) return true;
  return status === 413 && /^The manifest is larger than/.test(body.error ?? '');
}

interface Manifest {
  /** The body sent (gzip-compressed JSON), and the sha256 of the JSON (the header of the upload that follows). */
  json: Buffer;
  digest: string;
  count: number;
  /** Each distinct content once: [sha256, the first path that holds it]. */
  firstPathOf: [string, string][];
}

/** Walks the folder and hashes every file (on both cores, upload-hashing.ts): the digest upload's manifest. */
async function manifestOf(root: string): Promise<Manifest> {
  const hashing = startHashing();
  const paths: string[] = [];
  const walk = (rel: string) => {
    for (const entry of fs.readdirSync(path.join(root, rel), { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const child = rel ? `${rel}/${entry.name}` : entry.name;
      if (entry.isDirectory()) walk(child);
      else if (entry.isFile()) paths.push(child);
      else throw new Error(`${path.join(root, child)} is not a regular file or folder (a symbolic link?); the server stores only files and folders.`);
    }
  };
  try {
    walk('');
  } catch (err) {
    await hashing.stop();
    throw err;
  }
  const { hashed } = await hashing.hash(paths.map((rel) => path.join(root, rel)));
  const files: Record<string, Hashed> = {};
  const firstPath = new Map<string, string>();
  paths.forEach((rel, i) => {
    files[rel] = hashed[i]!;
    if (!firstPath.has(hashed[i]!.sha256)) firstPath.set(hashed[i]!.sha256, rel);
  });
  const json = Buffer.from(JSON.stringify({ files }));
  return { json: zlib.gzipSync(json), digest: sha256(json), count: paths.length, firstPathOf: [...firstPath] };
}

const sha256 = (content: Buffer) => crypto.createHash('sha256').update(content).digest('hex');

function report(status: number, body: { url?: string; reason?: string; error?: string }, sha: string, io: UploadIo): number {
  if (status === 201 && body.url) {
    io.stdout.write(`${body.url}\n`);
    return 0;
  }
  if (status === 202) {
    io.stderr.write(`preview-gate upload: stored, not public yet: ${body.reason ?? 'waiting for a maintainer'}.\n`);
    return 0;
  }
  if (status === 409) {
    io.stderr.write(`preview-gate upload: a build of ${sha.slice(0, 7)} is already stored; nothing to do.\n`);
    return 0;
  }
  io.stderr.write(`preview-gate upload: refused (HTTP ${status}): ${body.error ?? 'the server gave no reason'}\n`);
  return 1;
}

interface UploadOptions {
  source: { kind: 'dir' | 'file'; path: string };
  size?: number;
  pr: number;
  sha: string;
  url: string;
  token?: string;
  /** The repository's upload secret and slug, to sign a Travis-style token here. */
  secret?: { value: string; repo: string };
  retries: number;
  /** Send the whole build even to a server that takes digest uploads. */
  full: boolean;
  /** How long the server may send nothing before the upload is given up (--timeout). */
  timeoutMs: number;
}

function parseUploadArgs(args: string[], env: NodeJS.ProcessEnv): UploadOptions {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      pr: { type: 'string' },
      sha: { type: 'string' },
      url: { type: 'string' },
      'token-env': { type: 'string' },
      repo: { type: 'string' },
      'secret-env': { type: 'string' },
      retries: { type: 'string' },
      full: { type: 'boolean' },
      timeout: { type: 'string' },
    },
  });
  if (positionals.length !== 1) throw new UsageError('give one folder or .tgz file to upload.');
  const path = positionals[0]!;
  const stat = fs.statSync(path, { throwIfNoEntry: false });
  if (!stat) throw new UsageError(`${path} does not exist.`);
  if (!values.pr || !/^[1-9][0-9]*$/.test(values.pr)) throw new UsageError('--pr must be the pull request number.');
  if (!values.sha || !/^[0-9a-f]{40}$/.test(values.sha)) throw new UsageError('--sha must be the full 40-character commit SHA.');
  if (!values.url || !/^https?:\/\/[^/]+/.test(values.url)) throw new UsageError('--url must be the server\'s base URL (https://…).');
  const retries = values.retries === undefined ? 4 : Number(values.retries);
  if (!Number.isInteger(retries) || retries < 0) throw new UsageError('--retries must be a whole number.');
  const timeout = values.timeout === undefined ? DEFAULT_TIMEOUT_S : Number(values.timeout);
  if (!(Number.isFinite(timeout) && timeout > 0)) throw new UsageError('--timeout must be a number of seconds greater than 0.');
  const tokenEnv = values['token-env'] ?? DEFAULT_TOKEN_ENV;
  const token = env[tokenEnv];
  if (values['token-env'] && !token) throw new UsageError(`the variable ${tokenEnv} is not set.`);
  const secretEnv = values['secret-env'] ?? DEFAULT_SECRET_ENV;
  const secret = env[secretEnv];
  if (values.repo !== undefined && !/^[A-Za-z0-9_.-]+\/[A-Za-z0-9_.-]+$/.test(values.repo)) throw new UsageError('--repo must be <owner>/<repo>.');
  if (values.repo && !secret) throw new UsageError(`--repo signs a token with the upload secret, but ${secretEnv} is not set.`);
  if (values['secret-env'] && !values.repo) throw new UsageError('--secret-env needs --repo <owner>/<repo>.');
  return {
    source: { kind: stat.isDirectory() ? 'dir' : 'file', path },
    size: stat.isDirectory() ? undefined : stat.size,
    pr: Number(values.pr),
    sha: values.sha,
    url: values.url.replace(/\/+$/, ''),
    token: token || undefined,
    secret: values.repo && secret ? { value: secret, repo: values.repo } : undefined,
    retries,
    full: values.full ?? false,
    timeoutMs: Math.round(timeout * 1000),
  };
}

/**
 * tar and jose are loaded only when needed (they were 0.1 s of every run's 0.25 s start): jose only signs with
 * an upload secret, tar only packs what is sent.
 */
let tarModule: Promise<typeof import('tar')> | undefined;
const loadTar = () => (tarModule ??= import('tar'));

/** A folder is tarred and gzipped while it is sent (no temporary file); an archive is sent as it is. */
function openBuild(source: UploadOptions['source'], createTar: typeof import('tar').create): Readable {
  if (source.kind === 'file') return fs.createReadStream(source.path);
  const entries = fs.readdirSync(source.path);
  // portable: no owner names or uids; the server ignores them anyway.
  return createTar({ gzip: true, cwd: source.path, portable: true }, entries) as unknown as Readable;
}

/**
 * On a terminal, one line redrawn as bytes go out; in CI logs, nothing until the caller prints `summary()`
 * once the server has answered.
 */
function withProgress(source: Readable, total: number | undefined, out: Writable & { isTTY?: boolean }) {
  let sent = 0;
  let drawnAt = 0;
  const started = Date.now();
  const line = () => {
    const mb = (sent / 1e6).toFixed(1);
    if (!total) return `${mb} MB sent`;
    const share = Math.min(1, sent / total);
    const bar = '#'.repeat(Math.round(share * 30)).padEnd(30, '-');
    return `[${bar}] ${Math.round(share * 100)}% ${mb} of ${(total / 1e6).toFixed(1)} MB`;
  };
  const counter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      sent += chunk.length;
      if (out.isTTY && Date.now() - drawnAt > 100) {
        drawnAt = Date.now();
        out.write(`\r${line()}`);
      }
      cb(null, chunk);
    },
  });
  source.on('error', (err) => counter.destroy(err));
  return {
    stream: source.pipe(counter),
    summary: () => `sent ${(sent / 1e6).toFixed(1)} MB in ${((Date.now() - started) / 1000).toFixed(1)} s`,
  };
}

/** The token Travis's JWT addon used to make: HS256 with the upload secret, valid for this PR, for 10 minutes. */
async function travisStyleToken(options: UploadOptions): Promise<string> {
  const { value, repo } = options.secret!;
  const { SignJWT } = await import('jose');
  return new SignJWT({ slug: repo, 'pull-request': options.pr })
    .setProtectedHeader({ alg: 'HS256' })
    .setIssuer('Travis CI, GmbH')
    .setIssuedAt()
    .setExpirationTime('10m')
    .sign(Buffer.from(value));
}

/**
 * On GitHub Actions (with `permissions: id-token: write`), asks the runner for an OIDC token whose audience
 * is the server, so same-repository PRs need no stored secret.
 */
async function githubActionsToken(env: NodeJS.ProcessEnv, audience: string): Promise<string> {
  const requestUrl = env.ACTIONS_ID_TOKEN_REQUEST_URL;
  const requestToken = env.ACTIONS_ID_TOKEN_REQUEST_TOKEN;
  if (!requestUrl || !requestToken) {
    throw new Error(`no token: set ${DEFAULT_TOKEN_ENV} (or the variable named by --token-env), or run on GitHub Actions with "permissions: id-token: write".`);
  }
  const url = new URL(requestUrl);
  url.searchParams.set('audience', audience);
  let res: RawAnswer;
  try {
    res = await httpRequest('GET', url, { authorization: `bearer ${requestToken}` }, DEFAULT_TIMEOUT_S * 1000);
  } catch (err) {
    throw new Error(`GitHub Actions did not give an OIDC token (${networkProblem(err)}).`);
  }
  const { value } = parseAnswer(res.text) as { value?: unknown };
  if (res.status !== 200 || typeof value !== 'string' || !value) throw new Error(`GitHub Actions did not give an OIDC token (HTTP ${res.status}).`);
  return value;
}

/** Retry-After in ms: delay-seconds, or an HTTP date (RFC 9110 §10.2.3; a date past is 0). */
function retryAfterMs(header: string | undefined, now = Date.now()): number | undefined {
  if (header === undefined || header.trim() === '') return undefined;
  if (/^\s*\d+\s*$/.test(header)) return Number(header) * 1000;
  const at = Date.parse(header);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/** A wait for messages: whole seconds as they are, otherwise to a tenth ("1.2"). */
const seconds = (ms: number) => String(Math.round(ms / 100) / 10);

function networkProblem(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? (err as Error).message;
}
