import fs from 'node:fs';
import Database from 'better-sqlite3';
import os from 'node:os';
import path from 'node:path';
import { SignJWT } from 'jose';
import nock from 'nock';
import { pino } from 'pino';
import { probotFromEnv, startServer, type RunningServer } from '../../src/app.js';
import { loadConfig, type Config } from '../../src/config.js';
import { requestLogFields } from '../../src/request-context.js';
import type { AzureKeyOptions } from '../../src/secrets/azure.js';
import type { Database as AppDatabase } from '../../src/db/database.js';
import { openDatabase, type DatabaseSettings } from '../../src/db/open.js';
import { SqliteDatabase } from '../../src/db/sqlite.js';
import { replicas } from '../../src/db/tables.js';
import { count, isNotNull } from '../../src/db/orm.js';
import { testDatabaseEnv } from './postgres.js';
import { UPLOAD_SECRET_NAME } from '../../src/upload/route.js';
import { appPrivateKey, OWNER, REPO } from './github.js';

export const WEBHOOK_SECRET = 'test-webhook-secret';
export const SLUG = `${OWNER}/${REPO}`;
export const UPLOAD_SECRET = 'an-upload-secret-of-more-than-32-bytes-0123456789';

export interface TestServer extends RunningServer {
  config: Config;
  tmp: string;
  /** Stops the server but keeps its data directory (for restart tests). */
  stop(): Promise<void>;
  /** A Travis-style token; claims and signing can be overridden for attacks. */
  token(claims?: Record<string, unknown>, options?: { secret?: string; alg?: string; expiresIn?: string | number }): Promise<string>;
  upload(pr: number, sha: string, body: Buffer, init?: { token?: string; headers?: Record<string, string> }): Promise<Response>;
  /** What the server logged (info and above), one object per line. */
  logs: { level: number; msg: string; [field: string]: unknown }[];
  /** Every path under the builds dir (relative), for "nothing changed on disk" assertions. */
  buildsTree(): string[];
}

export async function startTestServer(
  env: Record<string, string> = {},
  reuseTmp?: string,
  options: { azure?: AzureKeyOptions; seedSecret?: boolean; sqlite?: boolean; timing?: { leaseMs?: number; sweepEveryMs?: number; scheduleCheckMs?: number } } = {},
): Promise<TestServer> {
  const tmp = reuseTmp ?? fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-test-'));
  // `sqlite: true`: on SQLite even when the test process has DATABASE_URL (the source of migrate-to-postgres).
  const database = options.sqlite ? { env: {}, drop: async () => {} } : await databaseOf(tmp);
  const fullEnv = {
    ...database.env,
    DATA_DIR: path.join(tmp, 'data'),
    PREVIEW_DOMAIN: 'previews.test',
    // Behind TLS, as in production: preview URLs are https.
    PUBLIC_URL: 'https://uploads.previews-gate.test',
    GITHUB_RETRIES: '0',
    GITHUB_TIMEOUT_MS: '1500',
    GITHUB_THROTTLE: 'false',
    // Each test serves the settings it needs; the cache has its own tests.
    SETTINGS_CACHE_SECONDS: '0',
    // Tests run the sweep themselves (server.sweep.run()).
    RECONCILE_INTERVAL_MINUTES: '0',
    APP_ID: '1',
    PRIVATE_KEY: appPrivateKey,
    WEBHOOK_SECRET,
    ...env,
  };
  const config = loadConfig(fullEnv);
  const logs: TestServer['logs'] = [];
  const log = pino(
    { level: process.env.TEST_LOG_LEVEL ?? 'info', mixin: requestLogFields },
    { write: (line: string) => void logs.push(JSON.parse(line)) },
  );
  const probot = probotFromEnv(config, log, fullEnv);
  const running = await startServer(config, log, { probot, port: 0, azure: options.azure, timing: options.timing });
  if (options.seedSecret !== false) {
    const repo = await running.core.registry.ensureRepository(SLUG);
    await running.core.secrets.set(repo.accountId, repo.id, UPLOAD_SECRET_NAME, Buffer.from(UPLOAD_SECRET));
  }

  const server: TestServer = {
    ...running,
    config,
    tmp,
    logs,
    async token(claims = {}, options = {}) {
      const jwt = new SignJWT({ slug: SLUG, 'pull-request': 1, ...claims })
        .setProtectedHeader({ alg: options.alg ?? 'HS256' })
        .setIssuer('Travis CI, GmbH')
        .setIssuedAt()
        .setExpirationTime(options.expiresIn ?? '90m');
      return jwt.sign(Buffer.from(options.secret ?? UPLOAD_SECRET));
    },
    async upload(pr, sha, body, init = {}) {
      const token = init.token ?? (await server.token({ 'pull-request': pr }));
      return fetch(`${running.url}/create-build/${pr}/${sha}`, {
        method: 'POST',
        headers: { authorization: `Token ${token}`, 'content-type': 'application/gzip', ...init.headers },
        body: new Uint8Array(body),
      });
    },
    buildsTree() {
      return listTree(config.buildsDir);
    },
    async close() {
      await running.close();
      testDatabases.delete(tmp);
      await database.drop();
      fs.rmSync(tmp, { recursive: true, force: true });
    },
    stop: () => running.close(),
  };
  return server;
}

