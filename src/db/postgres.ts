/**
 * The PostgreSQL backend (`DATABASE_URL=postgres://…`): the `Database` of ./database.ts on a `pg` pool, so N
 * replicas share rows, row locks, advisory locks and wake-ups through one server.
 *
 * Pooling: each replica holds at most `poolSize` connections (10 by default) plus one for LISTEN. A pooler in
 * front of PostgreSQL must run in session mode: LISTEN and the session advisory lock taken around migrations
 * belong to a session, which transaction-mode pooling (PgBouncer's default) hands to other clients.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import type { Database, LockMode, Orm } from './database.js';
import { sql } from './orm.js';
import { drizzle, migrate, type NodePgDatabase } from './orm.pg.js';
import * as pgSchema from './schema.pg.js';
import { useTables } from './tables.js';

type PgOrm = NodePgDatabase<typeof pgSchema>;

export interface PostgresOptions {
  /** Connections in the pool (each replica's share of the server's max_connections). */
  poolSize?: number;
  /**
   * Points ./tables.js at the PostgreSQL tables (default true: the server's database). False for a second
   * database in a process that also works on SQLite (the migration command, its tests).
   */
  useTables?: boolean;
  /** Told about connections lost in the background (idle pool clients, the LISTEN connection). */
  onError?: (error: Error, where: string) => void;
  /** How long a start waits for a server that is not up yet (refused, unknown host, starting up); default 60 s. */
  startWaitMs?: number;
}

/** drizzle-kit writes migrations next to the schema; the compiled code (dist/src/db) finds them there too. */
export function postgresMigrationsFolder(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const beside = path.join(here, 'migrations-pg');
  return fs.existsSync(beside) ? beside : path.resolve(here, '../../../src/db/migrations-pg');
}

// int8 (count(*), bigint columns in raw SQL) and numeric (sum() of a bigint) as numbers, as SQLite returns its
// integers: pg's default is a string. Every such value here (sizes, counts, epoch ms) is far below 2^53. Set on
// pg's global parsers because drizzle's node-postgres session passes its own per-query `types` that fall back to
// them (a pool's `types` option is never consulted); only the PostgreSQL backend loads this file.
pg.types.setTypeParser(pg.types.builtins.INT8, (value: string) => Number(value));
pg.types.setTypeParser(pg.types.builtins.NUMERIC, (value: string) => Number(value));

/** A 64-bit advisory lock key for a name: the first 8 bytes of its sha256, as the signed bigint PostgreSQL takes. */
export function advisoryKey(name: string): string {
  return crypto.createHash('sha256').update(name).digest().readBigInt64BE(0).toString();
}

// Held (session lock) while migrations run, so replicas starting together apply them once, one after the other.
const MIGRATION_LOCK = advisoryKey('preview-gate:migrations');

/** Applies every pending migration to the database at `url` (test templates, the migration command). */
export async function migratePostgres(url: string): Promise<void> {
  const pool = new pg.Pool({ connectionString: url, max: 1 });
  try {
    await applyMigrations(pool, 0);
  } finally {
    await pool.end();
  }
}

/**
 * Errors of a server that is not up yet: nothing listening, its host name not yet in DNS (a container network
 * adds a service when it starts), or PostgreSQL still starting (57P03). A wrong password or a missing database
 * is not among them: waiting would not mend those.
 */
const NOT_UP_YET = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ECONNRESET', '57P03']);

/**
 * A pooled connection, waiting up to `waitMs` for a server that is not up yet: compose starts the app and its
 * PostgreSQL together (and podman-compose has no "healthy" condition), a pod may come up before its database.
 */
async function connectWhenUp(pool: pg.Pool, waitMs: number): Promise<pg.PoolClient> {
  const deadline = Date.now() + waitMs;
  for (let pauseMs = 100; ; pauseMs = Math.min(pauseMs * 2, 2_000)) {
    try {
      return await pool.connect();
    } catch (error) {
      const code = (error as { code?: string }).code;
      if (!code || !NOT_UP_YET.has(code)) throw error;
      if (Date.now() + pauseMs > deadline) {
        throw new Error(`PostgreSQL did not accept connections within ${waitMs / 1000} s: ${(error as Error).message}`);
      }
      await new Promise((resolve) => setTimeout(resolve, pauseMs));
    }
  }
}

