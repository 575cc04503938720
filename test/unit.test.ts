import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { sqliteAddonProblem } from '../bin/sqlite-addon.mjs';
import Database from 'better-sqlite3';
import { safeEntryPath } from '../src/builds/extract.js';
import { openSqlite } from '../src/db/sqlite.js';
import { drizzle, migrate } from '../src/db/orm.js';
import { repositories } from '../src/db/tables.js';
import { loadConfig } from '../src/config.js';
import { decideTrust, defaultSite, settingsSchema } from '../src/trust.js';
import { tokenFromHeader } from '../src/upload/tokens.js';
import { startHashing } from '../src/upload-hashing.js';

const settings = settingsSchema.parse({ trustedTeams: ['docs-authors'] });

describe('trust', () => {
  test('the trusted label makes a PR trusted', () => {
    expect(decideTrust({ labels: ['docs', 'safe for preview'] }, settings)).toEqual({
      trusted: true,
      reason: "the pull request is labelled 'safe for preview'",
    });
  });
  test('a custom trusted label replaces the default one', () => {
    const custom = settingsSchema.parse({ trustedLabel: 'preview ok' });
    expect(decideTrust({ labels: ['safe for preview'] }, custom).trusted).toBe(false);
    expect(decideTrust({ labels: ['preview ok'] }, custom).trusted).toBe(true);
  });
  test('membership of a trusted team makes a PR trusted', () => {
    expect(decideTrust({ labels: [], authorTrustedTeam: 'docs-authors' }, settings).reason).toMatch(/docs-authors/);
  });
  test('otherwise the PR waits for the label, and says so', () => {
    expect(decideTrust({ labels: ['Safe For Preview'] }, settings)).toEqual({
      trusted: false,
      reason: "waiting for the 'safe for preview' label",
    });
  });
  test('the default site is the repository name as a DNS label', () => {
    expect(defaultSite('My_Docs.Site')).toBe('my-docs-site');
    expect(defaultSite('a'.repeat(60))).toHaveLength(40);
  });
  test('settings refuse a site that is not a DNS label', () => {
    expect(settingsSchema.safeParse({ site: 'Bad_Site' }).success).toBe(false);
    expect(settingsSchema.safeParse({ site: 'x'.repeat(41) }).success).toBe(false);
  });
});

describe('archive entry paths', () => {
  test.each([
    ['index.html', 'index.html'],
    ['./a/b.js', 'a/b.js'],
    ['a//b/./c.css', 'a/b/c.css'],
    ['./', ''],
  ])('%s is stored as %s', (raw, rel) => expect(safeEntryPath(raw)).toBe(rel));

  test.each(['../x', 'a/../../x', '/etc/passwd', 'C:/x', 'a\\..\\x', 'nul\0byte', `${'d/'.repeat(70)}f`, `${'n'.repeat(256)}`])(
    '%s is refused with 400',
    (raw) => {
      expect(() => safeEntryPath(raw)).toThrow(expect.objectContaining({ status: 400 }));
    },
  );
});

describe('Authorization header', () => {
  test.each(['Token a.b.c', 'Bearer a.b.c', 'Token  a.b.c'])('%s gives the token', (h) => expect(tokenFromHeader(h)).toBe('a.b.c'));
  test.each([undefined, '', 'Basic abc', 'Token', 'Token a.b', 'Token a.b.c extra'])('%s is a 401', (h) => {
    expect(() => tokenFromHeader(h)).toThrow(expect.objectContaining({ status: 401 }));
  });
});

describe('configuration', () => {
  test('the defaults of SPEC', () => {
    const c = loadConfig({});
    expect(c).toMatchObject({
      port: 3000,
      // Loopback unless HOST says otherwise: nginx on this machine reaches it, nobody else does.
      host: '127.0.0.1',
      previewDomain: 'localhost',
      publicUrl: 'http://localhost:3000',
      keyProvider: 'local',
      maxUploadBytes: 100 * 1024 * 1024,
      maxBuildBytes: 1024 * 1024 * 1024,
      maxBuildFiles: 50_000,
      cleanupAfterHours: 24,
      oidcIssuer: 'https://token.actions.githubusercontent.com',
      githubApiUrl: 'https://api.github.com',
      appConfigured: false,
    });
    expect(c.dataDir).toMatch(/\/data$/);
  });

  test('HOST=0.0.0.0 is an explicit choice, made by the image for its own network', () => {
    expect(loadConfig({ HOST: '0.0.0.0' }).host).toBe('0.0.0.0');
    expect(fs.readFileSync(new URL('../Dockerfile', import.meta.url), 'utf8')).toMatch(/^ENV .*\bHOST=0\.0\.0\.0\b/m);
  });
  test('GHE_HOST / GHE_PROTOCOL give the API base exactly as Probot does', () => {
    expect(loadConfig({ GHE_HOST: 'ghe.example.com' }).githubApiUrl).toBe('https://ghe.example.com/api/v3');
    expect(loadConfig({ GHE_HOST: '127.0.0.1:8080', GHE_PROTOCOL: 'http' }).githubApiUrl).toBe('http://127.0.0.1:8080/api/v3');
  });
  test('RECONCILE_INTERVAL_MINUTES takes fractions of a minute (a short sweep for a test cluster), 0 turns it off', () => {
    expect(loadConfig({ RECONCILE_INTERVAL_MINUTES: '0.1' }).reconcileIntervalMs).toBe(6000);
    expect(loadConfig({ RECONCILE_INTERVAL_MINUTES: '15' }).reconcileIntervalMs).toBe(15 * 60_000);
    expect(loadConfig({ RECONCILE_INTERVAL_MINUTES: '0' }).reconcileIntervalMs).toBe(0);
  });
  test.each([
    [{ RECONCILE_INTERVAL_MINUTES: '-1' }, /^RECONCILE_INTERVAL_MINUTES /],
    [{ RECONCILE_INTERVAL_MINUTES: '.5' }, /^RECONCILE_INTERVAL_MINUTES /],
    [{ PORT: 'eighty' }, /^PORT /],
    [{ PORT: '70000' }, /^PORT /],
    [{ MAX_UPLOAD_BYTES: '-1' }, /^MAX_UPLOAD_BYTES /],
    [{ KEY_PROVIDER: 'vault' }, /^KEY_PROVIDER /],
    [{ KEY_PROVIDER: 'azure' }, /^AZURE_KEY_ID /],
    [{ AZURE_KEY_ID: 'https://v.vault.azure.net/keys/k' }, /^AZURE_KEY_ID /],
    [{ PUBLIC_URL: 'not a url' }, /^PUBLIC_URL /],
    [{ PREVIEW_DOMAIN: 'Previews_Example' }, /^PREVIEW_DOMAIN /],
  ])('%j stops start-up with one line naming the variable', (env, message) => {
    expect(() => loadConfig(env)).toThrow(message);
    try {
      loadConfig(env);
    } catch (err) {
      expect((err as Error).message).not.toContain('\n');
    }
  });
});

