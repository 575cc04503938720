import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { openCore, type Core } from '../src/app.js';
import { runCli } from '../src/cli.js';
import { ConfigError, loadConfig } from '../src/config.js';
import { accounts, secrets as secretsTable } from '../src/db/tables.js';
import { open as openSealed } from '../src/secrets/envelope.js';
import { LocalKeyService } from '../src/secrets/key-service.js';
import { dekAad } from '../src/secrets/secrets.js';
import { Sessions } from '../src/dashboard/sessions.js';
import type { GitHubUserApi } from '../src/dashboard/github-user.js';
import { eq } from '../src/db/orm.js';
import nock from 'nock';
import { commitsOf, githubFor } from './helpers/github.js';
import { startFakeKeyVault } from './helpers/key-vault.js';
import { databaseBytes, sha, sqliteOf, startTestServer } from './helpers/server.js';
import { siteTarball } from './helpers/tarballs.js';

let tmp: string;
let vault: Awaited<ReturnType<typeof startFakeKeyVault>>;
const opened: Core[] = [];

beforeEach(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-azure-'));
  vault = await startFakeKeyVault(['v1', 'v2']);
});
afterEach(async () => {
  for (const core of opened.splice(0)) await core.db.close();
  await vault.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

const dataDir = () => path.join(tmp, 'data');
const azureEnv = (version = 'v1') => ({ DATA_DIR: dataDir(), KEY_PROVIDER: 'azure', AZURE_KEY_ID: vault.keyId(version) });
const localEnv = () => ({ DATA_DIR: dataDir() });

async function open(env: Record<string, string>): Promise<Core> {
  const core = await openCore(loadConfig(env), vault.options);
  opened.push(core);
  return core;
}

async function close(core: Core) {
  await core.db.close();
  opened.splice(opened.indexOf(core), 1);
}

async function cli(args: string[], env: Record<string, string>) {
  const out: string[] = [];
  const err: string[] = [];
  const stdout = new PassThrough().on('data', (c) => out.push(String(c)));
  const stderr = new PassThrough().on('data', (c) => err.push(String(c)));
  const code = await runCli(args, { stdin: new PassThrough(), stdout, stderr, env, azure: vault.options });
  return { code, stdout: out.join(''), stderr: err.join('') };
}

const VALUE_A = Buffer.from('upload-secret-of-octo-org-docs-0123456789');
const VALUE_B = Buffer.from('upload-secret-of-other-org-site-987654321');

/** Two accounts with one secret each. */
async function seed(core: Core) {
  const a = await core.registry.ensureRepository('octo-org/docs');
  const b = await core.registry.ensureRepository('other-org/site');
  await core.secrets.set(a.accountId, a.id, 'upload-key', VALUE_A);
  await core.secrets.set(b.accountId, b.id, 'upload-key', VALUE_B);
  return { a, b };
}

const secretRows = (core: Core) => core.db.orm.select().from(secretsTable).orderBy(secretsTable.id);
const sessionsOf = (core: Core) => new Sessions(core.db, core.keys, {} as GitHubUserApi, 3600_000);
const accountKeyIds = async (core: Core) => (await core.db.orm.select({ k: accounts.dekKeyId }).from(accounts).orderBy(accounts.id)).map((r) => r.k);

describe('KEY_PROVIDER=azure with the real Key Vault client', () => {
  test('account keys are wrapped by the vault with RSA-OAEP-256 after the Bearer challenge; secrets read back', async () => {
    const core = await open(azureEnv());
    const { a, b } = await seed(core);
    expect(await core.secrets.get(a.id, 'upload-key')).toEqual(VALUE_A);
    expect(await core.secrets.get(b.id, 'upload-key')).toEqual(VALUE_B);
    expect(await accountKeyIds(core)).toEqual([vault.keyId('v1'), vault.keyId('v1')]);
    const ops = vault.state.calls.filter((c) => c.op === 'wrapkey' || c.op === 'unwrapkey');
    expect(ops.length).toBeGreaterThan(0);
    expect(ops.every((c) => c.alg === 'RSA-OAEP-256' && c.authorized && c.version === 'v1')).toBe(true);
  });

  test('unwrapped account keys are cached: reading a secret again asks the vault nothing', async () => {
    const core = await open(azureEnv());
    const { a } = await seed(core);
    await close(core);
    const restarted = await open(azureEnv());
    const before = vault.state.calls.filter((c) => c.op === 'unwrapkey').length;
    await restarted.secrets.get(a.id, 'upload-key');
    await restarted.secrets.get(a.id, 'upload-key');
    expect(vault.state.calls.filter((c) => c.op === 'unwrapkey').length).toBe(before + 1);
  });

  test('no plaintext secret and no unwrapped key is in the SQLite file or its WAL', async () => {
    const core = await open(azureEnv());
    const { a } = await seed(core);
    sqliteOf(core.db).pragma('wal_checkpoint(PASSIVE)'); // some pages in the file, the rest still in the WAL
    const raw = databaseBytes(dataDir());
    expect(raw.length).toBeGreaterThan(0);
    expect(raw.includes(VALUE_A)).toBe(false);
    expect(raw.includes(VALUE_B)).toBe(false);
    for (const secret of await secretRows(core)) {
      const account = (await core.db.orm.select().from(accounts).where(eq(accounts.id, secret.accountId)))[0]!;
      const accountDek = await core.keys.unwrapKey(account.wrappedDek, account.dekKeyId);
      const secretDek = openSealed(accountDek, secret.wrappedDek, dekAad(secret.accountId, secret.repositoryId, secret.name));
      expect(secretDek).toHaveLength(32);
      expect(raw.includes(accountDek)).toBe(false);
      expect(raw.includes(secretDek)).toBe(false);
    }
    expect(await core.secrets.get(a.id, 'upload-key')).toEqual(VALUE_A);
  });

  test('the vault failing during an upload: 503 with one sentence, nothing stored; back again, the upload works', async () => {
    const env = { KEY_PROVIDER: 'azure', AZURE_KEY_ID: vault.keyId('v1') };
    const first = await startTestServer(env, undefined, { azure: vault.options });
    await first.stop();
    // Restarted: no account key in memory, so the upload's secret must come through the vault.
    const server = await startTestServer(env, first.tmp, { azure: vault.options, seedSecret: false });
    try {
      vault.state.mode = 'down';
      const res = await server.upload(5, sha('ab'), siteTarball());
      expect(res.status).toBe(503);
      expect(await res.json()).toEqual({
        error: 'The key service (Azure Key Vault) could not unwrap a data key: the vault answered 503; retry later.',
      });
      expect(server.buildsTree()).toEqual(['.staging']);

      vault.state.mode = 'ok';
      const pr = { number: 5, commits: [sha('ab')] };
      githubFor(pr);
      commitsOf(pr);
      expect((await server.upload(5, sha('ab'), siteTarball())).status).toBe(202);
      await server.previews.settled();
    } finally {
      nock.cleanAll();
      await server.close();
    }
  });

  test('a vault that refuses the identity (403) stops the start with one sentence', async () => {
    vault.state.mode = 'forbidden';
    await expect(open(azureEnv())).rejects.toThrow(
      `Azure Key Vault key ${vault.keyId('v1')} cannot be used: the identity may not use this key (403; it needs get, wrapKey and unwrapKey on the key).`,
    );
  });

  test('a key version that does not exist stops the start', async () => {
    await expect(open(azureEnv('v9'))).rejects.toThrow(/cannot be used: the key or key version does not exist \(404\)/);
  });

  test('an unreachable vault stops the process at start with one line and exit code 1', () => {
    const main = path.resolve('dist/src/main.js');
    const run = spawnSync(process.execPath, [main], {
      env: { PATH: process.env.PATH, DATA_DIR: dataDir(), PORT: '39871', KEY_PROVIDER: 'azure', AZURE_KEY_ID: 'https://127.0.0.1:1/keys/preview-gate/v1' },
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(run.status).toBe(1);
    expect(run.stderr.trim().split('\n')).toEqual([
      'preview-gate: could not start: Azure Key Vault key https://127.0.0.1:1/keys/preview-gate/v1 cannot be used: the vault could not be reached (ECONNREFUSED).',
    ]);
  });

  test('a wrongly written AZURE_KEY_ID is a configuration error naming the variable', () => {
    for (const id of ['https://vault.example.net/keys/preview-gate', 'http://vault.example.net/keys/k/v1', 'vault/keys/k/v1']) {
      expect(() => loadConfig({ KEY_PROVIDER: 'azure', AZURE_KEY_ID: id })).toThrow(ConfigError);
      expect(() => loadConfig({ KEY_PROVIDER: 'azure', AZURE_KEY_ID: id })).toThrow(/AZURE_KEY_ID/);
    }
    expect(() => loadConfig({ KEY_PROVIDER: 'azure' })).toThrow(/AZURE_KEY_ID must be set/);
  });
});

describe('preview-gate keys rotate', () => {
  test('local: a new master key wraps every account key; secret ciphertexts are untouched; the old key is deleted', async () => {
    const core = await open(localEnv());
    const { a, b } = await seed(core);
    // A maintainer signed in to the dashboard: their GitHub token is sealed with a DEK of their own.
    const cookie = await sessionsOf(core).open({ id: 42, login: 'maintainer' }, { accessToken: 'ghu_maintainer' });
    const oldKeyId = core.keys.currentKeyId;
    const before = await secretRows(core);
    await close(core);

    const res = await cli(['keys', 'rotate'], localEnv());
    expect(res.code).toBe(0);
    expect(res.stdout).toMatch(/^Re-wrapped 2 account key\(s\) and 1 user key\(s\) under local:[0-9a-f]{16}; 0 account key\(s\) already were\.\n$/);
    expect(res.stderr).toContain(`Deleted the retired master key ${oldKeyId}`);

    const after = await open(localEnv());
    expect(after.keys.currentKeyId).not.toBe(oldKeyId);
    expect(await accountKeyIds(after)).toEqual([after.keys.currentKeyId, after.keys.currentKeyId]);
    expect((await secretRows(after)).map((r) => [r.ciphertext, r.wrappedDek])).toEqual(before.map((r) => [r.ciphertext, r.wrappedDek]));
    expect(await after.secrets.get(a.id, 'upload-key')).toEqual(VALUE_A);
    expect(await after.secrets.get(b.id, 'upload-key')).toEqual(VALUE_B);
    expect(fs.readdirSync(dataDir()).filter((f) => f.startsWith('master.key'))).toEqual(['master.key']);
    // The old key is gone, and the maintainer's session still reads their token.
    const sessions = sessionsOf(after);
    expect(await sessions.accessToken((await sessions.find(cookie))!)).toBe('ghu_maintainer');
  });

  test('local: interrupted after the new key was made, it is run again and finishes without a third key', async () => {
    const core = await open(localEnv());
    const { a } = await seed(core);
    await close(core);
    // What an interrupted run leaves: the old key retired, a new master key, no account moved yet.
    LocalKeyService.open(path.join(dataDir(), 'master.key'))!.startRotation();
    const newKeyId = LocalKeyService.open(path.join(dataDir(), 'master.key'))!.currentKeyId;

    const res = await cli(['keys', 'rotate'], localEnv());
    expect(res.code).toBe(0);
    expect(res.stdout).toBe(`Re-wrapped 2 account key(s) and 0 user key(s) under ${newKeyId}; 0 account key(s) already were.\n`);
    const after = await open(localEnv());
    expect(await accountKeyIds(after)).toEqual([newKeyId, newKeyId]);
    expect(await after.secrets.get(a.id, 'upload-key')).toEqual(VALUE_A);
  });

  test('a running server keeps reading secrets across a local rotation made by the CLI', async () => {
    const server = await open(localEnv());
    const { a } = await seed(server);
    expect((await cli(['keys', 'rotate'], localEnv())).code).toBe(0);
    const late = await server.registry.ensureRepository('late-org/new');
    await server.secrets.set(late.accountId, late.id, 'upload-key', VALUE_B);
    expect((await accountKeyIds(server))[2]).toBe((await accountKeyIds(server))[0]); // the new account uses the new master key
    expect(await server.secrets.get(a.id, 'upload-key')).toEqual(VALUE_A);
  });

  test('azure: a new key version (AZURE_KEY_ID) re-wraps every account key, resumably', async () => {
    const core = await open(azureEnv('v1'));
    const { a, b } = await seed(core);
    const before = await secretRows(core);
    await close(core);

    vault.state.wrapsLeft = 2; // the start-up probe, then one account: the vault fails halfway
    const interrupted = await cli(['keys', 'rotate'], azureEnv('v2'));
    expect(interrupted.code).toBe(1);
    expect(interrupted.stderr).toMatch(/^preview-gate: The key service \(Azure Key Vault\) could not wrap a data key: the vault answered 503; retry later\.\n$/);

    vault.state.wrapsLeft = undefined;
    const resumed = await cli(['keys', 'rotate'], azureEnv('v2'));
    expect(resumed).toMatchObject({ code: 0, stdout: `Re-wrapped 1 account key(s) and 0 user key(s) under ${vault.keyId('v2')}; 1 account key(s) already were.\n` });

    const after = await open(azureEnv('v2'));
    expect(await accountKeyIds(after)).toEqual([vault.keyId('v2'), vault.keyId('v2')]);
    expect((await secretRows(after)).map((r) => r.ciphertext)).toEqual(before.map((r) => r.ciphertext));
    expect(await after.secrets.get(a.id, 'upload-key')).toEqual(VALUE_A);
    expect(await after.secrets.get(b.id, 'upload-key')).toEqual(VALUE_B);
  });

  test('azure → local: with AZURE_KEY_ID kept for unwrapping, every account moves to the local master key', async () => {
    const core = await open(azureEnv());
    const { a, b } = await seed(core);
    await close(core);

    const res = await cli(['keys', 'rotate'], { DATA_DIR: dataDir(), AZURE_KEY_ID: vault.keyId('v1') });
    expect(res.code).toBe(0);
    expect(res.stdout).toMatch(/^Re-wrapped 2 account key\(s\) and 0 user key\(s\) under local:[0-9a-f]{16}; 0 account key\(s\) already were\.\n$/);

    vault.state.mode = 'down'; // the vault is not needed any more
    const after = await open(localEnv());
    expect(await after.secrets.get(a.id, 'upload-key')).toEqual(VALUE_A);
    expect(await after.secrets.get(b.id, 'upload-key')).toEqual(VALUE_B);
  });

  test('local → azure migration is the same command; afterwards the local master key is not needed', async () => {
    const core = await open(localEnv());
    const { a, b } = await seed(core);
    await close(core);

    const res = await cli(['keys', 'rotate'], azureEnv());
    expect(res.code).toBe(0);
    expect(res.stdout).toBe(`Re-wrapped 2 account key(s) and 0 user key(s) under ${vault.keyId('v1')}; 0 account key(s) already were.\n`);
    expect(res.stderr).toContain('master.key is no longer needed');

    fs.rmSync(path.join(dataDir(), 'master.key'));
    const after = await open(azureEnv());
    expect(await after.secrets.get(a.id, 'upload-key')).toEqual(VALUE_A);
    expect(await after.secrets.get(b.id, 'upload-key')).toEqual(VALUE_B);
  });
});
