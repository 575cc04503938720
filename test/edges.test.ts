/**
 * The anonymous edges (issue 12): what an outsider sends can neither leak, wedge nor exhaust the server.
 * Each test asserts the server stays healthy and nothing is left behind.
 */
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { SignJWT } from 'jose';
import nock from 'nock';
import { builds } from '../src/db/tables.js';
import { startServerProcess } from '../bench/server-process.mjs';
import { FakeGitHub } from './helpers/fake-github.js';
import { appPrivateKey } from './helpers/github.js';
import { sha, SLUG, startTestServer, UPLOAD_SECRET, type TestServer, dataEnv } from './helpers/server.js';
import { tarball } from './helpers/tarballs.js';
import { signedWebhook } from './helpers/webhooks.js';
import { eventually } from './helpers/eventually.js';
import { postgresUrl } from './helpers/postgres.js';

const OWNER = { id: 9001, login: 'octo-org' };
const DOCS = 7001;
const CONTRIBUTOR = { id: 555, login: 'contributor' };

let fake: FakeGitHub;
let server: TestServer;

beforeEach(async () => {
  nock.enableNetConnect('127.0.0.1');
  fake = await new FakeGitHub().start();
  fake.addRepo({ id: DOCS, owner: OWNER, name: 'docs' });
});
afterEach(async () => {
  await server?.close();
  await fake.close();
});

const start = async (env: Record<string, string> = {}) => (server = await startTestServer({ ...fake.env, ...env }));
const port = () => Number(new URL(server.url).port);
const staging = () => fs.readdirSync(path.join(server.config.buildsDir, '.staging'));
const pendingRows = async () => (await server.core.db.orm.select().from(builds)).filter((b) => b.status === 'pending');
const healthy = async () => expect((await fetch(`${server.url}/health`)).status).toBe(200);

async function travisToken(pr: number) {
  return new SignJWT({ slug: SLUG, 'pull-request': pr }).setProtectedHeader({ alg: 'HS256' }).setIssuer('Travis CI, GmbH').setExpirationTime('90m').sign(Buffer.from(UPLOAD_SECRET));
}

/** A site big enough that its upload takes many writes (incompressible bytes). */
function bigSite(): Buffer {
  const files: Record<string, Buffer> = {};
  for (let i = 0; i < 40; i++) files[`assets/f${i}.bin`] = Buffer.from(Array.from({ length: 32 * 1024 }, () => Math.floor(Math.random() * 256)));
  return tarball({ 'index.html': '<h1>big</h1>', ...files });
}

test('/health, which anyone can ask (nginx passes it), names the database engine and the storage and nothing more: no URL, path or credential', async () => {
  await start();
  const res = await fetch(`${server.url}/health`);
  expect({ status: res.status, body: await res.json() }).toEqual({
    status: 200,
    body: { status: 'ok', database: postgresUrl ? 'postgres' : 'sqlite', storage: 'filesystem', builds: 'ok', github: 'configured' },
  });
});

/** Sends the head and `cut` bytes of the body, then ends the connection the given way. */
function abortedUpload(pr: number, commit: string, token: string, body: Buffer, cut: number, how: 'reset' | 'fin'): Promise<void> {
  return new Promise((resolve) => {
    const socket = net.connect(port(), '127.0.0.1', () => {
      socket.write(
        `POST /create-build/${pr}/${commit} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token ${token}\r\n` +
          `Content-Type: application/gzip\r\nContent-Length: ${body.length}\r\n\r\n`,
      );
      socket.write(body.subarray(0, cut), () => {
        setTimeout(() => (how === 'reset' ? socket.resetAndDestroy() : socket.end()), 20);
      });
    });
    socket.on('error', () => undefined);
    socket.on('close', () => resolve());
    // A half-closed (FIN) client may never be answered: the test does not wait for the server to close.
    setTimeout(() => (socket.destroy(), resolve()), 2000);
  });
}

test('20 uploads cut at random points (reset or FIN, before or after GitHub answered) leave nothing; the same SHAs then upload with 201', async () => {
  await start();
  const body = bigSite();
  const commits = Array.from({ length: 20 }, (_, i) => sha((0xa0 + i).toString(16)));
  for (const [i, commit] of commits.entries()) fake.addPull(DOCS, { number: 100 + i, user: CONTRIBUTOR, commits: [commit], labels: ['safe for preview'] });
  await Promise.all(
    commits.map(async (commit, i) => abortedUpload(100 + i, commit, await travisToken(100 + i), body, Math.floor(Math.random() * (body.length - 1)), i % 2 ? 'reset' : 'fin')),
  );
  await eventually(async () => (await pendingRows()).length === 0 && staging().length === 0, 5000);
  for (const [i, commit] of commits.entries()) {
    const res = await server.upload(100 + i, commit, body);
    expect(res.status).toBe(201);
  }
  await healthy();
});

