import { AsyncLocalStorage } from 'node:async_hooks';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import BetterSqlite3 from 'better-sqlite3';
import { KeyedLock } from '../lock.js';
import type { Database, LockMode, Orm } from './database.js';
import { drizzle, drizzleProxy, migrate } from './orm.js';
import * as schema from './schema.js';
import { sqliteAddonProblem } from '../../bin/sqlite-addon.mjs';

/** drizzle-kit writes migrations next to the schema; the compiled code (dist/src/db) finds them there too. */
function migrationsFolder(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const beside = path.join(here, 'migrations');
  return fs.existsSync(beside) ? beside : path.resolve(here, '../../../src/db/migrations');
}

// Checked once per process: the addon does not change under a running server.
let addonChecked = false;

/**
 * Throws when better-sqlite3's addon would abort this process at some later statement (compiled against Node
 * 24.19+'s headers, bin/sqlite-addon.mjs): a server refuses to start instead of dying after its first uploads.
 */
export function checkSqliteAddon(): void {
  if (addonChecked) return;
  const problem = sqliteAddonProblem();
  if (problem) throw new Error(problem);
  addonChecked = true;
}

type Method = 'run' | 'all' | 'values' | 'get';

/**
 * One mutex per database file for the whole process, shared by every connection to it (tests open replicas as two
 * connections in one process): a connection waiting for SQLite's write lock blocks the thread (busy_timeout), so it
 * must never wait for a transaction of this same process, which could then never finish. Between processes,
 * SQLite's own lock and busy_timeout serialise them as before.
 */
const fileLocks = new KeyedLock();

/** The transaction a piece of async code runs in; `open` turns false at commit or rollback. */
interface Scope {
  open: boolean;
}

/**
 * The embedded backend: one better-sqlite3 connection shared by the whole process.
 *
 * A transaction is `BEGIN IMMEDIATE … COMMIT` on that connection while its body awaits other statements, so
 * anything else run on the connection meanwhile would see (and join) its uncommitted writes. Hence every
 * statement takes the same in-process mutex as transactions do, except the statements of the transaction that
 * holds it: those are recognised by an AsyncLocalStorage scope and run at once. Queries therefore go through
 * drizzle's sqlite-proxy driver (same sqlite-core builders, same column mappings), whose callback is that gate.
 */
export class SqliteDatabase implements Database {
  readonly kind = 'sqlite' as const;
  readonly orm: Orm;
  private readonly client: BetterSqlite3.Database;
  /** This file's key in `fileLocks`. */
  private readonly lockKey: string;
  private readonly scope = new AsyncLocalStorage<Scope>();
  private readonly notices = new EventEmitter();

  constructor(client: BetterSqlite3.Database, file: string) {
    this.client = client;
    this.lockKey = path.resolve(file);
    // Listeners are per channel and few, but one per waiting queue worker is not a leak.
    this.notices.setMaxListeners(0);
    // Typed as the interface's Orm: the builders are the same sqlite-core ones; only awaiting them is allowed.
    this.orm = drizzleProxy((sql, params, method) => this.statement(sql, params, method), { schema }) as unknown as Orm;
  }

  private inTransaction(): boolean {
    return this.scope.getStore()?.open === true;
  }

  private statement(sql: string, params: unknown[], method: Method): Promise<{ rows: any[] }> {
    if (this.inTransaction()) return Promise.resolve(this.execute(sql, params, method));
    return fileLocks.run(this.lockKey, async () => this.execute(sql, params, method));
  }

  /** Rows as arrays of column values, as drizzle's proxy driver maps them (what better-sqlite3's driver does too). */
  private execute(sql: string, params: unknown[], method: Method): { rows: any[] } {
    const statement = this.client.prepare(sql);
    if (method === 'run' || !statement.reader) {
      statement.run(...params);
      // No RunResult: PostgreSQL has none; `.returning()` says what a statement touched.
      return { rows: [] };
    }
    if (method === 'get') return { rows: statement.raw().get(...params) as any[] };
    return { rows: statement.raw().all(...params) as any[] };
  }

  async transaction<T>(fn: (tx: Orm) => Promise<T>): Promise<T> {
    // Started inside another transaction: part of it (waiting for the mutex it holds would never end).
    if (this.inTransaction()) return fn(this.orm);
    return fileLocks.run(this.lockKey, async () => {
      const scope: Scope = { open: true };
      this.client.exec('BEGIN IMMEDIATE');
      try {
        const result = await this.scope.run(scope, () => fn(this.orm));
        scope.open = false;
        this.client.exec('COMMIT');
        return result;
      } catch (err) {
        scope.open = false;
        if (this.client.inTransaction) this.client.exec('ROLLBACK');
        throw err;
      }
    });
  }

  detached<T>(fn: () => T): T {
    return this.scope.exit(fn);
  }

  // SQLite's write lock already serialises every transaction (BEGIN IMMEDIATE takes it at the start), across
  // processes too: nothing finer is needed, and SQLite has no row or named locks to take.
  async lockPullRequest(_tx: Orm, _pullRequestId: number): Promise<void> {}

  async lockName(_tx: Orm, _name: string, _mode: LockMode): Promise<void> {}

  // One process per SQLite file serves requests (replicas need PostgreSQL): an in-process wake-up reaches them all.
  async notify(channel: string): Promise<void> {
    this.notices.emit(channel);
  }

  async listen(channel: string, onNotice: () => void): Promise<() => Promise<void>> {
    const listener = () => onNotice();
    this.notices.on(channel, listener);
    return async () => {
      this.notices.off(channel, listener);
    };
  }

  async ping(): Promise<void> {
    this.client.prepare('select 1').get();
  }

  /**
   * The better-sqlite3 connection itself, for fixtures in benches and tests (bulk rows in one native transaction).
   * Its statements bypass the mutex: not for the server's own code.
   */
  sqliteClient(): BetterSqlite3.Database {
    return this.client;
  }

  /** SQLite's online backup, consistent while the server writes (`preview-gate backup`). */
  async backup(file: string): Promise<void> {
    await this.client.backup(file);
  }

  /** Waits for the transaction in progress, if any, then closes the connection (again: nothing happens). */
  async close(): Promise<void> {
    await fileLocks.run(this.lockKey, async () => {
      if (this.client.open) this.client.close();
    });
  }
}

/** Opens (creating if needed) the SQLite file and applies every pending migration. */
export function openSqlite(file: string): SqliteDatabase {
  checkSqliteAddon();
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const client = new BetterSqlite3(file);
  client.pragma('journal_mode = WAL');
  client.pragma('foreign_keys = ON');
  client.pragma('busy_timeout = 5000');
  migrate(drizzle(client, { schema }), { migrationsFolder: migrationsFolder() });
  // The database holds wrapped keys and encrypted secrets: readable by the server's user only.
  for (const f of [file, `${file}-wal`, `${file}-shm`]) if (fs.existsSync(f)) fs.chmodSync(f, 0o600);
  return new SqliteDatabase(client, file);
}
