import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Transform, Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import { Parser, type ReadEntry } from 'tar';
import { badRequest, HttpError, tooLarge } from '../errors.js';
import { replaceWithLink, sha256, type RepositoryObjects } from './objects.js';
import { fileWriter, LINKED, NOT_LINKED, type FileWriter } from './writer.js';
import { isPage, loadedReferences } from '../previews/changed-pages.js';

export interface ExtractLimits {
  /** Compressed bytes read from the source. */
  maxUploadBytes: number;
  /** Sum of the sizes of all regular files. */
  maxBuildBytes: number;
  /** Number of entries (files and directories). */
  maxBuildFiles: number;
  /** Bytes of new objects (files the repository's store did not hold) this build may add: the account's quota. */
  maxNewBytes?: number;
  /** The sentence of the 413 when maxNewBytes is exceeded. */
  newBytesMessage?: string;
}

/** A file of a digest upload's manifest. */
export interface ManifestFile {
  sha256: string;
  size: number;
}

/** A manifest's files as looked up and walked (a Map, or the list as stored: see upload/manifest-list.ts). */
export interface ManifestFiles extends Iterable<[string, ManifestFile]> {
  get(rel: string): ManifestFile | undefined;
}

/** Where a build is extracted: an empty staging folder whose files become links into the repository's objects. */
export interface BuildTarget {
  dir: string;
  limits: ExtractLimits;
  objects: RepositoryObjects;
  /** A digest upload's manifest (safe relative path → file): what the archive sends must match it; the rest comes from the objects. */
  manifest?: ManifestFiles;
  /**
   * The contents the manifest's answer asked for (`missing`), when known: the manifest's other files are stored,
   * so they are linked while the archive streams in rather than after its last byte.
   */
  asked?: { has(sha256: string): boolean };
  /**
   * `STORAGE=s3`: the repository's contents in the bucket (sha256 → size). A file with one of them is not new
   * (neither put nor counted against the quota), and a digest upload's files not sent are taken from it, with
   * nothing written for them locally. `objects` is then an empty folder: every file sent is extracted.
   */
  stored?: ReadonlyMap<string, number>;
}

export interface ExtractResult {
  files: number;
  /** Logical bytes: what the build holds. */
  bytes: number;
  compressedBytes: number;
  /** Bytes of the contents the repository's store did not hold (what the build costs on disk). */
  newBytes: number;
  /** Every distinct file content of the build: sha256 → size. */
  hashes: Map<string, number>;
  /** Every file of the build: its path (relative, `/`-separated) → sha256. Stored for the changed-pages list. */
  contents: Map<string, string>;
  /** The files holding those new contents, in staging: they become objects when the build is published. */
  fresh: { path: string; hash: string }[];
  /** For each HTML content whose bytes came through this upload (≤ 1 MB): sha256 → the local files it loads, as written. */
  pageReferences: Map<string, string[]>;
}

const MAX_DEPTH = 64;
const MAX_PATH_LENGTH = 1024;
const MAX_NAME_BYTES = 255;
/** Files up to this size are gathered in memory and written with one call; larger ones are streamed. */
const SMALL_FILE_BYTES = 1024 * 1024;
/**
 * Files up to this size are written synchronously: three thread-pool round trips (open, write, close) per small
 * file were most of an upload's time, and such a write holds the event loop for tens of microseconds.
 */
const SYNC_WRITE_BYTES = 64 * 1024;
/**
 * zlib's default 16 KiB output chunks cost one thread-pool round trip each; 256 KiB chunks cut the
 * reference upload from about 1.3 s to 0.9 s (bench/profile-upload.mjs).
 */
const GUNZIP_CHUNK_BYTES = 256 * 1024;
/**
 * Writes in flight before the parser is paused, and the bytes of the small files among them (held in memory until
 * written). 64 lets the writer's thread work while this one parses: the reference upload went from 1.58x–1.62x to
 * 1.28x–1.48x `tar -xzf` against 16 (bench figure 1, journaled ext4); the byte bound pauses a build of 1 MiB files at 8.
 */
const MAX_PENDING_WRITES = 64;
const MAX_PENDING_WRITE_BYTES = 8 * 1024 * 1024;
/** Large files (streamed) in flight: each holds what was parsed and not yet written (figure 2's peak RSS). */
const MAX_PENDING_LARGE_WRITES = 4;
/** Early links (`BuildTree.linkStoredEarly`) this thread makes per turn of the event loop: ~0.4 ms at a time. */
const LINKS_PER_TURN = 32;

