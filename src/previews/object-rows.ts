import { and, eq, inArray, sql } from '../db/orm.js';
import type { Database, Orm } from '../db/database.js';
import { objects, repositories } from '../db/tables.js';

/** Rows per statement: SQLite limits the variables of one statement. */
const CHUNK = 200;

/**
 * Records a build's contents as the repository's objects (a content recorded already is skipped) and adds the new
 * ones' bytes to `repositories.object_bytes`. Called inside the transaction that makes the build ready.
 */
export async function recordObjects(tx: Orm, repositoryId: number, contents: Iterable<[sha256: string, size: number]>): Promise<void> {
  const rows = [...contents].map(([sha256, size]) => ({ repositoryId, sha256, size }));
  let added = 0;
  for (let i = 0; i < rows.length; i += CHUNK) {
    // `returning` lists the rows inserted: a content recorded already is a conflict, skipped and not counted.
    const inserted = await tx
      .insert(objects)
      .values(rows.slice(i, i + CHUNK))
      .onConflictDoNothing()
      .returning({ size: objects.size });
    for (const row of inserted) added += row.size;
  }
  if (added > 0) await addObjectBytes(tx, repositoryId, added);
}

/** Removes the rows of objects that are gone from disk, and their bytes from `repositories.object_bytes`, in one transaction. */
export async function forgetObjects(db: Database, repositoryId: number, gone: { sha256: string; size: number }[]): Promise<void> {
  if (!gone.length) return; // the common case: a cleanup asks for each of a repository's 256 sub-folders
  await db.transaction(async (tx) => {
    let removed = 0;
    // 500 at a time: SQLite limits the variables of one statement.
    for (let i = 0; i < gone.length; i += 500) {
      const chunk = gone.slice(i, i + 500);
      const deleted = await tx
        .delete(objects)
        .where(and(eq(objects.repositoryId, repositoryId), inArray(objects.sha256, chunk.map((o) => o.sha256))))
        .returning({ size: objects.size });
      for (const row of deleted) removed += row.size;
    }
    if (removed > 0) await addObjectBytes(tx, repositoryId, -removed);
  });
}

async function addObjectBytes(tx: Orm, repositoryId: number, bytes: number): Promise<void> {
  await tx
    .update(repositories)
    .set({ objectBytes: sql`${repositories.objectBytes} + ${bytes}` })
    .where(eq(repositories.id, repositoryId));
}