/**
 * The database of a test's `tmp`: with DATABASE_URL in the test process, a fresh PostgreSQL database of its own,
 * made at its first server and used again by a restart on the same `tmp` (dropped at close); without, nothing
 * (SQLite in the test's DATA_DIR).
 */
const testDatabases = new Map<string, ReturnType<typeof testDatabaseEnv>>();

function databaseOf(tmp: string): ReturnType<typeof testDatabaseEnv> {
  let database = testDatabases.get(tmp);
  if (!database) testDatabases.set(tmp, (database = testDatabaseEnv()));
  return database;
}

/** The DATABASE_URL of a test's `tmp` ({} on SQLite), for CLI commands run there without a server. */
export async function tmpDatabaseEnv(tmp: string): Promise<Record<string, string>> {
  return (await databaseOf(tmp)).env;
}

/** Drops the database of a test's `tmp` (when no server's close did). */
export async function dropTmpDatabase(tmp: string): Promise<void> {
  const database = testDatabases.get(tmp);
  testDatabases.delete(tmp);
  await (await database)?.drop();
}

/**
 * A fresh server for each test of the file, GitHub reachable only through nock; `use` receives it before
 * each test (`let server: TestServer; serverPerTest((s) => (server = s));`).
 */
export function serverPerTest(use: (server: TestServer) => void, env: Record<string, string> = {}): void {
  let current: TestServer | undefined;
  beforeEach(async () => {
    nock.disableNetConnect();
    nock.enableNetConnect('127.0.0.1');
    current = await startTestServer(env);
    use(current);
  });
  afterEach(async () => {
    nock.cleanAll();
    await current?.close();
    current = undefined;
  });
}

/** What a CLI command run beside a test server needs to open the same database (its DATA_DIR, its DATABASE_URL). */
export function dataEnv(server: { config: Config }): Record<string, string> {
  return { DATA_DIR: server.config.dataDir, ...(server.config.databaseUrl ? { DATABASE_URL: server.config.databaseUrl } : {}) };
}

/** Every byte SQLite keeps on disk for DATA_DIR: the database file and its write-ahead log. */
export function databaseBytes(dataDir: string): Buffer {
  const files = ['preview-gate.sqlite', 'preview-gate.sqlite-wal'].map((f) => path.join(dataDir, f));
  return Buffer.concat(files.map((f) => (fs.existsSync(f) ? fs.readFileSync(f) : Buffer.alloc(0))));
}

export function listTree(root: string): string[] {
  if (!fs.existsSync(root)) return [];
  return (fs.readdirSync(root, { recursive: true }) as string[]).sort();
}

export const sha = (c: string) => c.repeat(40).slice(0, 40);

/** Runs `fn` on a connection of its own to a (stopped or running) server's database, SQLite or PostgreSQL. */
export async function withDatabaseOf<T>(settings: DatabaseSettings, fn: (db: AppDatabase) => Promise<T>): Promise<T> {
  const db = await openDatabase(settings);
  try {
    return await fn(db);
  } finally {
    await db.close();
  }
}

/** What a power loss leaves in the database: no replica's clean stop recorded, every heartbeat long expired. */
export function forgetCleanStop(settings: DatabaseSettings): Promise<void> {
  return withDatabaseOf(settings, async (db) => void (await db.orm.update(replicas).set({ stoppedAt: null, heartbeatAt: new Date(0) })));
}

/** How many replicas recorded a clean stop (the per-replica clean-stop marker). */
export function cleanStops(settings: DatabaseSettings): Promise<number> {
  return withDatabaseOf(settings, async (db) => {
    const [row] = await db.orm.select({ n: count() }).from(replicas).where(isNotNull(replicas.stoppedAt));
    return row?.n ?? 0;
  });
}

/** Stops a server as a crash would: no clean-stop marker, heartbeat and schedules simply stop, database closed. */
export async function crash(server: RunningServer): Promise<void> {
  server.replica.abandon();
  await server.schedules.stop(0);
  await server.previews.stop(0);
  server.server.closeAllConnections();
  await new Promise<void>((resolve) => server.server.close(() => resolve()));
  await server.core.db.close();
}

/** The SQLite connection behind a test's database, for raw SQL about SQLite itself (pragmas, file layout). */
export function sqliteOf(db: AppDatabase): Database.Database {
  if (!(db instanceof SqliteDatabase)) throw new Error('this test reads SQLite itself');
  return db.sqliteClient();
}