/** An entry's bytes: tar's entries are minipass streams, zip's are Node streams. */
type EntryStream = Readable | ReadEntry;

const FILE_TYPES = new Set(['File', 'OldFile', 'ContiguousFile']);

/**
 * Streams a gzipped tar into `target.dir` (an existing, empty folder), keeping only regular files and folders.
 * Every limit is enforced while streaming, before the bytes that break it are written. Files are created
 * read-only with O_EXCL, so nothing (a duplicate entry, a name planted earlier) is ever written through.
 * On error the caller removes the folder; this function only guarantees it wrote nothing outside it (objects
 * it added are whole and checked; one that no build links is removed by the next cleanup).
 */
export async function extractTarGz(source: Readable, target: BuildTarget): Promise<ExtractResult> {
  const { limits } = target;
  // The small files are hashed and written on the writer's thread while this one parses the archive.
  const tree = new BuildTree(target, fileWriter());
  const result = tree.result;
  tree.linkStoredEarly();
  let inflatedBytes = 0;
  // Tar adds at most a few 512-byte blocks per entry (header, pax/long-name headers, padding).
  const maxInflatedBytes = limits.maxBuildBytes + (limits.maxBuildFiles + 4) * 4 * 512;
  let pendingWrites = 0;
  let pendingBytes = 0;
  let pendingLarge = 0;
  let failure: Error | undefined;
  let wakeUp: (() => void) | undefined;
  // Stops writes still waiting for their entry's bytes when the stream fails (those bytes never come).
  const abort = new AbortController();

  const fail = (err: Error) => {
    failure ??= err;
    wakeUp?.();
  };
  const settled = (heldBytes: number, large: boolean) => {
    pendingWrites--;
    pendingBytes -= heldBytes;
    if (large) pendingLarge--;
    wakeUp?.();
  };
  /** Resolves once `ready()` holds, checked again whenever a write settles or the extraction fails. */
  const waitUntil = async (ready: () => boolean) => {
    while (!ready()) await new Promise<void>((r) => (wakeUp = r));
  };
  const roomForMore = () => pendingWrites <= MAX_PENDING_WRITES && pendingBytes <= MAX_PENDING_WRITE_BYTES && pendingLarge <= MAX_PENDING_LARGE_WRITES;
  // Before returning, failed or not: the caller removes staging, and a write still running on the writer's thread
  // would put a file into a folder being removed. Every write settles: its bytes came, or the abort stopped it.
  const allWritesSettled = () => pendingWrites === 0;

  const onEntry = (entry: ReadEntry) => {
    try {
      if (failure) return entry.resume();
      if (entry.type === 'Directory') {
        tree.directory(entry.path);
        return entry.resume();
      }
      if (!FILE_TYPES.has(entry.type)) {
        throw badRequest(`The archive entry "${entry.path}" is a ${describeType(entry.type)}; only regular files and folders are allowed.`);
      }
      const file = tree.file(entry.path, entry.size);
      const large = entry.size > SMALL_FILE_BYTES;
      const heldBytes = large ? 0 : entry.size;
      pendingWrites++;
      pendingBytes += heldBytes;
      if (large) pendingLarge++;
      tree.write(entry, file, entry.size, abort.signal).then(() => settled(heldBytes, large), (err) => {
        settled(heldBytes, large);
        if (!abort.signal.aborted) fail(writeError(err, entry.path));
      });
    } catch (err) {
      entry.resume();
      fail(err instanceof HttpError ? err : writeError(err, entry.path));
    }
  };

  const parser = new Parser({ strict: true, onReadEntry: onEntry });
  parser.on('error', (err: Error) => fail(badRequest(`The archive is not a valid tar file (${tarProblem(err)}).`)));
  // Settles when the parser has seen the end of the archive, or has given up on it.
  const parserFinished = new Promise<void>((resolve) => {
    parser.on('end', resolve);
    parser.on('error', () => resolve());
  });

  const countCompressed = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      result.compressedBytes += chunk.length;
      if (result.compressedBytes > limits.maxUploadBytes) {
        return cb(tooLarge(`The upload is larger than ${limits.maxUploadBytes} bytes.`));
      }
      cb(null, chunk);
    },
  });
  const gunzip = zlib.createGunzip({ chunkSize: GUNZIP_CHUNK_BYTES });
  const intoParser = new Writable({
    write(chunk: Buffer, _enc, cb) {
      if (failure) return cb(failure);
      inflatedBytes += chunk.length;
      if (inflatedBytes > maxInflatedBytes) {
        return cb(tooLarge(buildTooLarge(limits)));
      }
      const resume = () => waitUntil(() => roomForMore() || failure !== undefined).then(() => cb(failure ?? null));
      if (parser.write(chunk)) resume();
      else parser.once('drain', resume);
    },
    final(cb) {
      parser.end();
      parserFinished
        .then(() => waitUntil(() => allWritesSettled() || failure !== undefined))
        .then(() => cb(failure ?? null));
    },
  });

  // The source is piped, not put in the pipeline: a refused upload must not destroy the request (its socket
  // is needed for the answer); the caller decides what to do with the unread rest.
  const onSourceError = (err: Error) => countCompressed.destroy(err);
  // A client that goes away (reset, FIN, a framing error) closes the request without an error on some paths:
  // without this the extraction would wait for bytes that never come, holding its claim and staging.
  const onSourceClose = () => {
    if (!source.readableEnded) countCompressed.destroy(badRequest('The upload ended before its body was complete.'));
  };
  source.once('error', onSourceError);
  source.once('close', onSourceClose);
  if (source.destroyed && !source.readableEnded) onSourceClose();
  source.pipe(countCompressed);
  try {
    await pipeline(countCompressed, gunzip, intoParser);
  } catch (err) {
    source.unpipe(countCompressed);
    abort.abort();
    if (failure) throw failure;
    if (err instanceof HttpError) throw err;
    throw streamError(err, result.compressedBytes);
  } finally {
    source.off('error', onSourceError);
    source.off('close', onSourceClose);
    if (failure) abort.abort();
    await waitUntil(allWritesSettled);
    // Also before returning: no link may land in a staging folder being removed.
    await tree.storedLinked();
    tree.release();
  }
  if (failure) throw failure;
  if (result.compressedBytes === 0) throw badRequest('The request body is empty; send a gzipped tar of the build.');
  return tree.finish();
}

