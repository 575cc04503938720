/**
 * The data layer both backends share: SQLite (the embedded default, better-sqlite3) and PostgreSQL
 * (`DATABASE_URL=postgres://…`). Code outside src/db reaches the database only through a `Database`:
 *
 * - Queries are drizzle query builders over the tables of `./tables.js`, always awaited. The SQLite-only
 *   `.get()`, `.all()`, `.run()` and `.values()` are not used: PostgreSQL's builders have none of them
 *   (`(await q.limit(1))[0]` instead of `.get()`; `.returning()` to learn what an insert or update touched).
 * - Every unit of work that must be atomic is one `transaction(fn)`. `fn` waits on the database only: GitHub
 *   is never called inside a transaction (a lock held across a network call is a lock held for 10 s).
 *   A transaction started inside another (same async context) joins the outer one instead of deadlocking.
 */
import type { BetterSQLite3Database } from './orm.js';
import type * as schema from './schema.js';

/**
 * The query builder handed to callers. Typed with SQLite's schema types (the PostgreSQL schema is kept column for
 * column in step with it, and its custom types give the same JavaScript values: Date, boolean, Buffer, number).
 */
export type Orm = BetterSQLite3Database<typeof schema>;

export type LockMode = 'shared' | 'exclusive';

export interface Database {
  readonly kind: 'sqlite' | 'postgres';
  /** The query builder for single statements outside a transaction. */
  readonly orm: Orm;
  /**
   * Runs `fn` as one transaction and returns its result; a throw rolls everything back. SQLite: `BEGIN IMMEDIATE`,
   * one at a time in this process (and across processes by SQLite's write lock). PostgreSQL: a pooled connection.
   */
  transaction<T>(fn: (tx: Orm) => Promise<T>): Promise<T>;
  /**
   * Inside a transaction: holds the pull request's row until commit, so one PR's work runs on one replica at a
   * time (PostgreSQL `SELECT … FOR UPDATE`; SQLite's write lock already serialises every transaction).
   */
  lockPullRequest(tx: Orm, pullRequestId: number): Promise<void>;
  /**
   * Inside a transaction: a lock on a name (e.g. `repository:<id>`), released at commit (PostgreSQL
   * `pg_advisory_xact_lock` / `pg_advisory_xact_lock_shared`; nothing more is needed on SQLite).
   */
  lockName(tx: Orm, name: string, mode: LockMode): Promise<void>;
  /**
   * Runs `fn` (and everything it starts) outside the transaction of the calling async context: for work that
   * outlives the caller's transaction, like the queue's runner woken by an enqueue made inside one. Without it, the
   * runner's statements would join that transaction while it is open (and vanish with a rollback).
   */
  detached<T>(fn: () => T): T;
  /** Wakes listeners of `channel` in every process (PostgreSQL NOTIFY; in-process on SQLite). */
  notify(channel: string): Promise<void>;
  /** Calls `onNotice` when `channel` is notified; resolves to a function that stops listening. */
  listen(channel: string, onNotice: () => void): Promise<() => Promise<void>>;
  /** Throws when the database cannot answer (for /health). */
  ping(): Promise<void>;
  close(): Promise<void>;
}
