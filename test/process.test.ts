/**
 * The real server process (node dist/src/main.js, built by `npm test`), GitHub answered by the local fake of
 * the benchmarks through GHE_HOST: what a SIGKILL in the middle of an upload leaves, and how SIGTERM drains.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { SignJWT } from 'jose';
import { startFakeGitHub } from '../bench/fake-github.mjs';
import { startServerProcess } from '../bench/server-process.mjs';
import { appPrivateKey } from './helpers/github.js';
import { tarEntry } from './helpers/tarballs.js';

const SECRET = 'process-test-upload-secret-0123456789abcdef';
const SLUG = 'proc-org/docs';
let tmp: string;
let github: Awaited<ReturnType<typeof startFakeGitHub>>;
let env: NodeJS.ProcessEnv;
let port: number;

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-process-'));
  github = await startFakeGitHub();
  port = 30000 + Math.floor(Math.random() * 20000);
  env = {
    ...process.env,
    NODE_OPTIONS: '',
    DATA_DIR: path.join(tmp, 'data'),
    PORT: String(port),
    HOST: '127.0.0.1',
    APP_ID: '1',
    PRIVATE_KEY: appPrivateKey,
    WEBHOOK_SECRET: 'x',
    GHE_HOST: github.host,
    GHE_PROTOCOL: 'http',
    LOG_LEVEL: 'silent',
  };
  const set = spawnSync('node', ['bin/preview-gate.js', 'secret', 'set', SLUG, 'upload-key'], { env, input: SECRET });
  expect(set.status).toBe(0);
});
afterAll(async () => {
  await github.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

const startServer = (): Promise<ChildProcess> => startServerProcess(env, port, { stdio: 'ignore' });

const exited = (child: ChildProcess) => new Promise<number | null>((r) => child.once('exit', (code) => r(code)));

/** Starts an upload whose body the test feeds by hand; resolves the status when answered. */
async function slowUpload(pr: number, sha: string) {
  github.addCommit(pr, sha);
  const jwt = await new SignJWT({ slug: SLUG, 'pull-request': pr }).setProtectedHeader({ alg: 'HS256' }).setIssuer('Travis CI, GmbH').setExpirationTime('10m').sign(Buffer.from(SECRET));
  let answered!: Promise<number>;
  const req = http.request({ host: '127.0.0.1', port, path: `/create-build/${pr}/${sha}`, method: 'POST', headers: { authorization: `Token ${jwt}`, 'transfer-encoding': 'chunked' } });
  answered = new Promise((resolve, reject) => {
    req.on('response', (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode!));
    });
    req.on('error', reject);
  });
  const gzip = (await import('node:zlib')).createGzip({ level: 1 });
  gzip.on('data', (c: Buffer) => req.write(c));
  const ended = new Promise<void>((r) => gzip.on('end', () => r()));
  return {
    answered,
    file: (name: string, body: Buffer) => new Promise<void>((r) => gzip.write(tarEntry({ path: name, body }), () => gzip.flush(() => r()))),
    finish: async () => {
      gzip.end(Buffer.alloc(1024));
      await ended;
      req.end();
    },
  };
}

const stagingEntries = () => fs.readdirSync(path.join(tmp, 'data', 'builds', '.staging'));
const waitFor = async (check: () => boolean) => {
  for (let i = 0; i < 100 && !check(); i++) await new Promise((r) => setTimeout(r, 50));
  expect(check()).toBe(true);
};

test('SIGKILL in the middle of an upload: the restarted server is clean and the SHA can be uploaded again', async () => {
  const sha = crypto.createHash('sha1').update('killed').digest('hex');
  let server = await startServer();
  const upload = await slowUpload(1, sha);
  for (let i = 0; i < 20; i++) await upload.file(`page-${i}.html`, crypto.randomBytes(4096));
  await waitFor(() => stagingEntries().some((d) => fs.readdirSync(path.join(tmp, 'data', 'builds', '.staging', d)).length > 0));
  server.kill('SIGKILL');
  await exited(server);
  await upload.answered.catch(() => undefined);

  server = await startServer();
  expect(stagingEntries()).toEqual([]);
  expect(fs.existsSync(path.join(tmp, 'data', 'builds', 'docs', '1', sha.slice(0, 7)))).toBe(false);
  const again = await slowUpload(1, sha);
  await again.file('index.html', Buffer.from('<h1>after the crash</h1>'));
  await again.finish();
  expect(await again.answered).toBe(201);
  server.kill('SIGTERM');
  await exited(server);
});

test('SIGTERM lets an upload in flight finish and be answered before the process exits', async () => {
  const sha = crypto.createHash('sha1').update('drained').digest('hex');
  const server = await startServer();
  const upload = await slowUpload(2, sha);
  await upload.file('index.html', Buffer.from('<h1>drained</h1>'));
  await waitFor(() => stagingEntries().length > 0);
  const exit = exited(server);
  server.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 200));
  await upload.file('more.html', Buffer.from('still coming'));
  await upload.finish();
  expect(await upload.answered).toBe(201);
  expect(await exit).toBe(0);
  expect(fs.readFileSync(path.join(tmp, 'data', 'builds', 'docs', '2', sha.slice(0, 7), 'more.html'), 'utf8')).toBe('still coming');
});

test('the start-up line and /health name the database engine and the storage (names only: no URL, no credentials)', async () => {
  const server = await startServerProcess({ ...env, LOG_LEVEL: 'info' }, port, { stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  server.stdout!.on('data', (chunk: Buffer) => (out += chunk));
  const health = await (await fetch(`http://127.0.0.1:${port}/health`)).json();
  const exit = exited(server);
  server.kill('SIGTERM');
  expect(await exit).toBe(0);
  const started = out.split('\n').filter(Boolean).map((line) => JSON.parse(line)).find((line) => /^preview-gate is listening/.test(line.msg));
  expect({ health, started }).toEqual({
    health: expect.objectContaining({ status: 'ok', database: 'sqlite', storage: 'filesystem', builds: 'ok' }),
    started: expect.objectContaining({ database: 'sqlite', storage: 'filesystem' }),
  });
});
