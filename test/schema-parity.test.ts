/**
 * The two schemas (src/db/schema.ts for SQLite, src/db/schema.pg.ts for PostgreSQL) must describe the same
 * database: shared query code runs on both. This compares what drizzle's getTableConfig says of each table:
 * columns (name, nullability, primary key), composite primary keys, indexes (name, unique, what they index),
 * unique constraints and foreign keys. Types are not compared (they differ by design: bigint vs integer, …).
 */
import { createRequire } from 'node:module';
import { describe, expect, it } from '@jest/globals';
import * as sqliteSchema from '../src/db/schema.js';
import * as pgSchema from '../src/db/schema.pg.js';
import * as tables from '../src/db/tables.js';

const require = createRequire(import.meta.url);
const { is, Column, Table } = require('drizzle-orm') as typeof import('drizzle-orm');
const sqliteCore = require('drizzle-orm/sqlite-core') as typeof import('drizzle-orm/sqlite-core');
const pgCore = require('drizzle-orm/pg-core') as typeof import('drizzle-orm/pg-core');

type AnyConfig = ReturnType<typeof sqliteCore.getTableConfig> | ReturnType<typeof pgCore.getTableConfig>;

/**
 * An index target as text: a column's name (pg-core keeps an IndexedColumn copy, sqlite-core the Column), or an
 * expression's SQL with column names in it.
 */
function target(value: unknown): string {
  const chunks = (value as { queryChunks?: unknown[] }).queryChunks;
  if (!chunks) return (value as { name: string }).name;
  return chunks.map((chunk) => (is(chunk, Column) ? chunk.name : ((chunk as { value?: string[] }).value ?? []).join(''))).join('');
}

/** What must be equal in both engines, one table as plain sorted data. */
function shape(config: AnyConfig) {
  const names = (columns: { name: string }[]) => columns.map((c) => c.name);
  return {
    columns: config.columns.map((c) => ({ name: c.name, notNull: c.notNull, primary: c.primary })).sort((a, b) => a.name.localeCompare(b.name)),
    primaryKeys: config.primaryKeys.map((pk) => names(pk.columns)),
    indexes: config.indexes
      .map((i) => ({ name: i.config.name, unique: i.config.unique, on: (i.config.columns as unknown[]).map(target) }))
      .sort((a, b) => (a.name ?? '').localeCompare(b.name ?? '')),
    uniqueConstraints: config.uniqueConstraints.map((u) => ({ name: u.name, columns: names(u.columns) })),
    foreignKeys: config.foreignKeys
      .map((fk) => {
        const ref = fk.reference();
        const foreignTable = (ref.foreignTable as unknown as Record<symbol, string>)[Symbol.for('drizzle:Name')];
        return `${names(ref.columns).join(',')} → ${foreignTable}(${names(ref.foreignColumns).join(',')}) on delete ${fk.onDelete ?? 'no action'}`;
      })
      .sort(),
  };
}

function tablesOf(schema: Record<string, unknown>): Map<string, AnyConfig> {
  const tables = new Map<string, AnyConfig>();
  for (const value of Object.values(schema)) {
    if (is(value, sqliteCore.SQLiteTable)) tables.set(sqliteCore.getTableConfig(value).name, sqliteCore.getTableConfig(value));
    else if (is(value, pgCore.PgTable)) tables.set(pgCore.getTableConfig(value).name, pgCore.getTableConfig(value));
    else if (is(value, Table)) throw new Error('a table of neither engine');
  }
  return tables;
}

/** Every difference between the two schemas, one sentence each (empty when they agree). */
function differences(sqlite: Record<string, unknown>, pg: Record<string, unknown>): string[] {
  const a = tablesOf(sqlite);
  const b = tablesOf(pg);
  const found: string[] = [];
  for (const name of new Set([...a.keys(), ...b.keys()])) {
    const left = a.get(name);
    const right = b.get(name);
    if (!left || !right) {
      found.push(`table ${name} is only in the ${left ? 'SQLite' : 'PostgreSQL'} schema`);
      continue;
    }
    const l = shape(left);
    const r = shape(right);
    for (const key of Object.keys(l) as (keyof typeof l)[]) {
      if (JSON.stringify(l[key]) !== JSON.stringify(r[key])) {
        found.push(`${name}.${key}: SQLite ${JSON.stringify(l[key])} vs PostgreSQL ${JSON.stringify(r[key])}`);
      }
    }
  }
  return found;
}

describe('schema parity (SQLite and PostgreSQL)', () => {
  it('both schemas have the same tables, columns, keys, indexes, unique constraints and foreign keys', () => {
    expect(tablesOf(sqliteSchema).size).toBeGreaterThan(15);
    expect(differences(sqliteSchema, pgSchema)).toEqual([]);
  });

  // The comparison can fail: a PostgreSQL schema with one column added, one index dropped, a column made
  // nullable and one table missing is reported, difference by difference.
  it('reports a column added to one schema only, a missing index, a nullability change and a missing table', () => {
    const { integer, pgTable, text, uniqueIndex } = pgCore;
    const drifted: Record<string, unknown> = { ...pgSchema };
    drifted.replicas = pgTable('replicas', {
      id: text('id').primaryKey(),
      host: text('host').notNull(),
      pid: integer('pid').notNull(),
      heartbeatAt: integer('heartbeat_at').notNull(),
      stoppedAt: integer('stopped_at'),
      createdAt: integer('created_at').notNull(),
      region: text('region'),
    });
    drifted.accounts = pgTable(
      'accounts',
      {
        id: integer('id').primaryKey(),
        login: text('login'),
        githubId: integer('github_id'),
        wrappedDek: text('wrapped_dek').notNull(),
        dekKeyId: text('dek_key_id').notNull(),
        installationId: integer('installation_id'),
        createdAt: integer('created_at').notNull(),
      },
      (t) => [uniqueIndex('accounts_login').on(t.login)],
    );
    delete drifted.schedules;
    const found = differences(sqliteSchema, drifted);
    expect(found).toHaveLength(4);
    expect(found.find((d) => d.startsWith('replicas.columns'))).toContain('region');
    expect(found.find((d) => d.startsWith('accounts.columns'))).toContain('"name":"login","notNull":false');
    expect(found.find((d) => d.startsWith('accounts.indexes'))).toContain('accounts_github_id');
    expect(found).toContain('table schedules is only in the SQLite schema');
  });

  // Query code takes its tables from src/db/tables.ts: a table missing there would be queried with SQLite's
  // definition on PostgreSQL (wrong SQL dialect at run time).
  it('tables.ts switches every table of both schemas, and back', () => {
    const bindings = () => Object.fromEntries(Object.entries(tables).filter(([name]) => name in sqliteSchema));
    expect(Object.keys(bindings()).sort()).toEqual(Object.keys(sqliteSchema).sort());
    expect(Object.keys(pgSchema).sort()).toEqual(Object.keys(sqliteSchema).sort());
    tables.useTables('postgres');
    try {
      expect(tables.tablesKind).toBe('postgres');
      for (const [name, table] of Object.entries(bindings())) expect([name, (table as unknown) === pgSchema[name as keyof typeof pgSchema]]).toEqual([name, true]);
    } finally {
      tables.useTables('sqlite');
    }
    for (const [name, table] of Object.entries(bindings())) expect([name, table === sqliteSchema[name as keyof typeof sqliteSchema]]).toEqual([name, true]);
  });
});
