import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { drizzle, migrate, type BetterSQLite3Database } from './orm.js';
import * as schema from './schema.js';
import { checkSqliteAddon } from './sqlite.js';

// Transitional: the synchronous client, until every module is on the async Database (src/db/open.ts).

export type Db = BetterSQLite3Database<typeof schema> & { $client: Database.Database };

export { checkSqliteAddon };

/** drizzle-kit writes migrations next to the schema; the compiled code (dist/src/db) finds them there too. */
function migrationsFolder(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const beside = path.join(here, 'migrations');
  return fs.existsSync(beside) ? beside : path.resolve(here, '../../../src/db/migrations');
}

/** Opens (creating if needed) the SQLite file and applies every pending migration. */
export function openDb(file: string): Db {
  checkSqliteAddon();
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const sqlite = new Database(file);
  sqlite.pragma('journal_mode = WAL');
  sqlite.pragma('foreign_keys = ON');
  sqlite.pragma('busy_timeout = 5000');
  const db = drizzle(sqlite, { schema }) as Db;
  migrate(db, { migrationsFolder: migrationsFolder() });
  // The database holds wrapped keys and encrypted secrets: readable by the server's user only.
  for (const f of [file, `${file}-wal`, `${file}-shm`]) if (fs.existsSync(f)) fs.chmodSync(f, 0o600);
  return db;
}

