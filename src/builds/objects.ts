import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

export const sha256 = (content: Buffer) => crypto.createHash('sha256').update(content).digest('hex');
export const isSha256 = (value: unknown): value is string => typeof value === 'string' && /^[0-9a-f]{64}$/.test(value);

/**
 * One repository's content-addressed files: `<objects>/<repository id>/<ab>/<sha256>`, read-only. A build's
 * file is a hard link to its object, so identical files of any two builds are one inode. Per repository, so
 * a manifest's answer ("missing") never tells one repository what another one holds.
 *
 * An object no build links any more has a link count of 1: that is how unreferenced objects are found,
 * without a reference count to keep right.
 */
export class RepositoryObjects {
  private readonly knownDirs = new Set<string>();

  constructor(readonly dir: string) {}

  pathOf(hash: string): string {
    return path.join(this.dir, hash.slice(0, 2), hash);
  }

  has(hash: string): boolean {
    return fs.existsSync(this.pathOf(hash));
  }

  /**
   * Makes the build's new files (written and checked during extraction) objects, just before the build is
   * published: a failed or refused upload never adds an object. A file whose object appeared meanwhile (another
   * upload of the same content) is replaced by a link to it.
   */
  adoptAll(files: Iterable<{ path: string; hash: string }>): void {
    for (const file of files) {
      const object = this.pathOf(file.hash);
      this.ensureDir(path.dirname(object));
      if (!adoptAsObject(file.path, object)) whileWritable(path.dirname(file.path), () => replaceWithLink(object, file.path));
    }
  }

  /**
   * Links the object for `hash` at `target`; false when there is no such object. Asked with a `stat` first: a
   * failed link throws, and an exception per new file cost a first upload more than the extra call.
   */
  linkTo(hash: string, target: string): boolean {
    const object = this.pathOf(hash);
    return fs.existsSync(object) && linkIfThere(object, target);
  }

  /** Links the object for `hash` at `target` without asking first: for contents a manifest's answer found stored. */
  linkIfStored(hash: string, target: string): boolean {
    return linkIfThere(this.pathOf(hash), target);
  }

  /**
   * Removes the objects no build links any more, one sub-folder ("ab") at a time, yielding to the event loop
   * before each, so a large store does not stall uploads: per sub-folder, the objects it removed, their bytes,
   * and the ones it still holds. Every one of the 256 sub-folders is visited, there or not.
   */
  async *removeUnreferenced(): AsyncGenerator<{ prefix: string; removed: string[]; bytes: number; kept: Set<string> }> {
    for (let i = 0; i < 256; i++) {
      await new Promise((resolve) => setImmediate(resolve));
      const prefix = i.toString(16).padStart(2, '0');
      const fanDir = path.join(this.dir, prefix);
      const removed: string[] = [];
      const kept = new Set<string>();
      let bytes = 0;
      for (const name of readdir(fanDir)) {
        const file = path.join(fanDir, name);
        const stat = fs.lstatSync(file, { throwIfNoEntry: false });
        if (!stat?.isFile() || stat.nlink > 1) {
          if (stat) kept.add(name);
          continue;
        }
        fs.rmSync(file, { force: true });
        if (isSha256(name)) removed.push(name);
        bytes += stat.size;
      }
      yield { prefix, removed, bytes, kept };
    }
  }

  private ensureDir(dir: string): void {
    if (this.knownDirs.has(dir)) return;
    fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
    this.knownDirs.add(dir);
  }
}

/** The object stores of all repositories, in one folder on the builds' filesystem (hard links need that). */
export class ObjectStore {
  private readonly repositories = new Map<number, RepositoryObjects>();

  constructor(readonly dir: string) {}

  forRepository(repositoryId: number): RepositoryObjects {
    let objects = this.repositories.get(repositoryId);
    if (!objects) {
      objects = new RepositoryObjects(path.join(this.dir, String(repositoryId)));
      this.repositories.set(repositoryId, objects);
    }
    return objects;
  }

  /** Repository ids that have an objects folder. */
  repositoryIds(): number[] {
    return readdir(this.dir)
      .filter((name) => /^[1-9][0-9]*$/.test(name))
      .map(Number);
  }
}

/** Links `existing` at `target`; false when `existing` is not there (any other failure throws). */
function linkIfThere(existing: string, target: string): boolean {
  try {
    fs.linkSync(existing, target);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' && !fs.existsSync(existing)) return false;
    throw err;
  }
}

/** Replaces `file` by a link to `existing` (renamed over it: `file` never goes missing); kept as it is when `existing` went away. */
export function replaceWithLink(existing: string, file: string): void {
  const temp = `${file}.link-${crypto.randomBytes(4).toString('hex')}`;
  if (linkIfThere(existing, temp)) fs.renameSync(temp, file);
}

/** A stored build's folders are read-only (store.ts): `dir` is opened to its owner for the moment of `change`. */
function whileWritable(dir: string, change: () => void): void {
  const mode = fs.statSync(dir).mode & 0o777;
  if (mode & 0o200) return change();
  fs.chmodSync(dir, mode | 0o200);
  try {
    change();
  } finally {
    fs.chmodSync(dir, mode);
  }
}

/** Links `file` as `object`; false when the object exists already. */
function adoptAsObject(file: string, object: string): boolean {
  try {
    fs.linkSync(file, object);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
}

function readdir(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}