/**
 * The checks every archive entry passes, whatever the archive format: a safe relative path, the entry count,
 * the total size, and no file where a folder is (or the reverse). Files are written through it, so that each
 * becomes a link into the repository's objects (and, for a digest upload, matches its manifest).
 */
export class BuildTree {
  readonly result: ExtractResult = { files: 0, bytes: 0, compressedBytes: 0, newBytes: 0, hashes: new Map(), contents: new Map(), fresh: [], pageReferences: new Map() };
  private entries = 0;
  private readonly knownDirs: Set<string>;
  private readonly dest: string;
  private readonly limits: ExtractLimits;
  /** Paths of a digest upload's manifest received in the archive. */
  private readonly received = new Set<string>();
  /** Paths of a digest upload's manifest being linked from the objects while the archive streams (`linkStoredEarly`). */
  private readonly linkingEarly = new Set<string>();
  /** Those of them that were linked, once both threads are done. */
  private readonly linkedEarly = new Set<string>();
  private earlyLinks: Promise<void> = Promise.resolve();
  /** Contents first written by this build: sha256 → its file in staging. */
  private readonly fresh = new Map<string, string>();
  /** This build's number with the writer, when small files are written on its thread. */
  private readonly writerBuild: number | undefined;

  /** `writer`: write small files on the writer's thread (when the caller writes several files at once). */
  constructor(
    private readonly target: BuildTarget,
    private readonly writer?: FileWriter,
  ) {
    this.dest = target.dir;
    this.limits = target.limits;
    this.knownDirs = new Set([this.dest]);
    this.writerBuild = writer?.newBuild();
  }

  /** Lets the writer forget this build; once no write of it is in flight. */
  release(): void {
    if (this.writerBuild !== undefined) this.writer!.release(this.writerBuild);
  }