test('a client that goes away while GitHub is being asked releases its claim at once', async () => {
  await start({ GITHUB_TIMEOUT_MS: '1000' });
  const commit = sha('c1');
  fake.addPull(DOCS, { number: 7, user: CONTRIBUTOR, commits: [commit] });
  fake.fault = { kind: 'hang' };
  const body = bigSite();
  await abortedUpload(7, commit, await travisToken(7), body, 1000, 'reset');
  fake.fault = undefined;
  await new Promise((r) => setTimeout(r, 1500)); // GitHub's hung answer times out after the client left
  await eventually(async () => (await pendingRows()).length === 0 && staging().length === 0, 5000);
  expect((await server.upload(7, commit, body)).status).toBe(202);
});

test('a malformed chunked body (a bad chunk size) releases the claim and removes staging', async () => {
  await start();
  const commit = sha('c2');
  fake.addPull(DOCS, { number: 8, user: CONTRIBUTOR, commits: [commit] });
  const body = bigSite();
  const token = await travisToken(8);
  await new Promise<void>((resolve) => {
    const socket = net.connect(port(), '127.0.0.1', () => {
      socket.write(`POST /create-build/8/${commit} HTTP/1.1\r\nHost: x\r\nAuthorization: Token ${token}\r\nTransfer-Encoding: chunked\r\n\r\n`);
      socket.write(`${(4096).toString(16)}\r\n`);
      socket.write(body.subarray(0, 4096));
      setTimeout(() => socket.write('\r\nzz-not-hex\r\n'), 50);
    });
    socket.on('data', () => undefined);
    socket.on('error', () => undefined);
    socket.on('close', () => resolve());
    setTimeout(() => socket.destroy(), 3000);
  });
  // The socket closes as soon as Node's parser refuses the chunk; the request's work ends when its error reaches
  // the error handler (after the claim's release), which logs it: waited for, or a claim still being taken passes.
  await eventually(() => server.logs.some((l) => typeof l.path === 'string' && l.path.startsWith(`/create-build/8/`)), 5000);
  await eventually(async () => (await pendingRows()).length === 0 && staging().length === 0, 5000);
  expect((await server.upload(8, commit, body)).status).toBe(202);
  await healthy();
});

test('a body that stops coming is cut after UPLOAD_IDLE_SECONDS, and its claim released', async () => {
  await start({ UPLOAD_IDLE_SECONDS: '1' });
  const commit = sha('c3');
  fake.addPull(DOCS, { number: 9, user: CONTRIBUTOR, commits: [commit] });
  const body = bigSite();
  const token = await travisToken(9);
  const started = Date.now();
  const status = await new Promise<number | undefined>((resolve) => {
    const req = http.request({ port: port(), host: '127.0.0.1', method: 'POST', path: `/create-build/9/${commit}`, headers: { authorization: `Token ${token}`, 'content-length': body.length } });
    req.on('response', (res) => resolve(res.statusCode));
    req.on('error', () => resolve(undefined));
    req.write(body.subarray(0, 2000)); // and then nothing
  });
  expect(Date.now() - started).toBeLessThan(5000);
  expect([408, undefined]).toContain(status);
  await eventually(async () => (await pendingRows()).length === 0 && staging().length === 0, 5000);
  expect((await server.upload(9, commit, body)).status).toBe(202);
});

test('a whole body whose answer waits longer than UPLOAD_IDLE_SECONDS (GitHub slow) is answered, not cut', async () => {
  await start({ UPLOAD_IDLE_SECONDS: '1', GITHUB_TIMEOUT_MS: '10000' });
  const commit = sha('c5');
  fake.addPull(DOCS, { number: 11, user: CONTRIBUTOR, commits: [commit] });
  // The body is sent at once; GitHub's answers about the PR then take 2.5 s: nothing is idle but the server.
  fake.latencyMs = 2500;
  try {
    const res = await server.upload(11, commit, tarball({ 'index.html': 'slow GitHub' }));
    expect([res.status, await res.text()]).toEqual([202, expect.stringContaining('"visibility":"hidden"')]);
  } finally {
    fake.latencyMs = 0;
  }
});

