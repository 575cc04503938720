import fs from 'node:fs';
import type { Logger } from 'pino';
import type { Database, Orm } from '../db/database.js';
import { and, eq, inArray, lt, sql } from '../db/orm.js';
import { buildFiles, objects, repositories } from '../db/tables.js';
import { HttpError } from '../errors.js';
import { contentTypeOf } from './content-types.js';
import { S3Objects, statusOf } from './s3-objects.js';

/** Puts (and deletes) in flight at once: enough to hide the engine's latency, few enough not to swamp it. */
const CONCURRENCY = 8;
/** Rows per statement: SQLite limits the variables of one statement. */
const CHUNK = 200;
/** Objects the garbage collection removes per transaction (the repository's uploads wait for each one to commit). */
const GC_BATCH = 100;

/**
 * The lock between an upload's commit (shared) and the garbage collection of the repository's objects
 * (exclusive): the collection deletes only while no upload commits, and an upload commits only objects whose row
 * it finds again (refreshed, so the next collection leaves them alone) or that it put itself.
 */
const objectsLock = (repositoryId: number) => `objects:${repositoryId}`;

/** What an upload put into the bucket before its build was recorded. */
export interface PutReport {
  /** Objects written by this upload. */
  stored: number;
  /** Contents this upload sent that the bucket held already without a row (a failed upload's put): checked again at commit. */
  foundWithoutRow: string[];
}

