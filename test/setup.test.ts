/**
 * The first start, as an operator meets it: no credentials, Probot's setup flow through the real server
 * process, against the stand-in GitHub (its manifest conversion included).
 */
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startServerProcess } from '../bench/server-process.mjs';
import { FakeGitHub } from './helpers/fake-github.js';
import { manifestError } from './helpers/manifest-rules.js';
import { signedWebhook } from './helpers/webhooks.js';

const PUBLIC_URL = 'https://uploads.example.net';
let tmp: string;
let fake: FakeGitHub;
let child: ChildProcess | undefined;
let port: number;
let env: NodeJS.ProcessEnv;

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-setup-'));
  fake = await new FakeGitHub().start();
  port = 30000 + Math.floor(Math.random() * 20000);
  env = { ...process.env, ...fake.env, NODE_OPTIONS: '', DATA_DIR: path.join(tmp, 'data'), PORT: String(port), HOST: '127.0.0.1', PUBLIC_URL, SETUP_TOKEN: 'the-setup-token', LOG_LEVEL: 'info' };
  for (const key of ['APP_ID', 'PRIVATE_KEY', 'PRIVATE_KEY_PATH', 'WEBHOOK_SECRET']) delete env[key];
});
afterAll(async () => {
  child?.kill('SIGKILL');
  await fake.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

const url = (p: string) => `http://127.0.0.1:${port}${p}`;
const outside = { 'x-forwarded-for': '203.0.113.9' };

test('setup: the registered app gets PUBLIC_URL/api/github/webhooks; pages styled; loopback or token only; credentials in DATA_DIR/app.env; a restart receives webhooks', async () => {
  const envFileBefore = fs.existsSync('.env') ? fs.readFileSync('.env', 'utf8') : undefined;
  child = await startServerProcess(env, port, { stdio: 'ignore' });

  const page = await fetch(url('/probot'));
  expect(page.status).toBe(200);
  const html = await page.text();
  expect(html).toContain(`${PUBLIC_URL}/api/github/webhooks`);
  expect(html).not.toMatch(/"url":"http:\/\/127\.0\.0\.1:\d+\/"/);
  // The dashboard's sign-in callback is registered with the app: no setting to add by hand.
  expect(html).toContain(`"callback_urls":["${PUBLIC_URL}/login/callback"]`);
  const css = await fetch(url('/probot/static/primer.css'));
  expect([css.status, css.headers.get('content-type')]).toEqual([200, 'text/css; charset=utf-8']);
  expect((await fetch(url('/probot/static/robot.svg'))).status).toBe(200);
  const existing = await (await fetch(url('/probot/import'))).text();
  expect(existing).toContain(`${PUBLIC_URL}/api/github/webhooks`);

  // Someone else (through nginx, X-Forwarded-For) sees nothing, and cannot choose the webhook secret.
  expect((await fetch(url('/probot'), { headers: outside })).status).toBe(403);
  const stolen = await fetch(url('/probot/import'), { method: 'POST', headers: outside, body: JSON.stringify({ appId: 1, pem: 'x', webhook_secret: 'mine' }) });
  expect(stolen.status).toBe(403);
  expect(fs.existsSync(path.join(tmp, 'data', 'app.env'))).toBe(false);
  // ... unless they have the token from the log; then a cookie carries it.
  const withToken = await fetch(url('/probot?setup_token=the-setup-token'), { headers: outside });
  expect(withToken.status).toBe(200);
  const cookie = withToken.headers.get('set-cookie')!.split(';')[0]!;
  expect((await fetch(url('/probot'), { headers: { ...outside, cookie } })).status).toBe(200);

  // "Register GitHub App" posts the manifest to GitHub, which checks it as github.com does and sends the browser
  // back with a code: the app's credentials are written with the data, 0600.
  const manifest = /name="manifest" id="manifest" value='([^']*)'/.exec(html)![1]!;
  const action = /<form action="([^"]*)"/.exec(html)![1]!.replace(/&amp;/g, '&');
  expect(action).toMatch(new RegExp(`^http://${fake.env.GHE_HOST}/settings/apps/new\\?state=[\\w-]{20,}$`));
  const registered = await fetch(action, { method: 'POST', body: new URLSearchParams({ manifest }), redirect: 'manual' });
  expect([registered.status, registered.status === 302 ? '' : await registered.text()]).toEqual([302, '']);
  const callback = new URL(registered.headers.get('location')!);
  const code = callback.searchParams.get('code')!;
  // Login CSRF of the setup flow: a code sent back without this page's state (a link made by someone else, for
  // an app of theirs) writes nothing.
  const forged = await fetch(url(`/probot/setup?code=${code}`), { redirect: 'manual' });
  expect(forged.status).toBe(400);
  expect(fs.existsSync(path.join(tmp, 'data', 'app.env'))).toBe(false);
  // Another site's page posting credentials from the operator's browser (loopback, so allowed, but cross-origin).
  const crossSite = await fetch(url('/probot/import'), {
    method: 'POST',
    headers: { origin: 'https://evil.example', 'content-type': 'text/plain' },
    body: JSON.stringify({ appId: '666', pem: 'x', webhook_secret: 'attacker' }),
  });
  expect(crossSite.status).toBe(403);
  expect(fs.existsSync(path.join(tmp, 'data', 'app.env'))).toBe(false);
  const back = await fetch(url(`/probot/setup?${callback.searchParams}`), { redirect: 'manual' });
  expect(back.status).toBe(302);
  expect(back.headers.get('location')).toBe('https://github.example/apps/preview-gate/installations/new');
  const appEnv = path.join(tmp, 'data', 'app.env');
  expect((fs.statSync(appEnv).mode & 0o777).toString(8)).toBe('600');
  const written = fs.readFileSync(appEnv, 'utf8');
  expect(written).toMatch(/^APP_ID="4242"$/m);
  expect(written).toMatch(/^WEBHOOK_SECRET="whsec-from-github"$/m);
  expect(written).toMatch(/^GITHUB_CLIENT_ID="Iv1.abc"$/m);
  expect(fs.existsSync('.env') ? fs.readFileSync('.env', 'utf8') : undefined).toBe(envFileBefore);

  // Restarted, it is the registered app: webhooks signed with GitHub's secret are accepted.
  child.kill('SIGTERM');
  await new Promise((r) => child!.once('exit', r));
  child = await startServerProcess(env, port, { stdio: 'ignore' });
  expect(await (await fetch(url('/health'))).json()).toMatchObject({ github: 'configured' });
  expect((await fetch(url('/probot'))).status).toBe(404);
  const ping = signedWebhook('ping', { zen: 'Design for failure.', hook_id: 1 }, 'whsec-from-github');
  expect((await fetch(url('/api/github/webhooks'), { method: 'POST', ...ping })).status).toBe(200);
}, 60_000);

test("GitHub's manifest rules, as the stand-in applies them: no installation events, every event covered by a permission", () => {
  const base = { default_permissions: { metadata: 'read', pull_requests: 'write' } };
  expect(manifestError({ ...base, default_events: ['pull_request', 'repository'] })).toBeUndefined();
  expect(manifestError({ ...base, default_events: ['installation_repositories', 'pull_request'] })).toBe('Default events unsupported: installation_repositories');
  expect(manifestError({ ...base, default_events: ['installation'] })).toBe('Default events unsupported: installation');
  expect(manifestError({ ...base, default_events: ['push', 'membership', 'pull_request'] })).toBe('Default events are not supported by permissions: push, membership');
  expect(manifestError({ default_permissions: { issues: 'read' }, default_events: ['issue_comment'] })).toBeUndefined();
});
