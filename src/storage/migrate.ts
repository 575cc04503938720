import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { isSha256, type ObjectStore } from '../builds/objects.js';
import { objectKey, statusOf, type S3Objects } from './s3-objects.js';

export interface MigrationCounts {
  /** Objects put into the bucket by this run, and their bytes. */
  copied: number;
  copiedBytes: number;
  /** Objects the bucket held already with the same size (an earlier, interrupted run): not sent again. */
  alreadyThere: number;
  /** Copied objects read back whose sha256 is their name. */
  verified: number;
  /** Files removed from the folder while this ran (the server's cleanup): nothing to copy. */
  gone: number;
  /** One sentence per object that could not be copied; the run's exit code is 1 when there is any. */
  failed: string[];
}

interface LocalObject {
  repositoryId: number;
  sha256: string;
  file: string;
}

/**
 * Copies a filesystem deployment's content store (`DATA_DIR/objects/<repository id>/<ab>/<sha256>`) into the
 * bucket at `objects/<repository id>/<sha256>`. Resumable: an object already in the bucket with the file's size
 * is passed over, so running it again after an interruption sends only what is missing. Each object it puts is
 * read back and hashed; one that does not hash to its name is removed from the bucket again and reported.
 */
export async function migrateStorage(local: ObjectStore, bucket: S3Objects, options: { concurrency?: number } = {}): Promise<MigrationCounts> {
  const counts: MigrationCounts = { copied: 0, copiedBytes: 0, alreadyThere: 0, verified: 0, gone: 0, failed: [] };
  const objects = localObjects(local);
  const worker = async () => {
    // Workers share one generator: each `next()` hands out the following object.
    for (let next = await objects.next(); !next.done; next = await objects.next()) {
      try {
        await migrateOne(next.value, bucket, counts);
      } catch (err) {
        counts.failed.push(`${objectKey(next.value.repositoryId, next.value.sha256)}: ${sentenceOf(err)}`);
      }
    }
  };
  await Promise.all(Array.from({ length: options.concurrency ?? 16 }, worker));
  return counts;
}

async function migrateOne(object: LocalObject, bucket: S3Objects, counts: MigrationCounts): Promise<void> {
  const { repositoryId, sha256, file } = object;
  const stat = await fs.promises.stat(file).catch(ignoreMissing);
  if (!stat) return void counts.gone++;
  const there = await bucket.head(repositoryId, sha256);
  if (there?.size === stat.size) return void counts.alreadyThere++;
  // Another size under this name is not these bytes (a put of the wrong bytes cannot happen through putOnce;
  // something else wrote it): it goes, so the right bytes can be written once.
  if (there) await bucket.delete(repositoryId, sha256);
  const body = fs.createReadStream(file);
  const opened = await new Promise<boolean>((resolve, reject) => {
    body.once('open', () => resolve(true));
    body.once('error', (err) => ((err as NodeJS.ErrnoException).code === 'ENOENT' ? resolve(false) : reject(err)));
  });
  if (!opened) return void counts.gone++;
  try {
    await bucket.putOnce(repositoryId, sha256, body, stat.size);
  } catch (err) {
    if (statusOf(err) === 400 && (err as { name?: string }).name === 'XAmzContentSHA256Mismatch') {
      throw new Error(`${file} does not hold what its name says (its sha256 differs); not copied`);
    }
    throw err;
  } finally {
    body.destroy();
  }
  counts.copied++;
  counts.copiedBytes += stat.size;
  const readBack = await hashOf(await bucket.get(repositoryId, sha256));
  if (readBack !== sha256) {
    await bucket.delete(repositoryId, sha256);
    throw new Error(`read back from the bucket, it hashes to ${readBack ?? 'nothing (gone)'}; removed from the bucket again`);
  }
  counts.verified++;
}

/** Every object file of every repository, one fan-out folder at a time. */
async function* localObjects(local: ObjectStore): AsyncGenerator<LocalObject> {
  for (const repositoryId of local.repositoryIds()) {
    const objects = local.forRepository(repositoryId);
    for (let i = 0; i < 256; i++) {
      const fan = path.join(objects.dir, i.toString(16).padStart(2, '0'));
      const names = await fs.promises.readdir(fan).catch(ignoreMissing);
      for (const name of (names ?? []).filter(isSha256).sort()) yield { repositoryId, sha256: name, file: objects.pathOf(name) };
    }
  }
}

async function hashOf(stream: Readable | undefined): Promise<string | undefined> {
  if (!stream) return undefined;
  const hash = crypto.createHash('sha256');
  for await (const chunk of stream) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

function ignoreMissing(err: unknown): undefined {
  if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
  throw err;
}

function sentenceOf(err: unknown): string {
  const status = statusOf(err);
  const message = (err as Error).message || (err as { name?: string }).name || 'error';
  return status ? `the bucket answered ${status} (${(err as { name?: string }).name ?? 'error'})` : message;
}
