import { createRequire } from 'node:module';

// drizzle-orm's CommonJS build for the PostgreSQL side, for the same reason as ./orm.ts (its ESM build costs a
// re-parse of drizzle-orm's package.json `exports` per file at every start). Only the PostgreSQL backend, its
// schema and the migration command load this file: the embedded SQLite default never does.
const require = createRequire(import.meta.url);

export const { bigint, boolean, customType, getTableConfig, index, integer, jsonb, pgTable, primaryKey, text, uniqueIndex } =
  require('drizzle-orm/pg-core') as typeof import('drizzle-orm/pg-core');
export const { drizzle } = require('drizzle-orm/node-postgres') as typeof import('drizzle-orm/node-postgres');
export const { migrate } = require('drizzle-orm/node-postgres/migrator') as typeof import('drizzle-orm/node-postgres/migrator');
export type { NodePgDatabase } from 'drizzle-orm/node-postgres';
