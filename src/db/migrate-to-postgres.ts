/**
 * `preview-gate migrate-to-postgres <url>`: copies a SQLite deployment's database (DATA_DIR) into an empty
 * PostgreSQL database, to move from one process to N replicas. One PostgreSQL transaction: the target ends with
 * every row or none. Rows go in foreign-key order with their ids, then each identity sequence is set past the
 * largest id, so the next row the server adds does not collide with a copied one.
 */
import fs from 'node:fs';
import { movedToPostgresMarker } from './open.js';
import { openSqlite } from './sqlite.js';
import { LEASE_MS } from '../replica.js';
import { drizzle, isNull, sql } from './orm.js';
import { getTableConfig as pgTableConfig, type NodePgDatabase } from './orm.pg.js';
import { openPostgres } from './postgres.js';
import * as sqliteSchema from './schema.js';
import * as pgSchema from './schema.pg.js';

type SqliteTable = (typeof sqliteSchema)[keyof typeof sqliteSchema];
type PgTable = (typeof pgSchema)[keyof typeof pgSchema];

export interface CopiedTable {
  table: string;
  rows: number;
}

/** PostgreSQL's limit is 65,535 parameters per statement; batches stay well under it. */
const PARAMETERS_PER_INSERT = 30_000;

/** Table name (SQL) of a drizzle table. */
const nameOf = (table: SqliteTable | PgTable): string => (table as unknown as Record<symbol, string>)[Symbol.for('drizzle:Name')]!;

/**
 * The schema's tables, each after every table it references: a parent's rows are in before its children's.
 * Derived from the schema's foreign keys, so a new table needs nothing here.
 */
export function tablesInForeignKeyOrder(): { name: string; from: SqliteTable; to: PgTable }[] {
  const pgByName = new Map(Object.values(pgSchema).map((t) => [nameOf(t), t]));
  const parents = new Map<string, string[]>();
  const byName = new Map<string, SqliteTable>();
  for (const table of Object.values(pgSchema)) {
    const name = nameOf(table);
    parents.set(name, pgTableConfig(table).foreignKeys.map((fk) => nameOf(fk.reference().foreignTable as PgTable)).filter((p) => p !== name));
  }
  for (const table of Object.values(sqliteSchema)) byName.set(nameOf(table), table);
  const ordered: string[] = [];
  const visit = (name: string, path: string[]) => {
    if (ordered.includes(name)) return;
    if (path.includes(name)) throw new Error(`foreign keys form a cycle: ${[...path, name].join(' → ')}`);
    for (const parent of parents.get(name) ?? []) visit(parent, [...path, name]);
    ordered.push(name);
  };
  for (const name of [...parents.keys()].sort()) visit(name, []);
  return ordered.map((name) => {
    const from = byName.get(name);
    const to = pgByName.get(name);
    if (!from || !to) throw new Error(`table ${name} is not in both schemas`);
    return { name, from, to };
  });
}

/** Refuses while a server still writes to the SQLite file: rows written after the copy's snapshot would be lost. */
/**
 * The SQLite side, read synchronously: a stopped deployment's file (migrated to the latest schema first, as a start
 * would), read in one snapshot while the rows go into PostgreSQL.
 */
function openSource(file: string) {
  return drizzle(openSqlite(file).sqliteClient(), { schema: sqliteSchema });
}
type Source = ReturnType<typeof openSource>;

function refuseLiveServer(db: Source): void {
  const since = new Date(Date.now() - LEASE_MS);
  const live = db
    .select({ host: sqliteSchema.replicas.host, pid: sqliteSchema.replicas.pid })
    .from(sqliteSchema.replicas)
    .where(sql`${isNull(sqliteSchema.replicas.stoppedAt)} and ${sqliteSchema.replicas.heartbeatAt} >= ${since.getTime()}`)
    .all();
  if (live.length > 0) {
    const [first] = live;
    throw new Error(`a server is still running on this database (pid ${first!.pid} on ${first!.host.split('/')[0]}): stop it first, so no row is written after the copy.`);
  }
}

/**
 * Copies every table of the SQLite database `sqliteFile` into the PostgreSQL database at `url`, which must be
 * empty (its tables are created by the PostgreSQL migrations if missing). Returns the rows copied per table.
 */
