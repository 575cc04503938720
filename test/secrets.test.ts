import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { eq } from '../src/db/orm.js';
import { openCore, type Core } from '../src/app.js';
import { runCli } from '../src/cli.js';
import { loadConfig } from '../src/config.js';
import { secrets as secretsTable } from '../src/db/tables.js';
import { DecryptError } from '../src/secrets/envelope.js';
import { databaseBytes, sqliteOf } from './helpers/server.js';

let tmp: string;
let env: Record<string, string>;
let core: Core;

beforeEach(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-secrets-'));
  env = { DATA_DIR: path.join(tmp, 'data') };
  core = await openCore(loadConfig(env));
});
afterEach(async () => {
  await core.db.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

const VALUE_A = Buffer.from('secret-value-of-repository-a-0123456789');
const VALUE_B = Buffer.from('secret-value-of-repository-b-9876543210');

describe('envelope encryption', () => {
  test('the master key file is created once, 32 bytes, mode 0600', () => {
    const file = path.join(tmp, 'data', 'master.key');
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.readFileSync(file)).toHaveLength(32);
  });

  test('a stored secret reads back, and neither it nor any DEK is in the database file', async () => {
    const repo = await core.registry.ensureRepository('octo-org/docs');
    await core.secrets.set(repo.accountId, repo.id, 'upload-key', VALUE_A);
    expect(await core.secrets.get(repo.id, 'upload-key')).toEqual(VALUE_A);
    sqliteOf(core.db).pragma('wal_checkpoint(TRUNCATE)');
    const raw = databaseBytes(path.join(tmp, 'data'));
    expect(raw.includes(VALUE_A)).toBe(false);
    expect(raw.includes(fs.readFileSync(path.join(tmp, 'data', 'master.key')))).toBe(false);
  });

  test('each secret has its own DEK: equal values give unrelated ciphertexts', async () => {
    const a = await core.registry.ensureRepository('octo-org/a');
    const b = await core.registry.ensureRepository('octo-org/b');
    await core.secrets.set(a.accountId, a.id, 'upload-key', VALUE_A);
    await core.secrets.set(b.accountId, b.id, 'upload-key', VALUE_A);
    const rows = await core.db.orm.select().from(secretsTable);
    expect(rows[0]!.ciphertext.equals(rows[1]!.ciphertext)).toBe(false);
    expect(rows[0]!.wrappedDek.equals(rows[1]!.wrappedDek)).toBe(false);
  });

  test('swapping the ciphertexts of two secrets fails to decrypt', async () => {
    const a = await core.registry.ensureRepository('octo-org/a');
    const b = await core.registry.ensureRepository('octo-org/b');
    await core.secrets.set(a.accountId, a.id, 'upload-key', VALUE_A);
    await core.secrets.set(b.accountId, b.id, 'upload-key', VALUE_B);
    const [rowA, rowB] = await core.db.orm.select().from(secretsTable);
    await core.db.orm.update(secretsTable).set({ ciphertext: rowB!.ciphertext, wrappedDek: rowB!.wrappedDek }).where(eq(secretsTable.id, rowA!.id));
    await expect(core.secrets.get(a.id, 'upload-key')).rejects.toThrow(DecryptError);
  });

  test('a secret moved to another account fails to decrypt', async () => {
    const a = await core.registry.ensureRepository('octo-org/a');
    const other = await core.registry.ensureRepository('someone-else/a');
    await core.secrets.set(a.accountId, a.id, 'upload-key', VALUE_A);
    await core.db.orm.update(secretsTable).set({ accountId: other.accountId }).where(eq(secretsTable.repositoryId, a.id));
    await expect(core.secrets.get(a.id, 'upload-key')).rejects.toThrow(/failed authentication/);
  });

  test('a truncated tag is refused', async () => {
    const a = await core.registry.ensureRepository('octo-org/a');
    await core.secrets.set(a.accountId, a.id, 'upload-key', VALUE_A);
    const row = (await core.db.orm.select().from(secretsTable))[0]!;
    await core.db.orm.update(secretsTable).set({ ciphertext: row.ciphertext.subarray(0, row.ciphertext.length - 4) });
    await expect(core.secrets.get(a.id, 'upload-key')).rejects.toThrow(DecryptError);
  });
});

describe('preview-gate secret set', () => {
  function io(stdin: string | undefined) {
    const input = new PassThrough() as PassThrough & { isTTY?: boolean };
    if (stdin === undefined) input.isTTY = true;
    else input.end(stdin);
    const out = { stdout: '', stderr: '' };
    const sink = (k: 'stdout' | 'stderr') => new PassThrough().on('data', (d: Buffer) => (out[k] += d.toString()));
    return { io: { stdin: input, stdout: sink('stdout'), stderr: sink('stderr'), env }, out };
  }

  test('a piped value of at least 32 bytes is stored (one trailing newline dropped)', async () => {
    const { io: cli } = io(`${VALUE_A.toString()}\n`);
    expect(await runCli(['secret', 'set', 'octo-org/docs', 'upload-key'], cli)).toBe(0);
    const repo = (await core.registry.findRepository('octo-org/docs'))!;
    expect(await core.secrets.get(repo.id, 'upload-key')).toEqual(VALUE_A);
  });

  test('a piped value shorter than 32 bytes is refused, nothing stored', async () => {
    const { io: cli, out } = io('too-short');
    expect(await runCli(['secret', 'set', 'octo-org/docs', 'upload-key'], cli)).toBe(1);
    expect(out.stderr).toMatch(/at least 32 bytes/);
    expect(await core.registry.findRepository('octo-org/docs')).toBeUndefined();
  });

  test('with nothing on standard input and no terminal (stdin is /dev/null), it says how to pass the value, exits 1 and stores nothing', async () => {
    // The real command, as a CI step or `docker exec` without -i runs it.
    const childEnv: NodeJS.ProcessEnv = { ...process.env, ...env, NODE_OPTIONS: '' };
    delete childEnv.DATABASE_URL; // the SQLite file this test's core reads
    const run = spawnSync('node', ['bin/preview-gate.js', 'secret', 'set', 'octo-org/docs', 'upload-key'], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8', timeout: 20_000 });
    expect({ status: run.status, stdout: run.stdout, stderr: run.stderr }).toEqual({
      status: 1,
      stdout: '',
      stderr:
        'preview-gate: no value came on standard input, and there is no terminal to generate one on: pipe the value in ' +
        '(openssl rand -base64 32 | preview-gate secret set octo-org/docs upload-key), or run the command on a terminal ' +
        'to have one generated and printed once; nothing was stored.\n',
    });
    expect(await core.registry.findRepository('octo-org/docs')).toBeUndefined();
  });

  test('on a terminal, 32 random bytes are generated, stored and printed once', async () => {
    const { io: cli, out } = io(undefined);
    expect(await runCli(['secret', 'set', 'octo-org/docs', 'upload-key'], cli)).toBe(0);
    const printed = out.stdout.trim();
    expect(Buffer.from(printed, 'base64url')).toHaveLength(32);
    const repo = (await core.registry.findRepository('octo-org/docs'))!;
    expect((await core.secrets.get(repo.id, 'upload-key'))!.toString()).toBe(printed);
  });

  test('a wrong command prints the usage and exits 2', async () => {
    const { io: cli, out } = io('x');
    expect(await runCli(['secret', 'set', 'not-a-slug', 'upload-key'], cli)).toBe(2);
    expect(out.stderr).toMatch(/usage/);
  });
});

