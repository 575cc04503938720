import zlib from 'node:zlib';
import { and, eq, lt } from '../db/orm.js';
import type { Request } from 'express';
import { safeEntryPath, type ManifestFile } from '../builds/extract.js';
import { isSha256, sha256 } from '../builds/objects.js';
import type { Config } from '../config.js';
import type { Db } from '../db/client.js';
import { manifests } from '../db/schema.js';
import { badRequest, tooLarge } from '../errors.js';

/** The header of a digest upload: the sha256 of the manifest body it completes. */
export const MANIFEST_HEADER = 'preview-gate-manifest';
/** How long a manifest waits for its upload. */
const MANIFEST_KEPT_MS = 60 * 60_000;
/** Files of parsed manifests kept in memory, all manifests together (~300 bytes each: ~20 MB at most). */
const PARSED_FILES_KEPT = 60_000;
const SHAPE = 'The manifest must be JSON {"files": {"<path>": {"sha256": "<64 hex>", "size": <bytes>}}}.';

/** Manifests between `POST …/manifest` and the upload that names them. */
export class Manifests {
  /**
   * Recent manifests as parsed (by row id), so that their upload does not parse them again, with the contents
   * their answer asked for.
   */
  private readonly parsed = new Map<number, { files: Map<string, ManifestFile>; asked: Set<string> }>();

  constructor(private readonly db: Db) {}

  /** Keeps the manifest, as sent and as parsed, for its upload. */
  remember(repositoryId: number, pullRequestNumber: number, sha: string, body: Buffer, files: Map<string, ManifestFile>, asked: Set<string>): void {
    const digest = sha256(body);
    this.db.delete(manifests).where(lt(manifests.createdAt, new Date(Date.now() - MANIFEST_KEPT_MS))).run();
    const row = this.db
      .insert(manifests)
      .values({ repositoryId, pullRequestNumber, sha, digest, body: body.toString('utf8') })
      .onConflictDoUpdate({ target: [manifests.repositoryId, manifests.pullRequestNumber, manifests.sha, manifests.digest], set: { createdAt: new Date() } })
      .returning({ id: manifests.id })
      .get();
    this.parsed.delete(row.id);
    this.parsed.set(row.id, { files, asked });
    let kept = 0;
    for (const manifest of this.parsed.values()) kept += manifest.files.size;
    // The oldest go first; a manifest larger than the bound is parsed again from SQLite by its upload.
    for (const [id, manifest] of this.parsed) {
      if (kept <= PARSED_FILES_KEPT) break;
      this.parsed.delete(id);
      kept -= manifest.files.size;
    }
  }

  /** The manifest a digest upload names, or a 400 that says what to do. */
  find(config: Config, repositoryId: number, pullRequestNumber: number, sha: string, digest: string): { id: number; files: Map<string, ManifestFile>; asked?: Set<string> } {
    if (!isSha256(digest)) throw badRequest('The Preview-Gate-Manifest header must be the sha256 (64 lower-case hex) of the manifest sent before.');
    const row = this.db
      .select()
      .from(manifests)
      .where(and(eq(manifests.repositoryId, repositoryId), eq(manifests.pullRequestNumber, pullRequestNumber), eq(manifests.sha, sha), eq(manifests.digest, digest)))
      .get();
    if (!row || row.createdAt.getTime() < Date.now() - MANIFEST_KEPT_MS) {
      throw badRequest(`The Preview-Gate-Manifest header names no manifest sent for this commit in the last hour; POST the manifest to /create-build/${pullRequestNumber}/${sha}/manifest first.`);
    }
    const parsed = this.parsed.get(row.id);
    return parsed ? { id: row.id, ...parsed } : { id: row.id, files: parseManifest(Buffer.from(row.body), config) };
  }

  forget(id: number): void {
    this.parsed.delete(id);
    this.db.delete(manifests).where(eq(manifests.id, id)).run();
  }
}

/**
 * Reads a manifest body (gzip-compressed when `Content-Encoding: gzip` says so; a manifest is mostly hashes and
 * paths, a third of its size gzipped), refusing one over `maxBytes` before it is all read or inflated.
 */
export async function readManifestBody(req: Request, maxBytes: number): Promise<Buffer> {
  const tooBig = () => tooLarge(`The manifest is larger than ${maxBytes} bytes.`);
  if (Number(req.headers['content-length'] ?? 0) > maxBytes) throw tooBig();
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > maxBytes) throw tooBig();
    chunks.push(chunk);
  }
  if (size === 0) throw badRequest(`The manifest is empty. ${SHAPE}`);
  const body = Buffer.concat(chunks);
  const encoding = (req.headers['content-encoding'] ?? 'identity').toLowerCase();
  if (encoding === 'identity') return body;
  if (encoding !== 'gzip') throw badRequest(`The manifest's Content-Encoding "${encoding}" is not supported; send it as it is or gzip-compressed.`);
  try {
    return zlib.gunzipSync(body, { maxOutputLength: maxBytes });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') throw tooBig();
    throw badRequest('The manifest says Content-Encoding: gzip but is not valid gzip data.');
  }
}

/**
 * The manifest's files (safe relative path → hash and size), checked as an archive's entries are: the same
 * path rules, the build's file and byte limits (413), no path twice, no file where another needs a folder.
 */
export function parseManifest(body: Buffer, limits: Pick<Config, 'maxBuildFiles' | 'maxBuildBytes'>): Map<string, ManifestFile> {
  let json: unknown;
  try {
    json = JSON.parse(body.toString('utf8'));
  } catch {
    throw badRequest(`The manifest is not valid JSON. ${SHAPE}`);
  }
  const listed = (json as { files?: unknown } | null)?.files;
  if (typeof listed !== 'object' || listed === null || Array.isArray(listed)) throw badRequest(SHAPE);
  const entries = Object.entries(listed);
  if (entries.length === 0) throw badRequest('The manifest lists no files.');
  if (entries.length > limits.maxBuildFiles) throw tooLarge(`The manifest lists more than ${limits.maxBuildFiles} files.`);
  const files = new Map<string, ManifestFile>();
  const sizes = new Map<string, number>();
  let bytes = 0;
  for (const [raw, file] of entries) {
    const rel = safeEntryPath(raw);
    if (!rel) throw badRequest(`The manifest lists a file without a name ("${raw}").`);
    const { sha256: hash, size } = (file ?? {}) as { sha256?: unknown; size?: unknown };
    if (!isSha256(hash)) throw badRequest(`The manifest's sha256 of "${rel}" is not 64 lower-case hex characters.`);
    if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw badRequest(`The manifest's size of "${rel}" is not a whole number of bytes.`);
    if (files.has(rel)) throw badRequest(`The manifest lists "${rel}" more than once.`);
    const sizeBefore = sizes.get(hash);
    if (sizeBefore !== undefined && sizeBefore !== size) {
      throw badRequest(`The manifest lists sha256 ${hash} with two different sizes (${sizeBefore} and ${size} bytes).`);
    }
    sizes.set(hash, size);
    bytes += size;
    if (bytes > limits.maxBuildBytes) throw tooLarge(`The build is larger than ${limits.maxBuildBytes} bytes once uncompressed.`);
    files.set(rel, { sha256: hash, size });
  }
  for (const rel of files.keys()) {
    for (let slash = rel.indexOf('/'); slash !== -1; slash = rel.indexOf('/', slash + 1)) {
      if (files.has(rel.slice(0, slash))) {
        throw badRequest(`The manifest entry "${rel}" conflicts with another entry (a file and a folder of one name).`);
      }
    }
  }
  return files;
}
