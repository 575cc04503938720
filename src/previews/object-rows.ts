import { and, eq, inArray, sql } from '../db/orm.js';
import type { Db } from '../db/client.js';
import { objects, repositories } from '../db/schema.js';

/** The database or one of its transactions: what the object rows are written with. */
type Writer = Pick<Db, 'insert' | 'update' | 'delete'>;

/**
 * Records a build's contents as the repository's objects (a content recorded already is skipped) and adds the new
 * ones' bytes to `repositories.object_bytes`. Called inside the transaction that makes the build ready.
 */
export function recordObjects(tx: Writer, repositoryId: number, contents: Iterable<[sha256: string, size: number]>): void {
  const insert = tx
    .insert(objects)
    .values({ repositoryId, sha256: sql.placeholder('sha256'), size: sql.placeholder('size') })
    .onConflictDoNothing()
    .prepare();
  let added = 0;
  for (const [sha256, size] of contents) if (insert.run({ sha256, size }).changes > 0) added += size;
  if (added > 0) addObjectBytes(tx, repositoryId, added);
}

/** Removes the rows of objects that are gone from disk, and their bytes from `repositories.object_bytes`, in one transaction. */
export function forgetObjects(db: Db, repositoryId: number, gone: { sha256: string; size: number }[]): void {
  if (!gone.length) return; // the common case: a cleanup asks for each of a repository's 256 sub-folders
  db.transaction((tx) => {
    let removed = 0;
    // 500 at a time: SQLite limits the variables of one statement.
    for (let i = 0; i < gone.length; i += 500) {
      const chunk = gone.slice(i, i + 500);
      const deleted = tx
        .delete(objects)
        .where(and(eq(objects.repositoryId, repositoryId), inArray(objects.sha256, chunk.map((o) => o.sha256))))
        .returning({ size: objects.size })
        .all();
      for (const row of deleted) removed += row.size;
    }
    if (removed > 0) addObjectBytes(tx, repositoryId, -removed);
  });
}

function addObjectBytes(tx: Writer, repositoryId: number, bytes: number): void {
  tx.update(repositories)
    .set({ objectBytes: sql`${repositories.objectBytes} + ${bytes}` })
    .where(eq(repositories.id, repositoryId))
    .run();
}
