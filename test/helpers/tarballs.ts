import zlib from 'node:zlib';
import { Header, type HeaderData } from 'tar';

export interface RawEntry {
  path: string;
  type?: HeaderData['type'];
  body?: Buffer | string;
  linkpath?: string;
  /** Declared size, when it should differ from the body (truncation tests). */
  size?: number;
}

/** One tar entry, byte for byte: a 512-byte header and the body padded to whole blocks. */
export function tarEntry(entry: RawEntry): Buffer {
  const body = Buffer.from(entry.body ?? '');
  const type = entry.type ?? 'File';
  const header = new Header({
    path: entry.path,
    type,
    size: entry.size ?? (type === 'File' ? body.length : 0),
    mode: type === 'Directory' ? 0o755 : 0o644,
    uid: 1000,
    gid: 1000,
    mtime: new Date('2024-01-01T00:00:00Z'),
    linkpath: entry.linkpath,
  });
  header.encode();
  const padded = Buffer.alloc(Math.ceil(body.length / 512) * 512);
  body.copy(padded);
  return Buffer.concat([header.block!, padded]);
}

/** A tar stream (with its two end blocks) of raw entries; any entry, however hostile, can be written. */
export function rawTar(entries: RawEntry[]): Buffer {
  return Buffer.concat([...entries.map(tarEntry), Buffer.alloc(1024)]);
}

export const gzip = (data: Buffer) => zlib.gzipSync(data);

/** A gzipped tar of `files` (path → content), folders implied. */
export function tarball(files: Record<string, string | Buffer>): Buffer {
  return gzip(rawTar(Object.entries(files).map(([path, body]) => ({ path, body }))));
}

/** A small site: what a docs build looks like. */
export function siteTarball(marker = 'hello'): Buffer {
  return tarball({
    'index.html': `<!doctype html><title>${marker}</title><h1>${marker}</h1>`,
    'assets/app.js': `console.log(${JSON.stringify(marker)});`,
    '404.html': '<h1>not here</h1>',
  });
}
