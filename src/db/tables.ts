// The tables every query names. For now SQLite's; the PostgreSQL backend turns this into a choice between the two
// schemas (kept column for column in step). schema.ts stays the source for drizzle-kit and for the row types.
export * from './schema.js';
