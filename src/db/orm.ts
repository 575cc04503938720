import { createRequire } from 'node:module';

// drizzle-orm's CommonJS build, loaded with require(), for every use of drizzle in this code. Its ESM build is some
// 200 `.js` files, and Node 24 parses drizzle-orm's 179 KB package.json `exports` again for each of them to learn
// its module type: ~0.25 s and ~100 MB of garbage at every start, which left the idle server at 140 MB RSS instead
// of 100 (README, performance). `.cjs` files need no such look-up. One build for everything: schema, queries and
// conditions all come from here.
const require = createRequire(import.meta.url);

export const { and, asc, count, countDistinct, desc, eq, gt, gte, inArray, isNotNull, isNull, lt, lte, min, ne, notInArray, or, sql, sum } =
  require('drizzle-orm') as typeof import('drizzle-orm');
export const { blob, index, integer, primaryKey, sqliteTable, text, uniqueIndex } =
  require('drizzle-orm/sqlite-core') as typeof import('drizzle-orm/sqlite-core');
export const { drizzle } = require('drizzle-orm/better-sqlite3') as typeof import('drizzle-orm/better-sqlite3');
export const { migrate } = require('drizzle-orm/better-sqlite3/migrator') as typeof import('drizzle-orm/better-sqlite3/migrator');
export const { drizzle: drizzleProxy } = require('drizzle-orm/sqlite-proxy') as typeof import('drizzle-orm/sqlite-proxy');
export type { BetterSQLite3Database } from 'drizzle-orm/better-sqlite3';
