import type { Database } from './database.js';
import { openSqlite } from './sqlite.js';

/** What chooses and locates the database (PostgreSQL's `DATABASE_URL` joins it with that backend). */
export interface DatabaseSettings {
  databaseFile: string;
}

/** The configured backend, migrated and ready: SQLite (the embedded default) for now. */
export async function openDatabase(settings: DatabaseSettings): Promise<Database> {
  return openSqlite(settings.databaseFile);
}
