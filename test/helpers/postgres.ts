/**
 * Per-test PostgreSQL databases. When DATABASE_URL is set (bash test/engines/postgres.sh <command>), every test
 * server or database gets a database of its own, so tests never see each other's rows: a copy (`CREATE DATABASE
 * … TEMPLATE`, a file copy, ~50 ms) of a template that has the migrations applied once per server and migration
 * set. Dropped at close.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { advisoryKey, migratePostgres, postgresMigrationsFolder } from '../../src/db/postgres.js';

/** The server the tests run against, or undefined: the suites then run on SQLite only. */
export const postgresUrl: string | undefined = process.env.DATABASE_URL || undefined;

export interface TestDatabase {
  url: string;
  drop(): Promise<void>;
}

function withDatabase(url: string, name: string): string {
  const u = new URL(url);
  u.pathname = `/${name}`;
  return u.toString();
}

/** Named after the migrations' contents: a template made from older migrations is never used for newer ones. */
function templateName(): string {
  const folder = postgresMigrationsFolder();
  const hash = crypto.createHash('sha256');
  for (const file of fs.readdirSync(folder, { recursive: true, encoding: 'utf8' }).sort()) {
    const full = path.join(folder, file);
    if (fs.statSync(full).isFile()) hash.update(file).update(fs.readFileSync(full));
  }
  return `pg_test_template_${hash.digest('hex').slice(0, 12)}`;
}

async function withAdmin<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: postgresUrl });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

let template: Promise<string> | undefined;

/** Makes the template once per server: jest workers (processes) take turns through an advisory lock. */
function ensureTemplate(): Promise<string> {
  template ??= withAdmin(async (admin) => {
    const name = templateName();
    await admin.query('select pg_advisory_lock($1::bigint)', [advisoryKey('preview-gate:test-template')]);
    const found = await admin.query('select 1 from pg_database where datname = $1', [name]);
    if (found.rowCount === 0) {
      // Built under another name and renamed when complete: a run killed half-way leaves no broken template.
      const building = `${name}_building`;
      await admin.query(`drop database if exists ${building} with (force)`);
      await admin.query(`create database ${building}`);
      await migratePostgres(withDatabase(postgresUrl!, building));
      await admin.query(`alter database ${building} rename to ${name}`);
    }
    await admin.query('select pg_advisory_unlock($1::bigint)', [advisoryKey('preview-gate:test-template')]);
    return name;
  });
  return template;
}

/** A new, migrated, empty database on the DATABASE_URL server, for one test. */
export async function freshPostgresDatabase(): Promise<TestDatabase> {
  if (!postgresUrl) throw new Error('freshPostgresDatabase needs DATABASE_URL (bash test/engines/postgres.sh <command>)');
  const source = await ensureTemplate();
  const name = `pg_test_${crypto.randomBytes(6).toString('hex')}`;
  await withAdmin((admin) => admin.query(`create database ${name} template ${source} strategy file_copy`));
  return {
    url: withDatabase(postgresUrl, name),
    drop: () => withAdmin(async (admin) => void (await admin.query(`drop database if exists ${name} with (force)`))),
  };
}

/** An empty database without migrations (for "migrations apply on an empty database" and the migration command). */
export async function emptyPostgresDatabase(): Promise<TestDatabase> {
  if (!postgresUrl) throw new Error('emptyPostgresDatabase needs DATABASE_URL');
  const name = `pg_test_${crypto.randomBytes(6).toString('hex')}`;
  await withAdmin((admin) => admin.query(`create database ${name}`));
  return {
    url: withDatabase(postgresUrl, name),
    drop: () => withAdmin(async (admin) => void (await admin.query(`drop database if exists ${name} with (force)`))),
  };
}

/**
 * What test/helpers/server.ts adds to a test server's environment: with DATABASE_URL set, a fresh database of
 * its own (and its drop for the server's close); without, nothing (SQLite in the test's DATA_DIR).
 */
export async function testDatabaseEnv(): Promise<{ env: Record<string, string>; drop(): Promise<void> }> {
  if (!postgresUrl) return { env: {}, drop: async () => {} };
  const database = await freshPostgresDatabase();
  return { env: { DATABASE_URL: database.url }, drop: database.drop };
}

/**
 * `test` for a test about SQLite itself (its file, its online backup): on PostgreSQL it is skipped, and its name
 * says so and why.
 */
export function sqliteOnly(reason: string): typeof test {
  if (!postgresUrl) return test;
  const skipped = (name: string, fn?: jest.ProvidesCallback, timeout?: number) => test.skip(`${name} (skipped on PostgreSQL: ${reason})`, fn, timeout);
  return skipped as unknown as typeof test;
}

/**
 * `describe` for a suite that needs PostgreSQL: without DATABASE_URL it is one skipped block whose name says why
 * and how to run `file` against a server.
 */
export function describePostgres(title: string, file: string, suite: () => void): void {
  if (postgresUrl) describe(title, suite);
  else describe.skip(`${title} (skipped: DATABASE_URL is not set; run bash test/engines/postgres.sh env NODE_OPTIONS=--experimental-vm-modules npx jest ${file})`, suite);
}