export async function migrateToPostgres(sqliteFile: string, url: string): Promise<CopiedTable[]> {
  if (!fs.existsSync(sqliteFile)) throw new Error(`there is no database at ${sqliteFile}: set DATA_DIR to the data directory of the SQLite deployment.`);
  const source = openSource(sqliteFile);
  try {
    refuseLiveServer(source);
    // Its own tables (schema.pg.ts) are used here: the process's table bindings stay as they are.
    const target = await openPostgres(url, { useTables: false });
    try {
      const copied = await target.transaction(async (orm) => {
        const tx = orm as unknown as NodePgDatabase<typeof pgSchema>;
        const tables = tablesInForeignKeyOrder();
        for (const { name, to } of tables) {
          if ((await countRows(tx, to)) > 0) {
            throw new Error(`the PostgreSQL database is not empty (table ${name} has rows): migrate into a new, empty database.`);
          }
        }
        // One read transaction on SQLite too: every table is read from the same snapshot.
        source.$client.exec('BEGIN');
        try {
          const copied: CopiedTable[] = [];
          for (const { name, from, to } of tables) copied.push({ table: name, rows: await copyTable(source, tx, from, to) });
          await resetIdentities(tx, tables.map((t) => t.to));
          return copied;
        } finally {
          source.$client.exec('COMMIT');
        }
      });
      // Committed: the SQLite file is stale from now on, and is refused without DATABASE_URL (open.ts).
      fs.writeFileSync(movedToPostgresMarker(sqliteFile), `moved to PostgreSQL at ${new Date().toISOString()}\n`, { mode: 0o600 });
      return copied;
    } finally {
      await target.close();
    }
  } finally {
    source.$client.close();
  }
}

/** Copies one table in batches (read by rowid, so each batch is one index range, not an ever larger OFFSET). */
async function copyTable(source: Source, tx: NodePgDatabase<typeof pgSchema>, from: SqliteTable, to: PgTable): Promise<number> {
  const columns = Object.keys(pgTableConfigColumns(to)).length;
  const batch = Math.max(1, Math.floor(PARAMETERS_PER_INSERT / columns));
  let last = 0;
  let copied = 0;
  for (;;) {
    const rows = source
      .select({ rowid: sql<number>`rowid`, row: from as never })
      .from(from as never)
      .where(sql`rowid > ${last}`)
      .orderBy(sql`rowid`)
      .limit(batch)
      .all() as { rowid: number; row: Record<string, unknown> }[];
    if (rows.length === 0) break;
    try {
      await tx.insert(to as never).values(rows.map((r) => r.row) as never);
    } catch (error) {
      // drizzle's error quotes the statement and its parameters (encrypted secrets, wrapped keys): only
      // PostgreSQL's own reason is shown.
      const reason = ((error as { cause?: Error }).cause ?? (error as Error)).message;
      throw new Error(`copying table ${nameOf(to)} failed: ${reason}; nothing was copied.`);
    }
    copied += rows.length;
    last = rows[rows.length - 1]!.rowid;
  }
  const found = await countRows(tx, to);
  if (found !== copied) throw new Error(`table ${nameOf(to)}: ${copied} rows copied but ${found} found after.`);
  return copied;
}

async function countRows(tx: NodePgDatabase<typeof pgSchema>, table: PgTable): Promise<number> {
  const result = await tx.execute<{ n: number }>(sql`select count(*)::int as n from ${table}`);
  return result.rows[0]!.n;
}

function pgTableConfigColumns(table: PgTable): Record<string, unknown> {
  return Object.fromEntries(pgTableConfig(table).columns.map((c) => [c.name, c]));
}

/** Sets each identity column's sequence past the largest copied id. */
async function resetIdentities(tx: NodePgDatabase<typeof pgSchema>, tables: PgTable[]): Promise<void> {
  for (const table of tables) {
    const identity = pgTableConfig(table).columns.find((c) => c.generatedIdentity);
    if (!identity) continue;
    const name = nameOf(table);
    await tx.execute(
      sql`select setval(pg_get_serial_sequence(${`"${name}"`}, ${identity.name}), coalesce((select max(${sql.identifier(identity.name)}) from ${sql.identifier(name)}), 0) + 1, false)`,
    );
  }
}
