/**
 * `preview-gate migrate-to-postgres <url>`: a SQLite database made by the server itself (uploads of two PRs,
 * the upload secret, the usage ledger) copied into an empty PostgreSQL database. Needs DATABASE_URL
 * (bash test/engines/postgres.sh …); without it the suite is one skipped block that says so.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import fs from 'node:fs';
import { PassThrough } from 'node:stream';
import Database from 'better-sqlite3';
import nock from 'nock';
import pg from 'pg';
import { runCli } from '../src/cli.js';
import { tablesInForeignKeyOrder } from '../src/db/migrate-to-postgres.js';
import { commitsOf, githubFor, type FakePr } from './helpers/github.js';
import { describePostgres, emptyPostgresDatabase, type TestDatabase } from './helpers/postgres.js';
import { sha, startTestServer, type TestServer } from './helpers/server.js';
import { siteTarball } from './helpers/tarballs.js';
import { feedback } from './helpers/webhooks.js';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  nock.cleanAll();
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function cli(args: string[], dataDir: string) {
  const out: string[] = [];
  const err: string[] = [];
  const stdout = new PassThrough().on('data', (c) => out.push(String(c)));
  const stderr = new PassThrough().on('data', (c) => err.push(String(c)));
  const code = await runCli(args, { stdin: new PassThrough(), stdout, stderr, env: { DATA_DIR: dataDir } });
  return { code, stdout: out.join(''), stderr: err.join('') };
}

/** A data directory the server wrote: two PRs' uploads, then a clean stop. */
async function sqliteDeployment(): Promise<TestServer> {
  nock.disableNetConnect();
  nock.enableNetConnect('127.0.0.1');
  const server = await startTestServer({}, undefined, { sqlite: true });
  // stop() below closes the server; the data directory goes at the end of the test.
  cleanups.push(async () => fs.rmSync(server.tmp, { recursive: true, force: true }));
  feedback();
  const alice = { id: 4242, login: 'alice' };
  for (const pr of [
    { number: 90, author: alice, commits: [sha('a1')] },
    { number: 91, author: { id: 2 ** 31 + 9, login: 'bob' }, commits: [sha('b1')] },
  ] satisfies FakePr[]) {
    githubFor(pr);
    commitsOf(pr);
    expect((await server.upload(pr.number, pr.commits[0]!, siteTarball(`pr ${pr.number}`))).status).toBe(202);
    await server.previews.settled();
  }
  await server.stop();
  return server;
}

async function pgQuery<T extends pg.QueryResultRow>(url: string, text: string): Promise<T[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<T>(text)).rows;
  } finally {
    await client.end();
  }
}

