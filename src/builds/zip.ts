import type { Readable } from 'node:stream';
import yauzl, { type Entry, type ZipFile } from 'yauzl';
import { badRequest, HttpError, tooLarge } from '../errors.js';
import { BuildTree, extractTarGz, writeError, type BuildTarget, type ExtractResult } from './extract.js';

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;

/**
 * Extracts a zip file (a GitHub Actions artifact) into `dest`: either the site's files, or exactly one
 * `.tgz`/`.tar.gz` that is then extracted as an upload would be. The same checks as for tarballs apply
 * (paths, types, entry count, sizes); the declared sizes are checked before anything is written, and yauzl
 * refuses an entry whose real size differs from the declared one.
 */
export async function extractZip(file: string, target: BuildTarget): Promise<ExtractResult> {
  const { limits } = target;
  const zip = await openZip(file);
  try {
    if (zip.entryCount > limits.maxBuildFiles) throw tooLarge(`The archive has more than ${limits.maxBuildFiles} entries.`);
    const entries = await readEntries(zip);
    const files = entries.filter((e) => !isDirectory(e));
    const only = files.length === 1 ? files[0]! : undefined;
    if (only && /\.(tgz|tar\.gz)$/i.test(only.fileName)) {
      return await extractTarGz(await openEntry(zip, only), target);
    }
    const tree = new BuildTree(target);
    for (const entry of entries) await extractEntry(zip, entry, tree);
    return tree.finish();
  } finally {
    zip.close();
  }
}

async function extractEntry(zip: ZipFile, entry: Entry, tree: BuildTree): Promise<void> {
  const type = (entry.externalFileAttributes >>> 16) & S_IFMT;
  try {
    if (isDirectory(entry)) return tree.directory(entry.fileName);
    if (type !== 0 && type !== S_IFREG) {
      const kind = type === 0o120000 ? 'symbolic link' : 'special file';
      throw badRequest(`The archive entry "${entry.fileName}" is a ${kind}; only regular files and folders are allowed.`);
    }
    if (entry.isEncrypted()) throw badRequest(`The archive entry "${entry.fileName}" is encrypted.`);
    const file = tree.file(entry.fileName, entry.uncompressedSize);
    await tree.write(await openEntry(zip, entry), file, entry.uncompressedSize, new AbortController().signal);
  } catch (err) {
    const mapped = writeError(err, entry.fileName);
    throw mapped instanceof HttpError ? mapped : zipProblem(mapped);
  }
}

const isDirectory = (entry: Entry) =>
  entry.fileName.endsWith('/') || ((entry.externalFileAttributes >>> 16) & S_IFMT) === S_IFDIR;

function openZip(file: string): Promise<ZipFile> {
  return new Promise((resolve, reject) =>
    // yauzl refuses absolute and climbing names itself (backslashes read as slashes); BuildTree checks again.
    yauzl.open(file, { lazyEntries: true, autoClose: false, validateEntrySizes: true }, (err, zip) =>
      err ? reject(zipProblem(err)) : resolve(zip),
    ),
  );
}

function readEntries(zip: ZipFile): Promise<Entry[]> {
  const entries: Entry[] = [];
  return new Promise((resolve, reject) => {
    zip.on('entry', (entry: Entry) => {
      entries.push(entry);
      zip.readEntry();
    });
    zip.once('end', () => resolve(entries));
    zip.once('error', (err: Error) => reject(zipProblem(err)));
    zip.readEntry();
  });
}

function openEntry(zip: ZipFile, entry: Entry): Promise<Readable> {
  return new Promise((resolve, reject) =>
    zip.openReadStream(entry, (err, stream) => (err ? reject(zipProblem(err)) : resolve(stream))),
  );
}

/** yauzl's and zlib's errors are about the archive sent (400); the system's (ENOSPC, EIO) are ours. */
function zipProblem(err: Error): Error {
  if (err instanceof HttpError || /^E[A-Z]+$/.test((err as NodeJS.ErrnoException).code ?? '')) return err;
  return badRequest(`The artifact is not a valid zip file (${err.message.replace(/\.$/, '')}).`);
}