test('a client that sends its whole body before reading still reads the refusal (413 by header, 403 by token)', async () => {
  await start({ MAX_UPLOAD_BYTES: String(512 * 1024) });
  const commit = sha('c4');
  fake.addPull(DOCS, { number: 10, user: CONTRIBUTOR, commits: [commit] });
  const big = Buffer.alloc(600 * 1024, 1);
  let res = await fetch(`${server.url}/create-build/10/${commit}`, { method: 'POST', headers: { authorization: `Token ${await travisToken(10)}` }, body: big });
  expect(res.status).toBe(413);
  res = await fetch(`${server.url}/create-build/10/${commit}`, { method: 'POST', headers: { authorization: 'Token a.b.c' }, body: Buffer.alloc(300 * 1024, 1) });
  expect(res.status).toBe(403);
  // Chunked, so the limit is found while streaming, with the claim already taken: 413, and nothing left.
  const body = bigSite();
  const chunked = new ReadableStream({
    start(controller) {
      for (let i = 0; i < body.length; i += 64 * 1024) controller.enqueue(body.subarray(i, i + 64 * 1024));
      controller.close();
    },
  });
  res = await fetch(`${server.url}/create-build/10/${commit}`, { method: 'POST', headers: { authorization: `Token ${await travisToken(10)}` }, body: chunked, duplex: 'half' } as RequestInit);
  expect(res.status).toBe(413);
  expect(await pendingRows()).toEqual([]);
  expect(staging()).toEqual([]);
  await healthy();
});

test('the Authorization scheme is case-insensitive (token, TOKEN, bearer)', async () => {
  await start();
  const commit = sha('c5');
  fake.addPull(DOCS, { number: 11, user: CONTRIBUTOR, commits: [commit] });
  for (const [i, scheme] of ['token', 'TOKEN', 'bearer'].entries()) {
    const c = sha(`d${i}`);
    fake.change(DOCS, 11, { commits: [...fake.pull(DOCS, 11).commits, c] });
    const res = await server.upload(11, c, tarball({ 'index.html': scheme }), { headers: { authorization: `${scheme} ${await travisToken(11)}` } });
    expect(res.status).toBe(202);
  }
});

test('a Travis token valid for more than 24 hours is refused', async () => {
  await start();
  fake.addPull(DOCS, { number: 12, user: CONTRIBUTOR, commits: [sha('c6')] });
  const token = await new SignJWT({ slug: SLUG, 'pull-request': 12 }).setProtectedHeader({ alg: 'HS256' }).setIssuer('Travis CI, GmbH').setExpirationTime(32503680000).sign(Buffer.from(UPLOAD_SECRET));
  const res = await server.upload(12, sha('c6'), tarball({ 'index.html': 'x' }), { token });
  expect(res.status).toBe(403);
  expect((await res.json()).error).toMatch(/more than 24 hours/);
});

describe('webhook bodies', () => {
  test('a body declared over 25 MB is refused before it is read', async () => {
    await start();
    const status = await new Promise<number>((resolve, reject) => {
      const req = http.request({ port: port(), host: '127.0.0.1', method: 'POST', path: '/api/github/webhooks', headers: { 'content-type': 'application/json', 'content-length': 90 * 1024 * 1024, 'x-github-event': 'push' } });
      req.on('response', (res) => resolve(res.statusCode!));
      req.on('error', reject);
      req.write('{"a":');
    });
    expect(status).toBe(413);
    await healthy();
  });

  test.each([
    ['unsigned', {}, 400],
    ['with a made-up signature', { 'x-hub-signature-256': `sha256=${'0'.repeat(64)}` }, 413],
  ] as const)('90 MB of chunked body %s raises the server process memory by less than 30 MB', async (kind, extraHeaders, refusal) => {
    await start(); // for the data directory and its settings; the measured server is a process of its own
    const procPort = 30000 + Math.floor(Math.random() * 20000);
    const env = { ...process.env, ...fake.env, NODE_OPTIONS: '', ...dataEnv(server), PORT: String(procPort), HOST: '127.0.0.1', APP_ID: '1', PRIVATE_KEY: appPrivateKey, WEBHOOK_SECRET: 'x', RECONCILE_INTERVAL_MINUTES: '0', LOG_LEVEL: 'silent' as const };
    const child = await startServerProcess(env, procPort, { stdio: 'ignore' });
    const rss = () => Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${child.pid}/status`, 'utf8'))![1]) / 1024;
    try {
      const before = rss();
      const chunk = Buffer.alloc(1024 * 1024, 0x20);
      const status = await new Promise<number | undefined>((resolve) => {
        const req = http.request({ port: procPort, host: '127.0.0.1', method: 'POST', path: '/api/github/webhooks', headers: { 'content-type': 'application/json', 'x-github-event': 'push', 'transfer-encoding': 'chunked', ...extraHeaders } });
        req.on('response', (res) => resolve(res.statusCode));
        req.on('error', () => resolve(undefined));
        let sent = 0;
        const pump = () => {
          while (sent < 90 && req.write(chunk)) sent++;
          if (sent < 90) req.once('drain', () => (sent++, pump()));
          else req.end();
        };
        pump();
      });
      expect([refusal, undefined]).toContain(status);
      const grew = rss() - before;
      if (process.env.PRINT_FIGURES) process.stderr.write(`90 MB webhook ${kind}: server RSS ${before.toFixed(1)} → ${(before + grew).toFixed(1)} MB\n`);
      expect(grew).toBeLessThan(30);
      expect((await fetch(`http://127.0.0.1:${procPort}/health`)).status).toBe(200);
    } finally {
      child.kill('SIGKILL');
    }
  });

  test('a signed webhook under the limit is still handled', async () => {
    await start();
    const { body, headers } = signedWebhook('ping', { zen: 'Keep it logically awesome.', hook_id: 1 });
    expect((await fetch(`${server.url}/api/github/webhooks`, { method: 'POST', headers, body })).status).toBe(200);
  });
});

