import { defineConfig } from 'drizzle-kit';

/** The PostgreSQL schema's migrations (the SQLite ones: drizzle.config.ts). `npm run db:generate` runs both. */
export default defineConfig({
  dialect: 'postgresql',
  schema: './src/db/schema.pg.ts',
  out: './src/db/migrations-pg',
});
