import crypto from 'node:crypto';
import fs from 'node:fs';
import { spawn } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import zlib from 'node:zlib';
import nock from 'nock';
import { runCli } from '../src/cli.js';
import { commitsOf, githubFor } from './helpers/github.js';
import { sha, SLUG, startTestServer, UPLOAD_SECRET, type TestServer } from './helpers/server.js';
import { eventually } from './helpers/eventually.js';
import { siteTarball } from './helpers/tarballs.js';

let server: TestServer;
let work: string;

beforeAll(async () => {
  nock.disableNetConnect();
  nock.enableNetConnect('127.0.0.1');
  server = await startTestServer();
});
afterAll(() => server.close());
beforeEach(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-cli-'));
});
afterEach(() => {
  nock.cleanAll();
  fs.rmSync(work, { recursive: true, force: true });
});

/** Runs `preview-gate upload …` in-process; what it printed, and its exit code. */
async function upload(args: string[], env: NodeJS.ProcessEnv = {}, options: { tty?: boolean } = {}) {
  const stdout = new PassThrough();
  const stderr = Object.assign(new PassThrough(), { isTTY: options.tty ?? false });
  const out: string[] = [];
  const err: string[] = [];
  stdout.on('data', (c) => out.push(String(c)));
  stderr.on('data', (c) => err.push(String(c)));
  const code = await runCli(['upload', ...args], { stdin: new PassThrough(), stdout, stderr, env, retryDelayMs: 5 });
  return { code, stdout: out.join(''), stderr: err.join('') };
}

function siteFolder(marker: string): string {
  const dir = path.join(work, 'dist');
  fs.mkdirSync(path.join(dir, 'assets'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'index.html'), `<h1>${marker}</h1>`);
  fs.writeFileSync(path.join(dir, 'assets', 'app.js'), 'console.log(2)');
  return dir;
}

const args = (source: string, pr: number, commit: string, url = server.url) => [source, '--pr', String(pr), '--sha', commit, '--url', url];

/**
 * `preview-gate upload` as a child process (when the server stand-in lives in this one, or whether the process
 * ends is what is tested): its exit status (null: killed after 20 s) and what it printed on stderr.
 */
async function uploadProcess(archive: string, commit: string, url: string, extra: string[] = []) {
  const child = spawn('node', ['bin/preview-gate.js', 'upload', ...args(archive, 1, commit, url), ...extra], { env: { ...process.env, PREVIEW_GATE_TOKEN: 't' } });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk));
  const killer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  const status = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  clearTimeout(killer);
  return { status, stderr };
}

test('a folder is tarred while streaming, stored, and its preview URL printed', async () => {
  const commit = sha('a1');
  const pr = { number: 70, commits: [commit], labels: ['safe for preview'] };
  githubFor(pr);
  commitsOf(pr);
  const token = await server.token({ 'pull-request': 70 });
  const res = await upload(args(siteFolder('cli build'), 70, commit), { PREVIEW_GATE_TOKEN: token });
  expect(res).toMatchObject({ code: 0, stdout: 'https://pr70-a1a1a1a--docs.previews.test/\n' });
  expect(res.stderr).toMatch(/^preview-gate upload: sent 0\.0 MB in \d+\.\d s\n$/); // one plain line in CI logs
  const stored = path.join(server.config.buildsDir, 'docs', '70', commit.slice(0, 7));
  expect(fs.readFileSync(path.join(stored, 'index.html'), 'utf8')).toBe('<h1>cli build</h1>');
  expect(fs.readFileSync(path.join(stored, 'assets', 'app.js'), 'utf8')).toBe('console.log(2)');
  await server.previews.settled();
});