  /**
   * A digest upload's files whose contents the manifest's answer did not ask for are stored: they are linked
   * while the archive streams in, by the writer's thread from the first and by this one from the last (a few
   * dozen per turn of the event loop; see `LinkJob`), instead of all by this thread after the archive's last
   * byte (3,000 links and 300 folders: ~50 ms). What was not linked is left to `finish`.
   */
  linkStoredEarly(): void {
    const { manifest, asked, objects } = this.target;
    if (!manifest || !asked || !this.writer || this.target.stored) return;
    const files: [string, string][] = [];
    const rels: string[] = [];
    for (const [rel, listed] of manifest) {
      if (asked.has(listed.sha256)) continue;
      files.push([listed.sha256, path.join(this.dest, rel)]);
      rels.push(rel);
      this.linkingEarly.add(rel);
    }
    if (files.length === 0) return;
    const tickets = new Int32Array(new SharedArrayBuffer(4));
    const outcome = new Uint8Array(new SharedArrayBuffer(files.length));
    const byThread = this.writer.link({ files, objectsDir: objects.dir, tickets, outcome });
    const byThisThread = (async () => {
      for (let i = files.length - 1; ; ) {
        for (let k = 0; k < LINKS_PER_TURN; k++, i--) {
          if (Atomics.add(tickets, 0, 1) >= files.length) return;
          const [hash, target] = files[i]!;
          // Received meanwhile: its write is on the writer's thread (the thread's own share was linked before it).
          if (this.received.has(rels[i]!)) continue;
          try {
            this.ensureDir(path.dirname(target));
            outcome[i] = objects.linkIfStored(hash, target) ? LINKED : NOT_LINKED;
          } catch {
            outcome[i] = NOT_LINKED; // `finish` links it again and says what went wrong
          }
        }
        await new Promise((resolve) => setImmediate(resolve));
      }
    })();
    // A thread that died leaves its files unmarked: `finish` links them.
    this.earlyLinks = Promise.all([byThread.catch(() => undefined), byThisThread]).then(() =>
      outcome.forEach((result, i) => result === LINKED && this.linkedEarly.add(rels[i]!)),
    );
  }

  /** Settles once the early links (if any) are made. */
  storedLinked(): Promise<void> {
    return this.earlyLinks;
  }

  directory(rawPath: string): void {
    const rel = this.count(rawPath);
    if (rel) this.ensureDir(path.join(this.dest, rel));
  }

  /** Where to create a regular file of `size` bytes; the caller writes it with `write`. */
  file(rawPath: string, size: number): BuildFile {
    const rel = this.count(rawPath);
    if (!rel) throw badRequest('The archive holds a file entry without a name.');
    const { manifest } = this.target;
    if (manifest) {
      const listed = manifest.get(rel);
      if (!listed) throw badRequest(`The archive holds "${rel}", which the manifest does not name.`);
      if (listed.size !== size) throw badRequest(`"${rel}" has ${size} bytes, but the manifest says ${listed.size}.`);
      if (this.received.has(rel)) throw badRequest(`The archive holds "${rel}" more than once.`);
      this.received.add(rel);
    }
    this.result.bytes += size;
    if (this.result.bytes > this.limits.maxBuildBytes) throw tooLarge(buildTooLarge(this.limits));
    this.result.files++;
    const target = path.join(this.dest, rel);
    this.ensureDir(path.dirname(target));
    return { rel, target };
  }

  /**
   * Writes one file: a link to the repository's object of its content when there is one (a small file then
   * costs one link and no write), otherwise a new file, hashed and checked against the manifest, that becomes an
   * object when the build is published (`ExtractResult.fresh`). Nothing unchecked ever becomes an object.
   */
  async write(content: EntryStream, file: BuildFile, size: number, signal: AbortSignal): Promise<void> {
    const expected = this.target.manifest?.get(file.rel)?.sha256;
    const check = (hash: string) => {
      if (expected && hash !== expected) {
        throw badRequest(`"${file.rel}" does not match the manifest: its sha256 is ${hash}, the manifest says ${expected}.`);
      }
    };
    // Sent although stored (stored since the manifest's answer, or sent anyway): it replaces the early link.
    const replace = this.linkingEarly.has(file.rel);
    let hash: string;
    // A page's loaded files are read while its bytes are here (before the writer thread takes the buffer).
    let references: string[] | undefined;
    if (size <= SMALL_FILE_BYTES && this.writer) {
      const buffer = await readSmall(content, signal);
      if (isPage(file.rel)) references = loadedReferences(buffer);
      const written = await this.writer.write(this.writerBuild!, file.target, buffer, this.target.objects.dir, replace);
      hash = written.hash;
      // Checked once written: a file that does not match fails the upload, and its staging goes with it.
      check(hash);
      if (!written.linked) this.addFresh(file.target, hash, size);
    } else if (size <= SMALL_FILE_BYTES) {
      const buffer = await readSmall(content, signal);
      if (isPage(file.rel)) references = loadedReferences(buffer);
      hash = sha256(buffer);
      check(hash);
      if (!this.linkKnown(hash, file.target)) {
        await writeBuffer(file.target, buffer);
        this.addFresh(file.target, hash, size);
      }
    } else {
      if (replace) {
        await this.earlyLinks;
        fs.rmSync(file.target, { force: true });
      }
      hash = await writeLargeFile(content, file.target, signal);
      check(hash);
      const known = this.target.objects.has(hash) ? this.target.objects.pathOf(hash) : this.fresh.get(hash);
      if (known) replaceWithLink(known, file.target);
      else this.addFresh(file.target, hash, size);
    }
    this.result.hashes.set(hash, size);
    this.result.contents.set(file.rel, hash);
    if (references) this.result.pageReferences.set(hash, references);
  }

