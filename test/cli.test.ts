/** The command line and start-up as an operator meets them: help, wrong arguments, one-line errors, backups. */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import nock from 'nock';
import { runCli } from '../src/cli.js';
import { openCore } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { builds, pullRequests } from '../src/db/schema.js';
import { UPLOAD_SECRET_NAME } from '../src/upload/route.js';
import { FakeGitHub } from './helpers/fake-github.js';
import { appPrivateKey } from './helpers/github.js';
import { sha, startTestServer, UPLOAD_SECRET, WEBHOOK_SECRET } from './helpers/server.js';
import { siteTarball } from './helpers/tarballs.js';
import { signedWebhook } from './helpers/webhooks.js';

let tmp: string;
beforeEach(() => (tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-cli-'))));
afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

async function cli(args: string[], env: Record<string, string> = {}) {
  let stdout = '';
  let stderr = '';
  const out = new PassThrough().on('data', (d: Buffer) => (stdout += d.toString()));
  const err = new PassThrough().on('data', (d: Buffer) => (stderr += d.toString()));
  const code = await runCli(args, { stdin: Object.assign(new PassThrough(), { isTTY: true }), stdout: out, stderr: err, env: { DATA_DIR: path.join(tmp, 'data'), ...env } });
  return { code, stdout, stderr };
}

test('--help, and --help of every command, print the usage and exit 0', async () => {
  for (const args of [['--help'], ['help'], ['-h']]) {
    const res = await cli(args);
    expect([args, res.code]).toEqual([args, 0]);
    expect(res.stdout).toMatch(/preview-gate secret set/);
  }
  for (const command of ['secret', 'backup', 'cleanup', 'reconcile', 'keys', 'usage', 'nginx', 'upload', 'verify']) {
    const res = await cli([command, '--help']);
    expect([command, res.code, res.stderr]).toEqual([command, 0, '']);
    expect(res.stdout).toContain(`preview-gate ${command}`);
  }
});

test.each([
  [['frobnicate'], /unknown command "frobnicate"/],
  [['secret', 'set', 'foo', 'upload-key'], /"foo" is not a repository: write it as <owner>\/<repo>/],
  [['secret', 'set', 'octo/docs', 'deploy-key'], /the only secret is "upload-key" \(got "deploy-key"\)/],
  [['secret', 'get', 'octo/docs'], /only "secret set" exists/],
  [['nginx', '--listen', 'abc'], /--listen must be a port or address:port.*got "abc"/],
  [['nginx', '--listen', '99999'], /--listen must be a port/],
  [['nginx', '--upstream', 'localhost'], /--upstream must be host:port/],
  [['nginx', '--wat'], /unknown option --wat/],
  [['cleanup', 'now'], /"cleanup" takes no arguments/],
  [['upload', '--bogus'], /unknown option --bogus/],
])('%j → exit 2 saying which argument is wrong', async (args, message) => {
  const res = await cli(args);
  expect(res.code).toBe(2);
  expect(res.stderr).toMatch(message);
  expect(res.stderr).toMatch(/usage:/);
  expect(res.stderr).not.toMatch(/\n\s+at /);
});

test('secret set on a repository the app was never installed on stores it and says so', async () => {
  const res = await cli(['secret', 'set', 'octo-org/docs', 'upload-key']);
  expect(res.code).toBe(0);
  expect(res.stdout.trim()).toMatch(/^[A-Za-z0-9_-]{43}$/); // generated on a terminal, printed once
  expect(res.stderr).toMatch(/no installation of the GitHub App on octo-org\/docs has been seen yet/);
});

test('nginx --listen takes a port or address:port and renders it', async () => {
  const res = await cli(['nginx', '--listen', '127.0.0.1:8080']);
  expect(res.code).toBe(0);
  expect(res.stdout).toContain('listen 127.0.0.1:8080 default_server;');
});

test('nginx --upstream: an address keeps an upstream group; a name (compose) is looked up again through a variable', async () => {
  const fixed = await cli(['nginx', '--upstream', '127.0.0.1:3000']);
  expect(fixed.stdout).toMatch(/upstream preview_gate_node \{\s+server 127\.0\.0\.1:3000;\s+keepalive 16;/);
  expect(fixed.stdout).not.toContain('$preview_gate_node');
  // nginx resolves an upstream group's name once at start: a recreated app container (new address) would be lost.
  const named = await cli(['nginx', '--upstream', 'app:3000']);
  expect(named.code).toBe(0);
  expect(named.stdout).not.toMatch(/upstream preview_gate_node|server app:3000/);
  expect(named.stdout).toMatch(/map \$host \$preview_gate_node \{\s+default app:3000;\s+\}/);
  const proxied = named.stdout.match(/proxy_pass [^;]+;/g) ?? [];
  expect(proxied.length).toBeGreaterThan(5);
  expect(new Set(proxied)).toEqual(new Set(['proxy_pass http://$preview_gate_node;']));
});

describe('start-up errors are one line naming what to change', () => {
  const start = (env: Record<string, string>) =>
    spawnSync('node', ['dist/src/main.js'], { env: { ...process.env, NODE_OPTIONS: '', DATA_DIR: path.join(tmp, 'data'), LOG_LEVEL: 'silent', ...env }, encoding: 'utf8', timeout: 20_000 });

  test('a busy port', async () => {
    const busy = net.createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
    const port = (busy.address() as net.AddressInfo).port;
    try {
      const res = start({ PORT: String(port), HOST: '127.0.0.1' });
      expect(res.status).toBe(1);
      expect(res.stderr.trim()).toBe(`preview-gate: 127.0.0.1:${port} is already in use; stop the other process or set PORT (and HOST) to a free address.`);
    } finally {
      busy.close();
    }
  });

  test('a private key that is not one', () => {
    const res = start({ APP_ID: '1', PRIVATE_KEY: 'garbage', WEBHOOK_SECRET: 'x' });
    expect(res.status).toBe(1);
    expect(res.stderr.trim()).toMatch(/^preview-gate: configuration error: PRIVATE_KEY is not a PEM private key/);
    expect(res.stderr.trim().split('\n')).toHaveLength(1);
  });
});

test('a webhook with a wrong signature is one warn line, without a stack', async () => {
  nock.enableNetConnect('127.0.0.1');
  const server = await startTestServer();
  try {
    const { body, headers } = signedWebhook('ping', { zen: 'x' }, 'not-the-secret');
    const res = await fetch(`${server.url}/api/github/webhooks`, { method: 'POST', headers, body });
    expect(res.status).toBe(400);
    const warnings = server.logs.filter((l) => l.level >= 40);
    expect(warnings).toEqual([expect.objectContaining({ level: 40, msg: 'webhook refused: its signature does not match WEBHOOK_SECRET' })]);
    expect(JSON.stringify(warnings)).not.toMatch(/stack|not-the-secret|test-webhook-secret/);
    void WEBHOOK_SECRET;
  } finally {
    await server.close();
  }
});

test('`backup` under upload load, restored into a fresh data directory with the master key: secrets decrypt, PRs and builds listed', async () => {
  nock.enableNetConnect('127.0.0.1');
  const fake = await new FakeGitHub().start();
  fake.addRepo({ id: 7001, owner: { id: 9001, login: 'octo-org' }, name: 'docs' });
  const server = await startTestServer(fake.env);
  const file = path.join(tmp, 'backup.sqlite');
  try {
    for (let n = 1; n <= 5; n++) fake.addPull(7001, { number: n, user: { id: 5, login: 'c' }, commits: [sha(String(n))], labels: ['safe for preview'] });
    const env = { DATA_DIR: server.config.dataDir, APP_ID: '1', PRIVATE_KEY: appPrivateKey, WEBHOOK_SECRET: 'x' };
    const uploads = [1, 2, 3, 4, 5].map((n) => server.upload(n, sha(String(n)), siteTarball(`b${n}`)));
    const [res] = await Promise.all([cli(['backup', file], env), ...uploads]);
    expect(res.code).toBe(0);
    expect(res.stdout).toMatch(/Backed up the database to .*master\.key/);
    expect((fs.statSync(file).mode & 0o777).toString(8)).toBe('600');
    expect((await cli(['backup', file], env)).stderr).toMatch(/already exists/);
    const after = path.join(tmp, 'after-load.sqlite');
    expect((await cli(['backup', after], env)).code).toBe(0);

    // Restore each: the database file and the master key into a new data directory.
    for (const [backupFile, expectAll] of [[file, false], [after, true]] as const) {
      const restored = fs.mkdtempSync(path.join(tmp, 'restored-'));
      fs.copyFileSync(backupFile, path.join(restored, 'preview-gate.sqlite'));
      fs.copyFileSync(server.config.masterKeyFile, path.join(restored, 'master.key'));
      const core = await openCore(loadConfig({ DATA_DIR: restored }));
      try {
        const repo = core.registry.findRepository('octo-org/docs')!;
        expect((await core.secrets.get(repo.id, UPLOAD_SECRET_NAME))!.toString()).toBe(UPLOAD_SECRET);
        const prs = core.db.select().from(pullRequests).all();
        const ready = core.db.select().from(builds).all().filter((b) => b.status === 'ready');
        if (expectAll) expect([prs.length, ready.length]).toEqual([5, 5]);
        expect(ready.every((b) => prs.some((p) => p.id === b.pullRequestId))).toBe(true);
      } finally {
        core.db.$client.close();
      }
    }
  } finally {
    await server.close();
    await fake.close();
  }
});
