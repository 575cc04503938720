import fs from 'node:fs';
import path from 'node:path';
import type { Database } from './database.js';
import { openSqlite } from './sqlite.js';

/**
 * Left beside the SQLite file by `migrate-to-postgres`: from then on the rows live in PostgreSQL, and a server or
 * command started without DATABASE_URL on this DATA_DIR would work on the stale file (a server would even remove
 * the build folders and uploads the PostgreSQL replicas made, as rows it does not have). Such a start is refused.
 */
export function movedToPostgresMarker(databaseFile: string): string {
  return path.join(path.dirname(databaseFile), 'moved-to-postgres');
}

/** What chooses and locates the database: PostgreSQL when `databaseUrl` is set, SQLite's file otherwise. */
export interface DatabaseSettings {
  databaseFile: string;
  databaseUrl?: string;
}

/** The configured backend, migrated and ready: PostgreSQL (`DATABASE_URL`) or SQLite (the embedded default). */
export async function openDatabase(settings: DatabaseSettings, onError?: (error: Error, where: string) => void): Promise<Database> {
  if (!settings.databaseUrl) {
    const marker = movedToPostgresMarker(settings.databaseFile);
    if (fs.existsSync(marker)) {
      throw new Error(`this DATA_DIR's database was moved to PostgreSQL by migrate-to-postgres: set DATABASE_URL for every server and command (delete ${marker} only to go back to the SQLite file).`);
    }
    return openSqlite(settings.databaseFile);
  }
  // Loaded only here: an embedded (SQLite) deployment never loads the PostgreSQL driver.
  const { openPostgres } = await import('./postgres.js');
  return openPostgres(settings.databaseUrl, { onError });
}
