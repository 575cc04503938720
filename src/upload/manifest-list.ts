import type { ManifestFile } from '../builds/extract.js';

/**
 * A manifest's parsed list in the form the manifest thread stores it (a file in DATA_DIR/manifests): binary,
 * its paths sorted, so that the main thread looks a path up (binary search) and walks the files without
 * parsing anything first. Parsing 15 MiB of JSON there stalled it ~250 ms per upload naming the manifest.
 *
 * Layout (little-endian): count u32 · path offsets u32 × (count + 1) · sha256 32 bytes × count · size f64 ×
 * count · whether the manifest's answer asked for the content ("missing") u8 × count · the paths (UTF-8).
 */
export class ManifestList {
  private readonly count: number;
  private readonly offsets: number;
  private readonly hashes: number;
  private readonly sizes: number;
  private readonly flags: number;
  private readonly paths: number;

  private constructor(private readonly data: Buffer) {
    this.count = data.readUInt32LE(0);
    this.offsets = 4;
    this.hashes = this.offsets + 4 * (this.count + 1);
    this.sizes = this.hashes + 32 * this.count;
    this.flags = this.sizes + 8 * this.count;
    this.paths = this.flags + this.count;
    if (this.paths + this.pathEnd(this.count - 1) !== data.length) throw new Error('Not a manifest list.');
  }

  /** A list as stored; throws when `data` is not one (a truncated file). */
  static from(data: Buffer): ManifestList {
    if (data.length < 8) throw new Error('Not a manifest list.');
    return new ManifestList(data);
  }

  /** The stored form of `files` and of the contents the answer asked for. */
  static encode(files: Map<string, ManifestFile>, missing: string[]): Buffer {
    const entries = [...files].map(([rel, file]) => ({ rel: Buffer.from(rel, 'utf8'), file }));
    entries.sort((a, b) => Buffer.compare(a.rel, b.rel));
    const asked = new Set(missing);
    const pathBytes = entries.reduce((sum, e) => sum + e.rel.length, 0);
    const head = Buffer.alloc(4 + 4 * (entries.length + 1) + 41 * entries.length);
    let at = head.writeUInt32LE(entries.length, 0);
    let offset = 0;
    for (const e of entries) {
      at = head.writeUInt32LE(offset, at);
      offset += e.rel.length;
    }
    at = head.writeUInt32LE(offset, at);
    for (const e of entries) at += head.write(e.file.sha256, at, 'hex');
    for (const e of entries) at = head.writeDoubleLE(e.file.size, at);
    for (const e of entries) at = head.writeUInt8(asked.has(e.file.sha256) ? 1 : 0, at);
    return Buffer.concat([head, ...entries.map((e) => e.rel)], head.length + pathBytes);
  }

  get size(): number {
    return this.count;
  }

  get(rel: string): ManifestFile | undefined {
    const key = Buffer.from(rel, 'utf8');
    let [lo, hi] = [0, this.count - 1];
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const order = key.compare(this.data, this.paths + this.pathStart(mid), this.paths + this.pathEnd(mid));
      if (order === 0) return this.file(mid);
      if (order < 0) hi = mid - 1;
      else lo = mid + 1;
    }
    return undefined;
  }

  *[Symbol.iterator](): IterableIterator<[string, ManifestFile]> {
    for (let i = 0; i < this.count; i++) {
      this.walked = i;
      yield [this.data.toString('utf8', this.paths + this.pathStart(i), this.paths + this.pathEnd(i)), this.file(i)];
    }
  }

  /**
   * The contents the manifest's answer asked for, asked about while walking the list (BuildTree.linkStoredEarly):
   * the file just walked is answered from its flag; any other by a scan (not asked so far).
   */
  readonly asked = {
    has: (hash: string): boolean => {
      const i = this.walked >= 0 && this.hashAt(this.walked) === hash ? this.walked : this.indexOfHash(hash);
      return i >= 0 && this.data[this.flags + i] === 1;
    },
  };
  /** The index of the file the iterator yielded last. */
  private walked = -1;

  private file(i: number): ManifestFile {
    return { sha256: this.hashAt(i), size: this.data.readDoubleLE(this.sizes + 8 * i) };
  }

  private hashAt(i: number): string {
    return this.data.toString('hex', this.hashes + 32 * i, this.hashes + 32 * i + 32);
  }

  private indexOfHash(hash: string): number {
    const key = Buffer.from(hash, 'hex');
    for (let i = 0; i < this.count; i++) if (key.compare(this.data, this.hashes + 32 * i, this.hashes + 32 * i + 32) === 0) return i;
    return -1;
  }

  private pathStart(i: number): number {
    return this.data.readUInt32LE(this.offsets + 4 * i);
  }

  private pathEnd(i: number): number {
    return this.data.readUInt32LE(this.offsets + 4 * (i + 1));
  }
}