describe('/can-have-public-preview', () => {
  const ask = (owner: string, repo: string, pr: number, headers: Record<string, string> = {}) =>
    fetch(`${server.url}/can-have-public-preview/${owner}/${repo}/${pr}`, { headers });
  /** Sent as written: fetch would resolve `%2e%2e` as a dot segment before sending. */
  const rawStatus = (path: string) =>
    new Promise<number>((resolve, reject) => {
      http.get({ host: '127.0.0.1', port: port(), path }, (res) => (res.resume(), resolve(res.statusCode!))).on('error', reject);
    });

  test('1,000 anonymous requests in a burst cost one read of the PR; the answer names the label of a public repository', async () => {
    await start({ SETTINGS_CACHE_SECONDS: '60' });
    await server.sweep!.run(); // learns that the repository is public
    fake.addPull(DOCS, { number: 20, user: CONTRIBUTOR, commits: [sha('e1')] });
    fake.requests.length = 0;
    const answers = await Promise.all(Array.from({ length: 1000 }, () => ask('octo-org', 'docs', 20)));
    expect(answers.every((a) => a.status === 200)).toBe(true);
    expect(await answers[0]!.json()).toEqual({ canHavePublicPreview: false, reason: "waiting for the 'safe for preview' label" });
    expect(fake.requests.filter((r) => r === 'GET /repos/octo-org/docs/pulls/20')).toHaveLength(1);
    expect(fake.requests.length).toBeLessThanOrEqual(4); // + token and the settings file (repository, then org)
    await healthy();
  }, 60_000);

  test('a private repository needs the upload token, and its answer names no label or team', async () => {
    fake.repos.get(DOCS)!.files['.github/preview-gate.yml'] = 'trustedLabel: secret-label\ntrustedTeams: [secret-team]\n';
    await start();
    await server.core.registry.resolveRepository({ id: DOCS, fullName: 'octo-org/docs', private: true });
    fake.addPull(DOCS, { number: 21, user: CONTRIBUTOR, commits: [sha('e2')] });
    const before = fake.requests.length;
    expect((await ask('octo-org', 'docs', 21)).status).toBe(401);
    expect((await ask('octo-org', 'docs', 21, { authorization: `Token ${await travisToken(22)}` })).status).toBe(403);
    expect(fake.requests.length).toBe(before);
    const res = await ask('octo-org', 'docs', 21, { authorization: `Token ${await travisToken(21)}` });
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(JSON.parse(text)).toEqual({ canHavePublicPreview: false, reason: 'the pull request is not trusted yet' });
    expect(text).not.toMatch(/secret-(label|team)/);
  });

  test('names outside GitHub\'s alphabet are refused with 400 (no GitHub request); an unknown repository is 404', async () => {
    await start();
    for (const [owner, repo] of [['octo-org', '%2e%2e'], ['octo-org', '..'], ['%2e%2e', 'installation'], ['octo_org', 'docs'], ['-octo', 'docs'], ['octo-org', 'do%20cs']]) {
      expect([await rawStatus(`/can-have-public-preview/${owner}/${repo}/1`), owner, repo]).toEqual([400, owner, repo]);
    }
    expect((await ask('octo-org', 'elsewhere', 1)).status).toBe(404);
    expect(fake.requests).toEqual([]);
  });
});