describe("better-sqlite3's addon and Node 24.19+ (nodejs/node#65446)", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'addon-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  // An addon compiled against 24.19+'s headers carries the name of the call that aborts.
  const hooked = path.join(dir, 'hooked.node');
  fs.writeFileSync(hooked, Buffer.concat([crypto.randomBytes(4096), Buffer.from('_ZN4node28RemoveEnvironmentCleanupHookEPN2v87IsolateEPFvPvES3_'), crypto.randomBytes(4096)]));

  test('on Node 24 such an addon is refused with the command that rebuilds it', () => {
    const problem = sqliteAddonProblem('24.21.0', hooked);
    expect(problem).toContain(hooked);
    expect(problem).toContain('node bin/sqlite-addon.mjs rebuild');
    expect(problem).toContain('nodejs/node#65446');
  });
  test('Node 26.4, which keeps a registry of these hooks, runs it; 26.3 does not', () => {
    expect(sqliteAddonProblem('26.4.0', hooked)).toBeUndefined();
    expect(sqliteAddonProblem('26.3.1', hooked)).toContain('rebuild');
  });
  test("this machine's addon passes, and `check` says so with its exit code", () => {
    expect(sqliteAddonProblem()).toBeUndefined();
    expect(spawnSync('node', ['bin/sqlite-addon.mjs', 'check']).status).toBe(0);
  });
});

test('the upload CLI hashes a large build on two threads: every file once, each hash and size right', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pg-hashing-'));
  // The first file is large: this thread takes it first and is busy with it while the helper, however late the
  // loaded machine schedules it, takes the small ones (all 2,000 small files alone were sometimes hashed here
  // before the helper woke, which is right, but then nothing shows that two threads share the work).
  const written = Array.from({ length: 2000 }, (_, i) => {
    const file = path.join(dir, `f${i}`);
    const content = crypto.randomBytes(i === 0 ? 32 * 1024 * 1024 : 4096 + (i % 7));
    fs.writeFileSync(file, content);
    return { file, sha256: crypto.createHash('sha256').update(content).digest('hex'), size: content.length };
  });
  const hashing = startHashing();
  await hashing.ready; // both threads hash from the first file on
  const { hashed, byHelper } = await hashing.hash(written.map((w) => w.file));
  fs.rmSync(dir, { recursive: true, force: true });
  expect(byHelper).toBeGreaterThan(0);
  expect(hashed).toEqual(written.map(({ sha256, size }) => ({ sha256, size })));
});

test('upgrading a database that holds objects counts their bytes per repository (migration 0007)', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pg-migrate-'));
  try {
    // The database as the release before this migration left it: every migration up to 0006 applied.
    const before = path.join(dir, 'migrations');
    fs.cpSync(path.resolve('src/db/migrations'), before, { recursive: true });
    const journalFile = path.join(before, 'meta', '_journal.json');
    const journal = JSON.parse(fs.readFileSync(journalFile, 'utf8'));
    journal.entries = journal.entries.filter((e: { tag: string }) => e.tag < '0007');
    fs.writeFileSync(journalFile, JSON.stringify(journal));
    const file = path.join(dir, 'db.sqlite');
    const sqlite = new Database(file);
    migrate(drizzle(sqlite), { migrationsFolder: before });
    sqlite.prepare("INSERT INTO accounts (id, login, wrapped_dek, dek_key_id) VALUES (1, 'octo-org', x'00', 'k')").run();
    const addRepo = sqlite.prepare('INSERT INTO repositories (id, account_id, full_name, site) VALUES (?, 1, ?, ?)');
    for (const [id, name] of [[1, 'docs'], [2, 'blog'], [3, 'empty']] as const) addRepo.run(id, `octo-org/${name}`, name);
    const addObject = sqlite.prepare('INSERT INTO objects (repository_id, sha256, size) VALUES (?, ?, ?)');
    for (const [repo, size] of [[1, 100], [1, 250], [2, 7]]) addObject.run(repo, crypto.randomBytes(32).toString('hex'), size);
    sqlite.close();

    const db = openSqlite(file);
    expect(await db.orm.select({ id: repositories.id, objectBytes: repositories.objectBytes }).from(repositories).orderBy(repositories.id)).toEqual([
      { id: 1, objectBytes: 350 },
      { id: 2, objectBytes: 7 },
      { id: 3, objectBytes: 0 },
    ]);
    await db.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