test('an archive is sent as it is; a hidden build says so and still succeeds; sending it again is not a failure', async () => {
  const commit = sha('b2');
  const archive = path.join(work, 'site.tgz');
  fs.writeFileSync(archive, siteTarball('archived'));
  const pr = { number: 71, commits: [commit] };
  githubFor(pr);
  commitsOf(pr);
  const env = { CI_UPLOAD_TOKEN: await server.token({ 'pull-request': 71 }) };
  const first = await upload([...args(archive, 71, commit), '--token-env', 'CI_UPLOAD_TOKEN'], env);
  expect(first.code).toBe(0);
  expect(first.stderr).toContain("stored, not public yet: waiting for the 'safe for preview' label");

  githubFor(pr);
  commitsOf(pr);
  const again = await upload([...args(archive, 71, commit), '--token-env', 'CI_UPLOAD_TOKEN'], env);
  expect(again.code).toBe(0);
  expect(again.stderr).toContain('a build of b2b2b2b is already stored; nothing to do');
  await server.previews.settled();
});

test('an archive is sent with its length, so a server refuses one over its limit at once', async () => {
  const archive = path.join(work, 'big.tgz');
  fs.writeFileSync(archive, crypto.randomBytes(300_000));
  const fake = await fakeServer([{ status: 413, body: { error: 'The upload is larger than 1000 bytes.' } }]);
  const res = await upload(args(archive, 1, sha('d4'), fake.url), { PREVIEW_GATE_TOKEN: 't' });
  await fake.close();
  expect(res.code).toBe(1);
  expect(res.stderr).toContain('refused (HTTP 413): The upload is larger than 1000 bytes.');
  expect(fake.requests[0]!.headers['content-length']).toBe('300000');
  expect(fake.requests[0]!.headers['transfer-encoding']).toBeUndefined();
});

