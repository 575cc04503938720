import fs from 'node:fs';
import path from 'node:path';
import { and, desc, eq, inArray, lt } from '../db/orm.js';
import type { Request } from 'express';
import { isSha256 } from '../builds/objects.js';
import type { Database } from '../db/database.js';
import { first } from '../db/query.js';
import { manifests } from '../db/tables.js';
import { badRequest, tooLarge } from '../errors.js';
import { ManifestList } from './manifest-list.js';
import { SHAPE } from './manifest-parse.js';

/** The header of a digest upload: the sha256 of the manifest body it completes. */
export const MANIFEST_HEADER = 'preview-gate-manifest';
/** Where the manifest thread writes the parsed lists (files named by the rows of `manifests`). */
export const manifestListsDir = (dataDir: string): string => path.join(dataDir, 'manifests');
/** The name of a list file the manifest thread writes (and, one release back, of a JSON list). */
const LIST_FILE = /^[0-9a-f-]{36}\.(list|json)$/;
/** How long a manifest waits for its upload. */
const MANIFEST_KEPT_MS = 60 * 60_000;
/**
 * Manifests a repository can have waiting for their upload: the newest are kept. A CI run sends one and
 * uploads at once; this bounds what an upload token can make the database keep (each at most the parsed list
 * of MAX_BUILD_FILES files).
 */
export const MANIFESTS_KEPT_PER_REPOSITORY = 8;

/**
 * Manifests between `POST …/manifest` and the upload that names them. A row holds the manifest's digest and the
 * name of the file (in `listsDir`, written by the manifest thread) of its parsed list; never the body as sent.
 */
export class Manifests {
  constructor(
    private readonly db: Database,
    readonly listsDir: string,
  ) {}

  /**
   * Keeps the manifest (its digest and list file) for its upload, dropping expired ones and the repository's
   * oldest beyond MANIFESTS_KEPT_PER_REPOSITORY, with their files.
   */
  async remember(repositoryId: number, pullRequestNumber: number, sha: string, digest: string, list: string): Promise<void> {
    const gone = await this.db.transaction(async (tx) => {
      // One repository's manifests are kept one at a time: on PostgreSQL two of the same manifest would each find
      // no row to replace and the second insert would break the unique index; the "newest 8" count needs it too.
      await this.db.lockName(tx, `manifests:${repositoryId}`, 'exclusive');
      const expired = await tx.delete(manifests).where(lt(manifests.createdAt, new Date(Date.now() - MANIFEST_KEPT_MS))).returning({ body: manifests.body });
      const same = and(eq(manifests.repositoryId, repositoryId), eq(manifests.pullRequestNumber, pullRequestNumber), eq(manifests.sha, sha), eq(manifests.digest, digest));
      const replaced = await tx.delete(manifests).where(same).returning({ body: manifests.body });
      await tx.insert(manifests).values({ repositoryId, pullRequestNumber, sha, digest, body: list });
      const kept = await tx
        .select({ id: manifests.id })
        .from(manifests)
        .where(eq(manifests.repositoryId, repositoryId))
        .orderBy(desc(manifests.createdAt), desc(manifests.id));
      const beyond = kept.slice(MANIFESTS_KEPT_PER_REPOSITORY).map((r) => r.id);
      const dropped = beyond.length ? await tx.delete(manifests).where(inArray(manifests.id, beyond)).returning({ body: manifests.body }) : [];
      return [...expired, ...replaced, ...dropped];
    });
    // The files after the commit: a rolled back transaction leaves every row's file in place.
    for (const row of gone) this.removeList(row.body);
  }

