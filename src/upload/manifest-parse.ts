import { safeEntryPath, type ManifestFile } from '../builds/extract.js';
import { isSha256 } from '../builds/objects.js';
import type { Config } from '../config.js';
import { badRequest, tooLarge } from '../errors.js';

export const SHAPE = 'The manifest must be JSON {"files": {"<path>": {"sha256": "<64 hex>", "size": <bytes>}}}.';

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