test('refused before its body is read, the CLI process ends at once instead of waiting for the server to drop it', async () => {
  const archive = path.join(work, 'refused.tgz');
  fs.writeFileSync(archive, crypto.randomBytes(8_000_000));
  // Answers 403 after the request's headers and never reads the body (as a server refusing a token does).
  const sockets: net.Socket[] = [];
  const refusing = net.createServer((socket) => {
    sockets.push(socket);
    socket.once('data', () => {
      socket.pause();
      const body = JSON.stringify({ error: 'The token is not valid.' });
      socket.write(`HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
    });
  });
  await new Promise<void>((resolve) => refusing.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(refusing.address() as AddressInfo).port}`;
  const started = Date.now();
  const cli = await uploadProcess(archive, sha('d4'), url);
  const took = Date.now() - started;
  for (const socket of sockets) socket.destroy();
  await new Promise((resolve) => refusing.close(resolve));
  expect(cli.status).toBe(1);
  expect(cli.stderr).toBe('preview-gate upload: refused (HTTP 403): The token is not valid.\n');
  // It ended by itself (before the change it stayed until the connection was dropped; here: never).
  expect(took).toBeLessThan(10_000);
});

test('on any CI the token can be signed by the CLI itself from the upload secret', async () => {
  const commit = sha('e5');
  const pr = { number: 73, commits: [commit] };
  githubFor(pr);
  commitsOf(pr);
  const res = await upload([...args(siteFolder('signed here'), 73, commit), '--repo', SLUG], { PREVIEW_GATE_SECRET: UPLOAD_SECRET });
  expect(res.code).toBe(0);
  expect(fs.existsSync(path.join(server.config.buildsDir, 'docs', 'hidden--73', 'e5e5e5e', 'index.html'))).toBe(true);
  await server.previews.settled();

  const wrong = await upload([...args(siteFolder('x'), 73, sha('f6')), '--repo', SLUG], { PREVIEW_GATE_SECRET: 'not-the-secret-but-long-enough-0123456789' });
  expect(wrong.code).toBe(1);
  expect(wrong.stderr).toMatch(/refused \(HTTP 403\)/);
});

test('a refusal prints the server\'s sentence and exits 1', async () => {
  const token = await server.token({ 'pull-request': 72 }, { secret: 'a-wrong-secret-that-is-long-enough-0123456789' });
  const res = await upload(args(siteFolder('x'), 72, sha('c3')), { PREVIEW_GATE_TOKEN: token });
  expect(res.code).toBe(1);
  expect(res.stderr).toMatch(/refused \(HTTP 403\): .*signature/i);
});

test('on a terminal a progress bar is drawn for an archive; without one, a single line', async () => {
  const archive = path.join(work, 'big.tgz');
  fs.writeFileSync(archive, crypto.randomBytes(3_000_000)); // the fake server does not look inside
  const fake = await fakeServer([
    { status: 201, body: { url: 'https://x/' } },
    { status: 201, body: { url: 'https://x/' } },
  ]);
  const onTerminal = await upload(args(archive, 1, sha('d4'), fake.url), { PREVIEW_GATE_TOKEN: 't' }, { tty: true });
  const inCi = await upload(args(archive, 1, sha('d4'), fake.url), { PREVIEW_GATE_TOKEN: 't' });
  await fake.close();
  expect(onTerminal.code).toBe(0);
  expect(onTerminal.stderr).toMatch(/^\r\[#*-*\] \d+% \d\.\d of 3\.0 MB/);
  expect(onTerminal.stderr).toMatch(/\r\x1b\[Kpreview-gate upload: sent 3\.0 MB in \d+\.\d s\n$/);
  expect(inCi.stderr).toMatch(/^preview-gate upload: sent 3\.0 MB in \d+\.\d s\n$/);
  expect(fake.requests[0]!.body.length).toBe(3_000_000);
});

test('503 is retried with backoff (Retry-After honoured) and the build is sent again whole', async () => {
  const fake = await fakeServer([
    { status: 503, body: { error: 'The server is restarting.' }, headers: { 'retry-after': '0' } },
    { status: 502, body: {} },
    { status: 201, body: { url: 'https://pr1-d4d4d4d--docs.previews.test/' } },
  ]);
  const res = await upload([...args(siteFolder('retry'), 1, sha('d4'), fake.url), '--full'], { PREVIEW_GATE_TOKEN: 'tok' });
  await fake.close();
  expect(res.code).toBe(0);
  expect(res.stdout).toBe('https://pr1-d4d4d4d--docs.previews.test/\n');
  expect(res.stderr).toContain('the server is busy (HTTP 503: The server is restarting.); retrying in 0 s');
  expect(fake.requests).toHaveLength(3);
  // Every attempt carried the whole build, a valid gzip, with the token.
  for (const r of fake.requests) {
    expect(zlib.gunzipSync(r.body).includes('<h1>retry</h1>')).toBe(true);
    expect(r.headers.authorization).toBe('Bearer tok');
    expect(r.url).toBe(`/create-build/1/${sha('d4')}`);
  }
});

test('a folder goes by digest: the next commit sends only the changed file; the server holds both builds whole', async () => {
  const [first, second] = [sha('e1'), sha('e2')];
  const pr = { number: 74, commits: [first, second], labels: ['safe for preview'] };
  const token = await server.token({ 'pull-request': 74 });
  const dir = siteFolder('first');
  fs.writeFileSync(path.join(dir, 'assets', 'big.bin'), crypto.randomBytes(2 * 1024 * 1024));
  githubFor(pr);
  commitsOf(pr);
  expect((await upload(args(dir, 74, first), { PREVIEW_GATE_TOKEN: token })).code).toBe(0);
  fs.writeFileSync(path.join(dir, 'index.html'), '<h1>second</h1>');
  githubFor(pr);
  commitsOf(pr);
  const res = await upload(args(dir, 74, second), { PREVIEW_GATE_TOKEN: token });
  expect(res.code).toBe(0);
  expect(res.stdout).toBe(`https://pr74-${second.slice(0, 7)}--docs.previews.test/\n`);
  // 15 bytes went, not the 2 MiB file: 0.0 MB.
  expect(res.stderr).toMatch(/^preview-gate upload: sent 0\.0 MB in \d+\.\d s \(1 of 3 files; the server had the others\)\n$/);
  const stored = path.join(server.config.buildsDir, 'docs', '74', second.slice(0, 7));
  expect(fs.readFileSync(path.join(stored, 'index.html'), 'utf8')).toBe('<h1>second</h1>');
  expect(fs.readFileSync(path.join(stored, 'assets', 'big.bin'))).toEqual(fs.readFileSync(path.join(dir, 'assets', 'big.bin')));
});

test.each([
  ['404', { status: 404, body: {} }],
  ['an older preview-gate', { status: 400, body: { error: 'The upload URL must be /create-build/<pr number>/<40-character commit SHA>.' } }],
])('a server without digest uploads (%s) gets the whole build', async (_what, manifestAnswer) => {
  const fake = await fakeServer([manifestAnswer, { status: 201, body: { url: 'https://pr1-d4d4d4d--docs.previews.test/' } }]);
  const res = await upload(args(siteFolder('old server'), 1, sha('d4'), fake.url), { PREVIEW_GATE_TOKEN: 't' });
  await fake.close();
  expect(res.code).toBe(0);
  expect(res.stderr).toContain('the server does not take digest uploads; sending the whole build');
  expect(fake.requests.map((r) => r.url)).toEqual([`/create-build/1/${sha('d4')}/manifest`, `/create-build/1/${sha('d4')}`]);
  expect(zlib.gunzipSync(fake.requests[1]!.body).includes('<h1>old server</h1>')).toBe(true);
  expect(fake.requests[1]!.headers['preview-gate-manifest']).toBeUndefined();
});

test('when the server lost a file between manifest and upload, the CLI asks again once', async () => {
  const dir = siteFolder('again');
  const hashOf = (p: string) => crypto.createHash('sha256').update(fs.readFileSync(path.join(dir, p))).digest('hex');
  const fake = await fakeServer([
    { status: 200, body: { missing: [hashOf('index.html')] } },
    { status: 400, body: { error: 'The manifest names "assets/app.js" (sha256 …), which was neither sent nor stored; send the manifest again.' } },
    { status: 200, body: { missing: [hashOf('index.html'), hashOf('assets/app.js')] } },
    { status: 201, body: { url: 'https://x/' } },
  ]);
  const res = await upload(args(dir, 1, sha('d4'), fake.url), { PREVIEW_GATE_TOKEN: 't' });
  await fake.close();
  expect(res.code).toBe(0);
  // The manifest goes gzip-compressed; the upload names the JSON by its sha256.
  expect(fake.requests[0]!.headers['content-encoding']).toBe('gzip');
  const manifest = zlib.gunzipSync(fake.requests[0]!.body);
  expect(JSON.parse(String(manifest))).toEqual({
    files: {
      'assets/app.js': { sha256: hashOf('assets/app.js'), size: 14 },
      'index.html': { sha256: hashOf('index.html'), size: '<h1>again</h1>'.length },
    },
  });
  for (const upload of [fake.requests[1]!, fake.requests[3]!]) {
    expect(upload.headers['preview-gate-manifest']).toBe(crypto.createHash('sha256').update(manifest).digest('hex'));
  }
  expect(zlib.gunzipSync(fake.requests[1]!.body).includes('console.log(2)')).toBe(false);
  expect(zlib.gunzipSync(fake.requests[3]!.body).includes('console.log(2)')).toBe(true);
});

test('503 that does not go away fails after the retries', async () => {
  const fake = await fakeServer(Array(5).fill({ status: 503, body: { error: 'GitHub could not be asked; retry later.' } }));
  const res = await upload([...args(siteFolder('x'), 1, sha('d4'), fake.url), '--retries', '2'], { PREVIEW_GATE_TOKEN: 't' });
  await fake.close();
  expect(res.code).toBe(1);
  expect(fake.requests).toHaveLength(3);
  expect(res.stderr).toContain('refused (HTTP 503): GitHub could not be asked; retry later.');
});

test('an unreachable server is a clear message and exit 1', async () => {
  const closed = await fakeServer([]);
  await closed.close();
  const res = await upload([...args(siteFolder('x'), 1, sha('d4'), closed.url), '--retries', '1'], { PREVIEW_GATE_TOKEN: 't' });
  expect(res.code).toBe(1);
  expect(res.stderr).toContain(`cannot reach ${closed.url} (ECONNREFUSED); retrying`);
  expect(res.stderr).toMatch(/cannot reach .* \(ECONNREFUSED\)\.\n$/);
});

test('on GitHub Actions the runner is asked for an OIDC token whose audience is the server', async () => {
  const fake = await fakeServer([{ status: 201, body: { url: 'https://x/' } }]);
  const runner = await fakeServer([{ status: 200, body: { value: 'oidc.jwt.value' } }]);
  const res = await upload(args(siteFolder('x'), 1, sha('d4'), fake.url), {
    ACTIONS_ID_TOKEN_REQUEST_URL: `${runner.url}/token?api-version=2.0`,
    ACTIONS_ID_TOKEN_REQUEST_TOKEN: 'runner-secret',
  });
  await Promise.all([fake.close(), runner.close()]);
  expect(res.code).toBe(0);
  expect(runner.requests[0]!.headers.authorization).toBe('bearer runner-secret');
  expect(new URL(runner.requests[0]!.url, 'http://x').searchParams.get('audience')).toBe(fake.url);
  expect(fake.requests[0]!.headers.authorization).toBe('Bearer oidc.jwt.value');
});

test('a folder holding a symbolic link is refused before anything is sent', async () => {
  const fake = await fakeServer([]);
  const dir = siteFolder('link');
  fs.symlinkSync('/etc/passwd', path.join(dir, 'assets', 'passwd'));
  const res = await upload(args(dir, 1, sha('d4'), fake.url), { PREVIEW_GATE_TOKEN: 't' });
  await fake.close();
  expect(res.code).toBe(1);
  expect(res.stderr).toBe(`preview-gate upload: ${path.join(dir, 'assets', 'passwd')} is not a regular file or folder (a symbolic link?); the server stores only files and folders.\n`);
  expect(fake.requests).toHaveLength(0);
});

test('when the runner gives no OIDC token, it says so and sends nothing', async () => {
  const fake = await fakeServer([]);
  const refusing = await fakeServer([{ status: 500, body: { message: 'Internal error' } }]);
  const gone = await fakeServer([]);
  await gone.close();
  const asked = (runner: string) =>
    upload(args(siteFolder('x'), 1, sha('d4'), fake.url), { ACTIONS_ID_TOKEN_REQUEST_URL: `${runner}/token`, ACTIONS_ID_TOKEN_REQUEST_TOKEN: 'runner-secret' });
  const [refused, unreachable] = [await asked(refusing.url), await asked(gone.url)];
  await Promise.all([fake.close(), refusing.close()]);
  expect(refused.code).toBe(1);
  expect(refused.stderr).toBe('preview-gate upload: GitHub Actions did not give an OIDC token (HTTP 500).\n');
  expect(unreachable.code).toBe(1);
  expect(unreachable.stderr).toBe('preview-gate upload: GitHub Actions did not give an OIDC token (ECONNREFUSED).\n');
  expect(fake.requests).toHaveLength(0);
});

test.each([
  [['--pr', '1', '--sha', sha('d4'), '--url', 'http://x'], /give one folder or .tgz file/],
  [['missing-dir', '--pr', '1', '--sha', sha('d4'), '--url', 'http://x'], /missing-dir does not exist/],
  [['.', '--pr', 'one', '--sha', sha('d4'), '--url', 'http://x'], /--pr must be the pull request number/],
  [['.', '--pr', '1', '--sha', 'abc', '--url', 'http://x'], /--sha must be the full 40-character commit SHA/],
  [['.', '--pr', '1', '--sha', sha('d4'), '--url', 'x.example'], /--url must be the server's base URL/],
  [['.', '--pr', '1', '--sha', sha('d4'), '--url', 'http://x', '--token-env', 'NOPE'], /the variable NOPE is not set/],
  [['.', '--pr', '1', '--sha', sha('d4'), '--url', 'http://x', '--bogus'], /unknown option --bogus\./],
  [['.', '--pr', '1', '--sha', sha('d4'), '--url', 'http://x', '--repo', 'a/b'], /but PREVIEW_GATE_SECRET is not set/],
  [['.', '--pr', '1', '--sha', sha('d4'), '--url', 'http://x', '--repo', 'nope'], /--repo must be <owner>\/<repo>/],
  [['.', '--pr', '1', '--sha', sha('d4'), '--url', 'http://x', '--timeout', '0'], /--timeout must be a number of seconds greater than 0/],
])('wrong arguments exit 2 with the reason: %j', async (argv, reason) => {
  const res = await upload(argv as string[]);
  expect(res.code).toBe(2);
  expect(res.stderr).toMatch(reason);
});

test('without any token, it says how to give one', async () => {
  const res = await upload(args(siteFolder('x'), 1, sha('d4')));
  expect(res.code).toBe(1);
  expect(res.stderr).toContain('no token: set PREVIEW_GATE_TOKEN');
});

/** A local server answering the given responses in order, recording each request with its whole body. */
async function fakeServer(answers: { status: number; body: object; headers?: Record<string, string> | (() => Record<string, string>) }[]) {
  const requests: { url: string; headers: http.IncomingHttpHeaders; body: Buffer }[] = [];
  const srv = http.createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    requests.push({ url: req.url!, headers: req.headers, body: Buffer.concat(chunks) });
    const answer = answers[requests.length - 1] ?? { status: 500, body: {} };
    const headers = typeof answer.headers === 'function' ? answer.headers() : answer.headers;
    res.writeHead(answer.status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(answer.body));
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`,
    requests,
    close: () => new Promise<void>((r) => srv.close(() => r())),
  };
}

test('the "sent N MB" line is printed whenever the server took the upload, even if its answer came before the body ended', async () => {
  // The real server answers once the archive's last entry is stored, which can be before the client's stream
  // ended (its flush had not run): the line went missing. This stand-in answers at once, before reading anything.
  // A raw socket: it answers on the first bytes and keeps reading (Node's server would close the connection).
  const answer = JSON.stringify({ url: 'https://pr1-d4d4d4d--docs.previews.test/' });
  const sockets = new Set<net.Socket>();
  const srv = net.createServer((socket) => {
    sockets.add(socket);
    socket.once('data', () => socket.write(`HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: ${answer.length}\r\n\r\n${answer}`));
    socket.on('error', () => undefined);
    socket.resume();
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const archive = path.join(work, 'early.tgz');
  fs.writeFileSync(archive, crypto.randomBytes(4_000_000));
  const res = await upload(args(archive, 1, sha('d4'), `http://127.0.0.1:${(srv.address() as AddressInfo).port}`), { PREVIEW_GATE_TOKEN: 't' });
  // A kept-alive connection would hold close() open: this stand-in never ends its sockets by itself. end(), not
  // destroy(): a destroyed socket with unread bytes answers with a reset, which reached the client's socket after
  // its request was done (an uncaught "read ECONNRESET" that failed whichever test file ran next).
  for (const socket of sockets) socket.end();
  await new Promise<void>((r) => srv.close(() => r()));
  expect(res.code).toBe(0);
  expect(res.stderr).toMatch(/^preview-gate upload: sent \d+\.\d MB in \d+\.\d s\n$/);
});

test('a 409 with Retry-After (another upload of the SHA still being stored) is asked again until it is stored; a 409 without it is "already stored"', async () => {
  const fake = await fakeServer([
    { status: 409, body: { error: `Another upload of ${sha('d9').slice(0, 7)} is being stored for pull request #1; try again shortly.` }, headers: { 'retry-after': '1' } },
    { status: 201, body: { url: 'https://pr1-d9d9d9d--docs.previews.test/' } },
  ]);
  const res = await upload([...args(siteFolder('claimed'), 1, sha('d9'), fake.url), '--full', '--retries', '0'], { PREVIEW_GATE_TOKEN: 'tok' });
  await fake.close();
  expect(res.code).toBe(0);
  expect(res.stdout).toBe('https://pr1-d9d9d9d--docs.previews.test/\n');
  expect(res.stderr).toContain('is being stored for pull request #1; try again shortly; asking again in 1 s');
  expect(fake.requests).toHaveLength(2);

  const stored = await fakeServer([{ status: 409, body: { error: 'A build of d9d9d9d already exists for pull request #1.' } }]);
  const again = await upload([...args(siteFolder('claimed'), 1, sha('d9'), stored.url), '--full'], { PREVIEW_GATE_TOKEN: 'tok' });
  await stored.close();
  expect(again.code).toBe(0);
  expect(again.stderr).toContain('is already stored; nothing to do');
  expect(stored.requests).toHaveLength(1);
});

test('a 409 whose Retry-After is an HTTP date (not seconds) is read as a date: asked again after it, not taken for "already stored"', async () => {
  // Made when the answer is sent (not when the test starts, which a loaded machine can make seconds earlier):
  // 2.5 s ahead, cut to the header's whole seconds, is 1.5-2.5 s ahead; the CLI's own floor is 1 s.
  const at = () => ({ 'retry-after': new Date(Date.now() + 2500).toUTCString() });
  const fake = await fakeServer([
    { status: 409, body: { error: `Another upload of ${sha('da').slice(0, 7)} is being stored for pull request #1; try again shortly.` }, headers: at },
    { status: 201, body: { url: 'https://pr1-dadadad--docs.previews.test/' } },
  ]);
  const res = await upload([...args(siteFolder('dated'), 1, sha('da'), fake.url), '--full', '--retries', '0'], { PREVIEW_GATE_TOKEN: 'tok' });
  await fake.close();
  expect(res.stderr).toMatch(/try again shortly; asking again in (1\.[1-9]|2(\.\d)?) s\n/); // more than the floor: the date's
  expect(res).toMatchObject({ code: 0, stdout: 'https://pr1-dadadad--docs.previews.test/\n' });
  expect(fake.requests).toHaveLength(2);
});

test('a server that takes the whole build and never answers is given up on after --timeout, naming the URL and the wait; the process ends', async () => {
  const archive = path.join(work, 'unanswered.tgz');
  fs.writeFileSync(archive, crypto.randomBytes(20_000)); // fits in the sockets' buffers: all of it arrives
  let received = 0;
  // Reads each request to its end and never answers.
  const silent = http.createServer((req) => void req.on('data', (chunk: Buffer) => (received += chunk.length)));
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(silent.address() as AddressInfo).port}`;
  const { status, stderr } = await uploadProcess(archive, sha('db'), url, ['--timeout', '0.5']);
  await eventually(() => received === 20_000, 5_000).catch(() => undefined);
  silent.closeAllConnections();
  await new Promise((r) => silent.close(r));
  expect({ status, stderr, received }).toEqual({
    status: 1,
    stderr: `preview-gate upload: no answer from ${url}/create-build/1/${sha('db')} for 0.5 s; gave up (--timeout <seconds> waits longer; uploading again is safe: a stored build is not stored twice).\n`,
    received: 20_000,
  });
});