  /** The manifest a digest upload names, or a 400 that says what to do. */
  async find(repositoryId: number, pullRequestNumber: number, sha: string, digest: string): Promise<{ id: number; files: ManifestList; asked: ManifestList['asked'] }> {
    if (!isSha256(digest)) throw badRequest('The Preview-Gate-Manifest header must be the sha256 (64 lower-case hex) of the manifest sent before.');
    const row = await first(
      this.db.orm
        .select()
        .from(manifests)
        .where(and(eq(manifests.repositoryId, repositoryId), eq(manifests.pullRequestNumber, pullRequestNumber), eq(manifests.sha, sha), eq(manifests.digest, digest)))
        .limit(1),
    );
    const notSent = () =>
      badRequest(`The Preview-Gate-Manifest header names no manifest sent for this commit in the last hour; POST the manifest to /create-build/${pullRequestNumber}/${sha}/manifest first.`);
    if (!row || row.createdAt.getTime() < Date.now() - MANIFEST_KEPT_MS) throw notSent();
    const name = this.listPath(row.body);
    let files: ManifestList;
    try {
      // Read off the main thread (libuv) and used as stored: nothing on the main thread grows with the manifest.
      files = ManifestList.from(await fs.promises.readFile(name));
    } catch {
      throw notSent(); // dropped meanwhile (a newer manifest of the repository)
    }
    return { id: row.id, files, asked: files.asked };
  }

  /**
   * Removes the lists nothing uses: the rows of expired manifests with their files, and files without a row (the
   * thread wrote the list, the process stopped before its row was inserted). A file is a stray only once older than a
   * manifest lives: a younger one may be another replica's, its row a moment away.
   */
  async removeStrays(now = new Date()): Promise<number> {
    const expired = await this.db.orm.delete(manifests).where(lt(manifests.createdAt, new Date(now.getTime() - MANIFEST_KEPT_MS))).returning({ body: manifests.body });
    const named = new Set((await this.db.orm.select({ body: manifests.body }).from(manifests)).map((r) => r.body));
    let names: string[];
    try {
      names = await fs.promises.readdir(this.listsDir);
    } catch {
      names = []; // no manifest was ever read here
    }
    const strays: string[] = [];
    for (const name of names) {
      if (!LIST_FILE.test(name) || named.has(name)) continue;
      const stat = await fs.promises.stat(path.join(this.listsDir, name)).catch(() => undefined);
      if (stat && stat.mtimeMs < now.getTime() - MANIFEST_KEPT_MS) strays.push(name);
    }
    for (const name of [...expired.map((r) => r.body), ...strays]) await this.removeListNow(name);
    return expired.length + strays.length;
  }

  async forget(id: number): Promise<void> {
    for (const gone of await this.db.orm.delete(manifests).where(eq(manifests.id, id)).returning({ body: manifests.body })) this.removeList(gone.body);
  }

  /**
   * A list file's path; a row's body that is not such a name has none: a body as sent (before lists were
   * files) or a JSON list (before they were binary; a manifest waits at most an hour).
   */
  private listPath(name: string): string {
    if (!/^[0-9a-f-]{36}\.list$/.test(name)) throw badRequest('This manifest was kept by an older version of the server; send the manifest again.'); // the CLI does, once
    return path.join(this.listsDir, name);
  }

  private removeList(name: string): void {
    this.removeListNow(name).catch(() => undefined);
  }

  private async removeListNow(name: string): Promise<void> {
    if (LIST_FILE.test(name)) await fs.promises.rm(path.join(this.listsDir, name), { force: true });
  }
}

/**
 * Reads a manifest body as sent (gzip-compressed when `Content-Encoding: gzip` says so; inflated by the
 * manifest thread), refusing one over `maxBytes` before it is all read.
 */
export async function readManifestBody(req: Request, maxBytes: number): Promise<{ body: Buffer; gzip: boolean }> {
  const tooBig = () => tooLarge(`The manifest is larger than ${maxBytes} bytes.`);
  if (Number(req.headers['content-length'] ?? 0) > maxBytes) throw tooBig();
  const encoding = (req.headers['content-encoding'] ?? 'identity').toLowerCase();
  if (encoding !== 'identity' && encoding !== 'gzip') throw badRequest(`The manifest's Content-Encoding "${encoding}" is not supported; send it as it is or gzip-compressed.`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > maxBytes) throw tooBig();
    chunks.push(chunk);
  }
  if (size === 0) throw badRequest(`The manifest is empty. ${SHAPE}`);
  return { body: Buffer.concat(chunks), gzip: encoding === 'gzip' };
}