async function applyMigrations(pool: pg.Pool, startWaitMs: number): Promise<void> {
  const client = await connectWhenUp(pool, startWaitMs);
  try {
    await client.query('select pg_advisory_lock($1::bigint)', [MIGRATION_LOCK]);
    try {
      await migrate(drizzle(client), { migrationsFolder: postgresMigrationsFolder() });
    } finally {
      await client.query('select pg_advisory_unlock($1::bigint)', [MIGRATION_LOCK]);
    }
  } finally {
    client.release();
  }
}

/**
 * The one LISTEN connection of a Database: channels and their callbacks. When the connection is lost it is made
 * again (with a growing pause), every channel listened to again, and every callback called once: a notice sent
 * while it was down is lost, and a wake-up too many costs a look at the queue.
 */
class Listener {
  private readonly channels = new Map<string, Set<() => void>>();
  private client: pg.Client | undefined;
  private connecting: Promise<pg.Client> | undefined;
  private retry: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly url: string,
    private readonly onError: (error: Error, where: string) => void,
  ) {}

  async add(channel: string, onNotice: () => void): Promise<() => Promise<void>> {
    let callbacks = this.channels.get(channel);
    const isNew = !callbacks;
    if (!callbacks) this.channels.set(channel, (callbacks = new Set()));
    callbacks.add(onNotice);
    const stop = async () => {
      callbacks.delete(onNotice);
      if (callbacks.size > 0 || this.channels.get(channel) !== callbacks) return;
      this.channels.delete(channel);
      if (this.client && !this.closed) await this.client.query(`UNLISTEN ${this.client.escapeIdentifier(channel)}`).catch(() => {});
    };
    try {
      const client = await this.ready();
      if (isNew) await client.query(`LISTEN ${client.escapeIdentifier(channel)}`);
    } catch (error) {
      await stop();
      throw error;
    }
    return stop;
  }

  /** The PostgreSQL backend pid of the LISTEN connection (tests end it to prove the reconnection). */
  async backendPid(): Promise<number> {
    const client = await this.ready();
    return (client as unknown as { processID: number }).processID;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retry);
    const client = this.client;
    this.client = undefined;
    if (client) await client.end().catch(() => {});
  }

  private ready(): Promise<pg.Client> {
    if (this.closed) return Promise.reject(new Error('the database is closed'));
    if (this.client) return Promise.resolve(this.client);
    this.connecting ??= this.connect().finally(() => (this.connecting = undefined));
    return this.connecting;
  }

  private async connect(): Promise<pg.Client> {
    const client = new pg.Client({ connectionString: this.url });
    client.on('notification', (notice) => this.deliver(notice.channel));
    client.on('error', (error) => this.lost(client, error));
    client.on('end', () => this.lost(client, new Error('the LISTEN connection ended')));
    try {
      await client.connect();
      for (const channel of this.channels.keys()) await client.query(`LISTEN ${client.escapeIdentifier(channel)}`);
    } catch (error) {
      client.removeAllListeners();
      client.on('error', () => {});
      await client.end().catch(() => {});
      throw error;
    }
    if (this.closed) {
      await client.end().catch(() => {});
      throw new Error('the database is closed');
    }
    this.client = client;
    return client;
  }

  private deliver(channel: string): void {
    for (const onNotice of [...(this.channels.get(channel) ?? [])]) onNotice();
  }

  private lost(client: pg.Client, error: Error): void {
    if (this.closed || this.client !== client) return;
    this.client = undefined;
    client.removeAllListeners();
    client.on('error', () => {});
    this.onError(error, 'listen');
    this.reconnect(1);
  }

  private reconnect(attempt: number): void {
    const pauseMs = Math.min(5000, 100 * 2 ** (attempt - 1));
    this.retry = setTimeout(() => {
      this.ready().then(
        () => {
          for (const channel of this.channels.keys()) this.deliver(channel);
        },
        (error: Error) => {
          if (this.closed) return;
          this.onError(error, 'listen');
          this.reconnect(attempt + 1);
        },
      );
    }, pauseMs);
    this.retry.unref();
  }
}