  /**
   * Links a content the repository or this build holds already; false when neither does. `likelyStored`: the
   * manifest's answer found it stored, so the link is tried without asking first.
   */
  private linkKnown(hash: string, target: string, likelyStored = false): boolean {
    const { objects } = this.target;
    if (likelyStored ? objects.linkIfStored(hash, target) : objects.linkTo(hash, target)) return true;
    const inThisBuild = this.fresh.get(hash);
    if (!inThisBuild) return false;
    fs.linkSync(inThisBuild, target);
    return true;
  }

  private addFresh(target: string, hash: string, size: number): void {
    if (this.target.stored?.has(hash)) return; // in the bucket already
    this.fresh.set(hash, target);
    this.result.fresh.push({ path: target, hash });
    this.result.newBytes += size;
    const max = this.limits.maxNewBytes;
    if (max !== undefined && this.result.newBytes > max) {
      throw tooLarge(this.limits.newBytesMessage ?? `The build adds more than ${max} bytes to the store.`);
    }
  }

  /**
   * The build as stored. For a digest upload, every manifest file that was not sent is linked from the
   * objects; one that is not there either is a 400 (the client sends the manifest again).
   */
  finish(): ExtractResult {
    const { manifest } = this.target;
    for (const [rel, listed] of manifest ?? []) {
      if (this.received.has(rel)) continue;
      const inBucket = this.target.stored?.get(listed.sha256);
      if (this.target.stored && inBucket === undefined) {
        throw badRequest(`The manifest names "${rel}" (sha256 ${listed.sha256}), which was neither sent nor stored; send the manifest again.`);
      }
      if (inBucket === undefined && !this.linkedEarly.has(rel)) {
        const target = path.join(this.dest, rel);
        this.ensureDir(path.dirname(target));
        if (!this.linkKnown(listed.sha256, target, true)) {
          throw badRequest(`The manifest names "${rel}" (sha256 ${listed.sha256}), which was neither sent nor stored; send the manifest again.`);
        }
      }
      // The size is the stored content's, never the manifest's: a listed size is a claim, and a lie in it
      // would let a build (and the object rows the quota counts) pass for smaller than it is.
      let size = this.result.hashes.get(listed.sha256);
      if (size === undefined) {
        size = inBucket ?? fs.statSync(path.join(this.dest, rel)).size;
        this.result.hashes.set(listed.sha256, size);
      }
      this.result.files++;
      this.result.bytes += size;
      if (this.result.bytes > this.limits.maxBuildBytes) throw tooLarge(buildTooLarge(this.limits));
      this.result.contents.set(rel, listed.sha256);
    }
    if (this.result.files === 0) throw badRequest('The archive holds no files.');
    return this.result;
  }

  private count(rawPath: string): string {
    const rel = safeEntryPath(rawPath);
    if (++this.entries > this.limits.maxBuildFiles) {
      throw tooLarge(`The archive has more than ${this.limits.maxBuildFiles} entries.`);
    }
    return rel;
  }

  /** Creates `dir` and its missing parents, one plain mkdir each (a recursive mkdir costs several syscalls per call). */
  private ensureDir(dir: string): void {
    if (this.knownDirs.has(dir)) return;
    this.ensureDir(path.dirname(dir));
    try {
      fs.mkdirSync(dir, { mode: 0o755 });
    } catch (err) {
      // Made meanwhile by the writer's thread for an early link; anything else there is a clash.
      if (!(this.linkingEarly.size > 0 && (err as NodeJS.ErrnoException).code === 'EEXIST' && fs.lstatSync(dir).isDirectory())) throw err;
    }
    this.knownDirs.add(dir);
  }
}

export interface BuildFile {
  /** The path relative to the build root, normalised. */
  rel: string;
  target: string;
}

const buildTooLarge = (limits: ExtractLimits) => `The build is larger than ${limits.maxBuildBytes} bytes once uncompressed.`;

/**
 * The entry's path relative to the build root ('' for the root itself), or a 400 when it is absolute,
 * climbs out with '..', or uses characters or lengths we do not serve.
 */
