/**
 * An operator's first hour, by the README's commands only (issue 13's "done when"): the server started with no
 * credentials, the app registered through the setup flow, nginx rendered by `preview-gate nginx`, the upload
 * secret set by `preview-gate secret set`, a build sent by `preview-gate upload` through nginx, a maintainer's
 * label — and the preview served through nginx. GitHub is the stand-in (test/helpers/fake-github.ts).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startServerProcess } from '../bench/server-process.mjs';
import { FakeGitHub } from './helpers/fake-github.js';
import { freePort, request, startNginx, type RunningNginx } from './helpers/nginx.js';
import { sha } from './helpers/server.js';

const LABEL = 'safe for preview';
// A name that resolves here: CI's upload command connects to PUBLIC_URL itself (nginx answers no other host).
const MAIN_HOST = 'localhost';
const COMMIT = sha('ab');
let tmp: string;
let fake: FakeGitHub;
let app: ChildProcess | undefined;
let nginx: RunningNginx | undefined;

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-newcomer-'));
  fs.chmodSync(tmp, 0o755); // nginx workers walk down to the builds
  fake = await new FakeGitHub().start();
  fake.addRepo({ id: 7001, owner: { id: 9001, login: 'octo-org' }, name: 'docs' });
  fake.addPull(7001, { number: 1, user: { id: 555, login: 'contributor' }, commits: [COMMIT] });
});
afterAll(async () => {
  app?.kill('SIGKILL');
  await nginx?.stop();
  await fake.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

test('from nothing to a labelled preview served through nginx, with the README commands', async () => {
  const port = await freePort();
  const nginxPort = await freePort();
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    ...fake.env,
    NODE_OPTIONS: '',
    DATA_DIR: path.join(tmp, 'data'),
    PORT: String(port),
    HOST: '127.0.0.1',
    PUBLIC_URL: `http://${MAIN_HOST}`,
    PREVIEW_DOMAIN: 'previews.test',
    GITHUB_THROTTLE: 'false',
    RECONCILE_INTERVAL_MINUTES: '0',
    LOG_LEVEL: 'silent',
  };
  for (const key of ['APP_ID', 'PRIVATE_KEY', 'PRIVATE_KEY_PATH', 'WEBHOOK_SECRET', 'SETUP_TOKEN']) delete env[key];
  // Asynchronous: the stand-in GitHub answers from this process, so a blocking spawnSync would deadlock.
  const cli = (args: string[], input?: string, extra: NodeJS.ProcessEnv = {}) =>
    new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn('node', ['bin/preview-gate.js', ...args], { env: { ...env, ...extra } });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('close', (status) => resolve({ status, stdout, stderr }));
      child.stdin.end(input);
    });

  // npm start (the build is done by npm test), and nginx from `preview-gate nginx`.
  app = await startServerProcess(env, port, { stdio: 'ignore' });
  const rendered = await cli(['nginx', '--listen', `127.0.0.1:${nginxPort}`, '--upstream', `127.0.0.1:${port}`]);
  expect(rendered.status).toBe(0);
  nginx = await startNginx(path.join(tmp, 'nginx'), { previewDomain: 'previews.test', buildsDir: path.join(tmp, 'data', 'builds'), upstream: '', publicHost: MAIN_HOST, maxUploadBytes: 0 }, { config: rendered.stdout, port: nginxPort });

  // Register the app: the setup page through nginx on this machine, and GitHub's redirect back with a code.
  const setupPage = await request(nginxPort, MAIN_HOST, '/probot');
  expect(setupPage.status).toBe(200);
  // GitHub hands back the state of the page's form with the code (without it, the code is refused).
  const state = /<form action="[^"]*\?state=([\w-]+)"/.exec(setupPage.body.toString())![1]!;
  const back = await request(nginxPort, MAIN_HOST, `/probot/setup?code=good-code&state=${state}`);
  expect(back.status).toBe(302);
  app.kill('SIGTERM');
  await new Promise((r) => app!.once('exit', r));
  app = await startServerProcess(env, port, { stdio: 'ignore' });
  const health = await request(nginxPort, MAIN_HOST, '/health');
  expect(JSON.parse(health.body.toString())).toMatchObject({ status: 'ok', github: 'configured' });

  // GitHub tells the app it was installed (signed with the secret the manifest flow handed over).
  const deliver = async (event: string, payload: object) => {
    const body = JSON.stringify(payload);
    const signature = `sha256=${crypto.createHmac('sha256', 'whsec-from-github').update(body).digest('hex')}`;
    const res = await request(nginxPort, MAIN_HOST, '/api/github/webhooks', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-github-event': event, 'x-github-delivery': crypto.randomUUID(), 'x-hub-signature-256': signature },
      body: Buffer.from(body),
    });
    expect(res.status).toBe(200);
  };
  await deliver('installation', {
    action: 'created',
    installation: { id: 42, account: { id: 9001, login: 'octo-org' } },
    repositories: [{ id: 7001, name: 'docs', full_name: 'octo-org/docs', private: false }],
    sender: { id: 1001, login: 'maintainer' },
  });

  // The upload secret, and CI's upload through nginx with `preview-gate upload`.
  const secret = crypto.randomBytes(32).toString('base64url');
  const set = await cli(['secret', 'set', 'octo-org/docs', 'upload-key'], secret);
  expect([set.status, set.stderr]).toEqual([0, 'Stored the upload secret of octo-org/docs.\n']);
  const site = path.join(tmp, 'site');
  fs.mkdirSync(site);
  fs.writeFileSync(path.join(site, 'index.html'), '<h1>my first preview</h1>');
  const upload = await cli(['upload', site, '--pr', '1', '--sha', COMMIT, '--url', `http://${MAIN_HOST}:${nginxPort}`, '--repo', 'octo-org/docs'], undefined, { PREVIEW_GATE_SECRET: secret });
  expect(upload.status).toBe(0);
  expect(upload.stderr).toMatch(/stored, not public yet: waiting for the 'safe for preview' label/);
  const preview = () => request(nginxPort, `pr1-${COMMIT.slice(0, 7)}--docs.previews.test`, '/');
  expect((await preview()).status).toBe(404);

  // A maintainer adds the label; GitHub says so; the preview is served.
  fake.change(7001, 1, { labels: [LABEL] });
  await deliver('pull_request', fake.pullRequestEvent(7001, 1, 'labeled', { label: { name: LABEL } }));
  for (let i = 0; i < 100 && (await preview()).status !== 200; i++) await new Promise((r) => setTimeout(r, 100));
  const served = await preview();
  expect([served.status, served.body.toString()]).toEqual([200, '<h1>my first preview</h1>']);
  // The PR's comment is edited after the flip (queued GitHub feedback), so it may trail the served preview.
  const url = `http://pr1-${COMMIT.slice(0, 7)}--docs.previews.test/`;
  for (let i = 0; i < 100 && !fake.commentText()?.includes(url); i++) await new Promise((r) => setTimeout(r, 100));
  expect(fake.commentText()).toContain(url);
}, 90_000);
