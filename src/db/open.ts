import type { Database } from './database.js';
import { openSqlite } from './sqlite.js';

/** What chooses and locates the database: PostgreSQL when `databaseUrl` is set, SQLite's file otherwise. */
export interface DatabaseSettings {
  databaseFile: string;
  databaseUrl?: string;
}

/** The configured backend, migrated and ready: PostgreSQL (`DATABASE_URL`) or SQLite (the embedded default). */
export async function openDatabase(settings: DatabaseSettings, onError?: (error: Error, where: string) => void): Promise<Database> {
  if (!settings.databaseUrl) return openSqlite(settings.databaseFile);
  // Loaded only here: an embedded (SQLite) deployment never loads the PostgreSQL driver.
  const { openPostgres } = await import('./postgres.js');
  return openPostgres(settings.databaseUrl, { onError });
}