export interface PostgresDatabase extends Database {
  readonly kind: 'postgres';
  /** The PostgreSQL backend pid of the LISTEN connection (for tests of its reconnection). */
  listenerBackendPid(): Promise<number>;
}

/**
 * Connects to PostgreSQL, applies every pending migration (one replica at a time) and points ./tables.js at the
 * PostgreSQL tables (unless `useTables: false`).
 */
export async function openPostgres(url: string, options: PostgresOptions = {}): Promise<PostgresDatabase> {
  const onError = options.onError ?? (() => {});
  const pool = new pg.Pool({ connectionString: url, max: options.poolSize ?? 10, connectionTimeoutMillis: 10_000 });
  // An idle pooled connection that dies (server restart, network) must not end the process: the pool drops it
  // and the next query opens another.
  pool.on('error', (error) => onError(error, 'pool'));
  try {
    await applyMigrations(pool, options.startWaitMs ?? 60_000);
  } catch (error) {
    await pool.end().catch(() => {});
    throw error;
  }
  if (options.useTables !== false) useTables('postgres');

  const root = drizzle(pool, { schema: pgSchema }) as PgOrm;
  /** The open transaction of this async context; `open` turns false at commit or rollback. */
  const current = new AsyncLocalStorage<{ tx: PgOrm; open: boolean }>();
  const openTransaction = () => {
    const store = current.getStore();
    return store?.open ? store.tx : undefined;
  };
  const inTransaction = (tx: Orm, what: string): PgOrm => {
    // A lock taken outside a transaction would be released at once (autocommit): a silent bug, so a loud one.
    if (openTransaction() !== (tx as unknown as PgOrm)) throw new Error(`${what} must be called with the open transaction`);
    return tx as unknown as PgOrm;
  };
  const listener = new Listener(url, onError);

  return {
    kind: 'postgres',
    // Inside a transaction, single statements join it: on its own connection a statement would wait on the
    // transaction's own row locks (a deadlock) or miss its uncommitted rows.
    get orm(): Orm {
      return (openTransaction() ?? root) as unknown as Orm;
    },
    async transaction<T>(fn: (tx: Orm) => Promise<T>): Promise<T> {
      const outer = openTransaction();
      if (outer) return fn(outer as unknown as Orm);
      return root.transaction(async (tx) => {
        const store = { tx: tx as unknown as PgOrm, open: true };
        try {
          return await current.run(store, () => fn(tx as unknown as Orm));
        } finally {
          // Work started inside and still running after (a timer, a promise not awaited) must not join a
          // transaction that has ended.
          store.open = false;
        }
      });
    },
    detached<T>(fn: () => T): T {
      return current.exit(fn);
    },
    async lockPullRequest(tx, pullRequestId) {
      await inTransaction(tx, 'lockPullRequest').execute(sql`select id from pull_requests where id = ${pullRequestId} for update`);
    },
    async lockName(tx, name, mode: LockMode) {
      const key = advisoryKey(name);
      const orm = inTransaction(tx, 'lockName');
      if (mode === 'shared') await orm.execute(sql`select pg_advisory_xact_lock_shared(${key}::bigint)`);
      else await orm.execute(sql`select pg_advisory_xact_lock(${key}::bigint)`);
    },
    async notify(channel) {
      // Inside a transaction the notice goes out at commit (and not at all on rollback): listeners woken by it
      // see the rows it was about.
      await ((openTransaction() ?? root) as PgOrm).execute(sql`select pg_notify(${channel}, '')`);
    },
    listen: (channel, onNotice) => listener.add(channel, onNotice),
    listenerBackendPid: () => listener.backendPid(),
    async ping() {
      await pool.query('select 1');
    },
    async close() {
      await listener.close();
      await pool.end();
    },
  };
}