export function safeEntryPath(raw: string): string {
  if (raw.includes('\0')) throw badRequest(`The archive entry "${raw.replace(/\0/g, '\\0')}" has a NUL byte in its name.`);
  if (raw.includes('\\')) throw badRequest(`The archive entry "${raw}" has a backslash in its path.`);
  if (raw.startsWith('/') || /^[A-Za-z]:/.test(raw)) {
    throw badRequest(`The archive entry "${raw}" has an absolute path.`);
  }
  const parts = raw.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw badRequest(`The archive entry "${raw}" points outside the build ("..").`);
  if (parts.length > MAX_DEPTH) throw badRequest(`The archive entry "${raw.slice(0, 80)}…" is nested deeper than ${MAX_DEPTH} folders.`);
  const rel = parts.join('/');
  if (rel.length > MAX_PATH_LENGTH || parts.some((p) => Buffer.byteLength(p) > MAX_NAME_BYTES)) {
    throw badRequest(`The archive entry "${raw.slice(0, 80)}…" has a path or name that is too long.`);
  }
  return rel;
}

async function readSmall(entry: EntryStream, signal: AbortSignal): Promise<Buffer> {
  const chunks: Buffer[] = [];
  entry.on('data', (c: Buffer) => chunks.push(c));
  await new Promise<void>((resolve, reject) => {
    const onAbort = () => reject(new Error('extraction aborted'));
    const settle = (err?: Error) => {
      signal.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve();
    };
    signal.addEventListener('abort', onAbort, { once: true });
    entry.on('end', () => settle());
    entry.on('error', (err: unknown) => settle(err as Error));
  });
  return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
}

async function writeBuffer(target: string, content: Buffer): Promise<void> {
  // 'wx': never replace or write through anything already there; 0444: builds are immutable.
  const options = { flag: 'wx', mode: 0o444 };
  if (content.length <= SYNC_WRITE_BYTES) fs.writeFileSync(target, content, options);
  else await fs.promises.writeFile(target, content, options);
}

/** Streams a large entry to a new read-only file; returns its sha256. */
async function writeLargeFile(entry: EntryStream, target: string, signal: AbortSignal): Promise<string> {
  const hash = crypto.createHash('sha256');
  const hashing = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      cb(null, chunk);
    },
  });
  const out = fs.createWriteStream(target, { flags: 'wx', mode: 0o444 });
  await pipeline(entry, hashing, out, { signal });
  return hash.digest('hex');
}

/** Maps what the filesystem says about an entry to a client error; anything unexpected passes through (500). */
export function writeError(err: unknown, entryPath: string): Error {
  const code = (err as NodeJS.ErrnoException).code;
  const clash = code === 'ENOTDIR' || code === 'EISDIR' || (code === 'EEXIST' && (err as NodeJS.ErrnoException).syscall === 'mkdir');
  if (code === 'EEXIST' && !clash) return badRequest(`The archive holds "${entryPath}" more than once.`);
  if (clash) {
    return badRequest(`The archive entry "${entryPath}" conflicts with another entry (a file and a folder of one name).`);
  }
  if (code === 'ENOSPC') return new HttpError(507, 'The server has no disk space left for this build.');
  return err as Error;
}

function streamError(err: unknown, compressedBytes: number): Error {
  const e = err as NodeJS.ErrnoException;
  if (compressedBytes === 0) return badRequest('The request body is empty; send a gzipped tar of the build.');
  if (e.code === 'Z_DATA_ERROR') return badRequest('The body is not gzip-compressed data (send a .tar.gz).');
  if (e.code === 'Z_BUF_ERROR') return badRequest('The gzip stream is truncated.');
  if (e.code === 'ERR_STREAM_PREMATURE_CLOSE' || e.code === 'ECONNRESET' || e.message === 'aborted') {
    return badRequest('The upload ended before the whole body arrived.');
  }
  return err as Error;
}

function tarProblem(err: Error): string {
  const msg = err.message.replace(/^TAR_[A-Z_]+: /, '');
  return /truncated/i.test(msg) ? 'it is truncated' : msg.toLowerCase().replace(/\.$/, '');
}

function describeType(type: string): string {
  switch (type) {
    case 'SymbolicLink':
      return 'symbolic link';
    case 'Link':
      return 'hard link';
    case 'CharacterDevice':
    case 'BlockDevice':
      return 'device';
    case 'FIFO':
      return 'FIFO';
    default:
      return `"${type}" entry`;
  }
}