/** Runs `work` on every item, at most `limit` at once; the first failure is thrown once the others settled. */
export async function eachLimited<T>(items: readonly T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { err: unknown } | undefined;
  const worker = async () => {
    while (!failure && next < items.length) {
      const item = items[next++]!;
      try {
        await work(item);
      } catch (err) {
        failure ??= { err };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure) throw failure.err;
}

/**
 * Builds kept in an S3 bucket (`STORAGE=s3`): objects `objects/<repository id>/<sha256>` written once, a build
 * is its `build_files` rows. Nothing here renames: publishing is a transaction, a flip or a site move is the
 * PR's or repository's row.
 */
export class S3Builds {
  constructor(
    readonly bucket: S3Objects,
    private readonly db: Database,
    private readonly log: Logger,
    private readonly graceMs: number,
  ) {}

  /** The repository's recorded objects (sha256 → size): what an upload need not send, and a manifest need not ask for. */
  async storedSizes(repositoryId: number): Promise<Map<string, number>> {
    const rows = await this.db.orm.select({ sha256: objects.sha256, size: objects.size }).from(objects).where(eq(objects.repositoryId, repositoryId));
    return new Map(rows.map((row) => [row.sha256, row.size]));
  }

  /**
   * Puts the build's new contents (their first file in staging), `CONCURRENCY` at a time. Any failure fails the
   * upload (503): what was put stays unreferenced and the garbage collection removes it after the grace period.
   */
  async putFresh(repositoryId: number, fresh: { path: string; hash: string }[], sizes: ReadonlyMap<string, number>): Promise<PutReport> {
    const report: PutReport = { stored: 0, foundWithoutRow: [] };
    try {
      await eachLimited(fresh, CONCURRENCY, async ({ path, hash }) => {
        const outcome = await this.bucket.putOnce(repositoryId, hash, fs.createReadStream(path), sizes.get(hash)!);
        if (outcome === 'stored') report.stored++;
        else report.foundWithoutRow.push(hash);
      });
    } catch (err) {
      this.log.error({ repositoryId, status: statusOf(err), err: (err as Error).message }, "the bucket refused a build's file");
      throw new HttpError(503, 'The build could not be stored in the bucket; nothing was published. Try the upload again.');
    }
    return report;
  }

  /**
   * Inside the transaction that makes the build ready: its files as rows, its contents as the repository's
   * objects (new bytes counted), each object it relies on refreshed, so no garbage collection takes it from now.
   * An object the collection removed since the upload began fails the upload (503: sending it again stores it).
   */
  async record(
    tx: Orm,
    buildId: number,
    repositoryId: number,
    build: { contents: ReadonlyMap<string, string>; hashes: ReadonlyMap<string, number> },
    put: { fresh: ReadonlySet<string>; foundWithoutRow: readonly string[] },
  ): Promise<void> {
    await this.db.lockName(tx, objectsLock(repositoryId), 'shared');
    const reliedOn = [...build.hashes.keys()].filter((hash) => !put.fresh.has(hash));
    const refreshed = await this.refresh(tx, repositoryId, reliedOn);
    const gone = reliedOn.filter((hash) => !refreshed.has(hash));
    // Put by a failed upload and found there by this one: the collection may have removed it meanwhile.
    for (const hash of put.foundWithoutRow) if (!(await this.bucket.head(repositoryId, hash))) gone.push(hash);
    if (gone.length) {
      this.log.warn({ repositoryId, gone: gone.length }, 'an upload relied on objects removed by the garbage collection meanwhile');
      throw new HttpError(503, 'Files this build shares with earlier builds were removed from the bucket meanwhile; send the upload again.');
    }
    let added = 0;
    const rows = [...put.fresh].map((sha256) => ({ repositoryId, sha256, size: build.hashes.get(sha256)! }));
    for (let i = 0; i < rows.length; i += CHUNK) {
      const inserted = await tx.insert(objects).values(rows.slice(i, i + CHUNK)).onConflictDoNothing().returning({ size: objects.size });
      for (const row of inserted) added += row.size;
    }
    if (added) await tx.update(repositories).set({ objectBytes: sql`${repositories.objectBytes} + ${added}` }).where(eq(repositories.id, repositoryId));
    const files = [...build.contents].map(([path, sha256]) => ({ buildId, path, repositoryId, sha256, size: build.hashes.get(sha256)!, contentType: contentTypeOf(path) }));
    for (let i = 0; i < files.length; i += CHUNK) await tx.insert(buildFiles).values(files.slice(i, i + CHUNK));
  }

  /** Sets `created_at` of the objects to now; returns the hashes that still have a row. */
  private async refresh(tx: Orm, repositoryId: number, hashes: string[]): Promise<Set<string>> {
    const found = new Set<string>();
    for (let i = 0; i < hashes.length; i += CHUNK) {
      const rows = await tx
        .update(objects)
        .set({ createdAt: new Date() })
        .where(and(eq(objects.repositoryId, repositoryId), inArray(objects.sha256, hashes.slice(i, i + CHUNK))))
        .returning({ sha256: objects.sha256 });
      for (const row of rows) found.add(row.sha256);
    }
    return found;
  }

  /**
   * Removes what no build references and nothing refreshed within the grace period: first the objects with a
   * row (object, then row, under the repository's exclusive lock), then the bucket's objects without a row
   * (put by uploads that failed, or left by a collection stopped between the two steps).
   */
  async collectGarbage(now = new Date()): Promise<{ objects: number; bytes: number }> {
    const cutoff = new Date(now.getTime() - this.graceMs);
    let count = 0;
    let bytes = 0;
    const repositoryIds = (await this.db.orm.selectDistinct({ id: objects.repositoryId }).from(objects)).map((row) => row.id);
    for (const repositoryId of repositoryIds) {
      for (;;) {
        const batch = await this.removeUnreferencedRows(repositoryId, cutoff);
        count += batch.objects;
        bytes += batch.bytes;
        if (!batch.more) break;
      }
    }
    const orphans = await this.removeObjectsWithoutRow(cutoff);
    count += orphans.objects;
    bytes += orphans.bytes;
    if (count) this.log.info({ objects: count, bytes }, 'removed objects that no build references any more from the bucket');
    return { objects: count, bytes };
  }

  private unreferenced(repositoryId: number) {
    return sql`not exists (select 1 from ${buildFiles} where ${buildFiles.repositoryId} = ${repositoryId} and ${buildFiles.sha256} = ${objects.sha256})`;
  }

  private removeUnreferencedRows(repositoryId: number, cutoff: Date): Promise<{ objects: number; bytes: number; more: boolean }> {
    return this.db.transaction(async (tx) => {
      await this.db.lockName(tx, objectsLock(repositoryId), 'exclusive');
      const candidates = await tx
        .select({ sha256: objects.sha256, size: objects.size })
        .from(objects)
        .where(and(eq(objects.repositoryId, repositoryId), lt(objects.createdAt, cutoff), this.unreferenced(repositoryId)))
        .limit(GC_BATCH);
      const deleted: string[] = [];
      // A delete that fails keeps its row (retried by the next collection): never a row without its object.
      await eachLimited(candidates, CONCURRENCY, async ({ sha256 }) => {
        try {
          await this.bucket.delete(repositoryId, sha256);
          deleted.push(sha256);
        } catch (err) {
          this.log.warn({ repositoryId, sha256, err: (err as Error).message }, 'the garbage collection could not delete an object; it is tried again next time');
        }
      });
      let removed = 0;
      for (let i = 0; i < deleted.length; i += CHUNK) {
        const rows = await tx
          .delete(objects)
          .where(and(eq(objects.repositoryId, repositoryId), inArray(objects.sha256, deleted.slice(i, i + CHUNK))))
          .returning({ size: objects.size });
        for (const row of rows) removed += row.size;
      }
      if (removed) await tx.update(repositories).set({ objectBytes: sql`${repositories.objectBytes} - ${removed}` }).where(eq(repositories.id, repositoryId));
      // Another batch only after a full one that went through (failed deletes would be picked again and again).
      return { objects: deleted.length, bytes: removed, more: candidates.length === GC_BATCH && deleted.length === candidates.length };
    });
  }

  private async removeObjectsWithoutRow(cutoff: Date): Promise<{ objects: number; bytes: number }> {
    let count = 0;
    let bytes = 0;
    for await (const object of this.bucket.list()) {
      if (!object.lastModified || object.lastModified >= cutoff) continue;
      const removed = await this.db.transaction(async (tx) => {
        await this.db.lockName(tx, objectsLock(object.repositoryId), 'exclusive');
        const row = await tx
          .select({ sha256: objects.sha256 })
          .from(objects)
          .where(and(eq(objects.repositoryId, object.repositoryId), eq(objects.sha256, object.sha256)))
          .limit(1);
        if (row.length) return false;
        await this.bucket.delete(object.repositoryId, object.sha256);
        return true;
      });
      if (removed) {
        count++;
        bytes += object.size;
      }
    }
    return { objects: count, bytes };
  }

  /** For /health: the bucket answers (HeadBucket) with these credentials. */
  check(): Promise<void> {
    return this.bucket.check();
  }
}