describePostgres('preview-gate migrate-to-postgres', 'test/migrate-to-postgres.test.ts', () => {
  it('copies every table of a server-made SQLite database, with its values and ids, and the server can add rows after', async () => {
    const server = await sqliteDeployment();
    const target: TestDatabase = await emptyPostgresDatabase();
    cleanups.push(() => target.drop());

    const result = await cli(['migrate-to-postgres', target.url], server.config.dataDir);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);

    const sqlite = new Database(server.config.databaseFile, { readonly: true });
    cleanups.push(async () => void sqlite.close());
    for (const { name } of tablesInForeignKeyOrder()) {
      const expected = (sqlite.prepare(`select count(*) as n from "${name}"`).get() as { n: number }).n;
      expect(result.stdout).toContain(`${name}: ${expected} rows\n`);
      const [copied] = await pgQuery<{ n: number }>(target.url, `select count(*)::int as n from "${name}"`);
      expect({ name, n: copied!.n }).toEqual({ name, n: expected });
    }
    // Something was copied: the PRs, their builds, objects, the secret, the ledger.
    const prsBefore = sqlite.prepare('select id, number, head_sha, trusted, created_at from pull_requests order by id').all() as Record<string, unknown>[];
    expect(prsBefore).toHaveLength(2);
    const prsAfter = await pgQuery(target.url, 'select id, number, head_sha, trusted, created_at::text from pull_requests order by id');
    expect(prsAfter).toEqual(
      prsBefore.map((r) => ({ ...r, trusted: r.trusted === 1, created_at: String(r.created_at) })),
    );
    const secretBefore = sqlite.prepare('select ciphertext, wrapped_dek from secrets').get() as { ciphertext: Buffer; wrapped_dek: Buffer };
    const [secretAfter] = await pgQuery<{ ciphertext: Buffer; wrapped_dek: Buffer }>(target.url, 'select ciphertext, wrapped_dek from secrets');
    expect(secretAfter!.ciphertext.equals(secretBefore.ciphertext) && secretAfter!.wrapped_dek.equals(secretBefore.wrapped_dek)).toBe(true);
    const [bob] = await pgQuery<{ provider_id: string }>(target.url, "select provider_id from users where login = 'bob'");
    expect(bob!.provider_id).toBe(String(2 ** 31 + 9));
    const objectsAfter = await pgQuery<{ n: number }>(target.url, 'select count(*)::int as n from objects');
    expect(objectsAfter[0]!.n).toBeGreaterThan(0);

    // The identity sequences were moved past the copied ids: a new row gets the next id, no collision.
    const [maxId] = await pgQuery<{ id: number }>(target.url, 'select max(id) as id from pull_requests');
    const [added] = await pgQuery<{ id: number }>(
      target.url,
      "insert into pull_requests (repository_id, number, state) select repository_id, 92, 'open' from pull_requests limit 1 returning id",
    );
    expect(added!.id).toBe(maxId!.id + 1);

    // The SQLite file is stale now: a command (or a server) without DATABASE_URL refuses this DATA_DIR, instead of
    // writing where no server reads (or removing the PostgreSQL replicas' build folders as rows it lacks).
    const stale = await cli(['secret', 'list'], server.config.dataDir);
    expect(stale.code).toBe(1);
    expect(stale.stderr).toMatch(/^preview-gate: this DATA_DIR's database was moved to PostgreSQL by migrate-to-postgres: set DATABASE_URL for every server and command/);
  });

  it('refuses a database that already has rows, in one sentence, and changes nothing', async () => {
    const server = await sqliteDeployment();
    const target = await emptyPostgresDatabase();
    cleanups.push(() => target.drop());
    expect((await cli(['migrate-to-postgres', target.url], server.config.dataDir)).code).toBe(0);
    const before = await pgQuery<{ n: number }>(target.url, 'select count(*)::int as n from builds');

    const again = await cli(['migrate-to-postgres', target.url], server.config.dataDir);
    expect(again.code).toBe(1);
    expect(again.stderr).toBe(
      'preview-gate: the PostgreSQL database is not empty (table accounts has rows): migrate into a new, empty database.\n',
    );
    expect(await pgQuery<{ n: number }>(target.url, 'select count(*)::int as n from builds')).toEqual(before);
  });

  it('copies nothing when a row fails to go in: the target stays empty (one transaction)', async () => {
    const server = await sqliteDeployment();
    const target = await emptyPostgresDatabase();
    cleanups.push(() => target.drop());
    // A constraint only the target has, on the last tables copied: the copy fails after most rows went in.
    expect((await cli(['migrate-to-postgres', target.url], server.config.dataDir)).code).toBe(0);
    const names = tablesInForeignKeyOrder().map((t) => t.name);
    await pgQuery(target.url, `truncate ${names.map((n) => `"${n}"`).join(', ')}`);
    await pgQuery(target.url, "alter table uploads add constraint no_uploads check (source = 'nothing')");

    const failed = await cli(['migrate-to-postgres', target.url], server.config.dataDir);
    expect(failed.code).toBe(1);
    // One sentence naming the table and PostgreSQL's reason, never the statement's parameters (secrets' bytes).
    expect(failed.stderr).toBe('preview-gate: copying table uploads failed: new row for relation "uploads" violates check constraint "no_uploads"; nothing was copied.\n');
    for (const name of names) {
      const [row] = await pgQuery<{ n: number }>(target.url, `select count(*)::int as n from "${name}"`);
      expect({ name, n: row!.n }).toEqual({ name, n: 0 });
    }
  });

  it('refuses while a server still runs on the SQLite database, and touches nothing', async () => {
    nock.disableNetConnect();
    nock.enableNetConnect('127.0.0.1');
    const server = await startTestServer({}, undefined, { sqlite: true });
    cleanups.push(() => server.close());
    const target = await emptyPostgresDatabase();
    cleanups.push(() => target.drop());
    const refused = await cli(['migrate-to-postgres', target.url], server.config.dataDir);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(
      new RegExp(`^preview-gate: a server is still running on this database \\(pid ${process.pid} on [^)]+\\): stop it first, so no row is written after the copy\\.\\n$`),
    );
    const [tables] = await pgQuery<{ n: number }>(target.url, "select count(*)::int as n from information_schema.tables where table_schema = 'public'");
    expect(tables!.n).toBe(0);
  });

  it('refuses a URL that is not PostgreSQL\'s and a data directory without a database', async () => {
    const bad = await cli(['migrate-to-postgres', 'mysql://db/x'], '/nonexistent');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('give one PostgreSQL URL');
    const target = await emptyPostgresDatabase();
    cleanups.push(() => target.drop());
    const missing = await cli(['migrate-to-postgres', target.url], '/tmp/preview-gate-no-such-data-dir');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^preview-gate: there is no database at .*: set DATA_DIR/);
  });
});
