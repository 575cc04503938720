import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { conflict } from '../errors.js';
import { ObjectStore } from './objects.js';
import type { S3Builds } from '../storage/s3-builds.js';

export type Visibility = 'public' | 'hidden';

const STAGING = '.staging';
const OBJECTS_IN_BUILDS = '.objects';
export const LATEST = '.latest';

/**
 * Whether a file in `from` can be hard-linked into `to`. Tried, not guessed from `st_dev`: two mounts of one
 * filesystem (a container's volumes) share a device number, yet a link across them fails with EXDEV.
 */
function canHardLink(from: string, to: string): boolean {
  const name = `.link-probe-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  fs.writeFileSync(path.join(from, name), '');
  try {
    fs.linkSync(path.join(from, name), path.join(to, name));
    fs.rmSync(path.join(to, name));
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EXDEV') return false;
    throw err;
  } finally {
    fs.rmSync(path.join(from, name), { force: true });
  }
}

/**
 * Sets the mode of every folder below and including `dir` (files keep theirs: written 0444). A stored build's
 * folders are 0555, so not even the server's own user can add, rename or remove a file in it by mistake; the
 * server makes them 0755 again only to move a build between PR folders or to remove it.
 */
async function setFolderModes(dir: string, mode: number): Promise<void> {
  await fs.promises.chmod(dir, mode);
  for (const entry of await fs.promises.readdir(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) await setFolderModes(path.join(dir, entry.name), mode);
  }
}

function setFolderModesSync(dir: string, mode: number): void {
  fs.chmodSync(dir, mode);
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) setFolderModesSync(path.join(dir, entry.name), mode);
  }
}

const READ_ONLY = 0o555;
const WRITABLE = 0o755;

/** Removes a folder holding read-only builds (the server's user needs write permission on each folder). */
export async function removeTree(dir: string): Promise<void> {
  try {
    await setFolderModes(dir, WRITABLE);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  await fs.promises.rm(dir, { recursive: true, force: true });
}

/** `removeTree` for the synchronous start-up repair. */
export function removeTreeSync(dir: string): void {
  try {
    setFolderModesSync(dir, WRITABLE);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  fs.rmSync(dir, { recursive: true, force: true });
}

/** The folder of one PR: `<site>/<pr>` when public, `<site>/hidden--<pr>` when hidden. */
export function prFolderName(pr: number, visibility: Visibility): string {
  return visibility === 'public' ? String(pr) : `hidden--${pr}`;
}

/**
 * The builds directory. Builds are extracted into `.staging/<random>` (same filesystem) and appear in
 * their PR folder by one atomic rename; a PR changes visibility by one rename of its folder.
 */
export class BuildStore {
  readonly stagingDir: string;
  private objectStore: ObjectStore | undefined;

  /**
   * `objectsDir`: `DATA_DIR/objects`, used when it is on the builds' filesystem (see `init`). `owner`: the
   * replica whose staging folders these are (`.staging/<owner>.<random>`): a start removes only those of
   * replicas that are not running.
   */
  constructor(
    readonly buildsDir: string,
    private readonly objectsDir = path.join(path.dirname(buildsDir), 'objects'),
    readonly owner = 'local',
  ) {
    this.stagingDir = path.join(buildsDir, STAGING);
  }

  /**
   * Creates the builds dir and the staging folder (see `removeStaging` for what a crash left there).
   * Returns a sentence when the objects cannot live in `DATA_DIR/objects` (see `objects`).
   */
  init(): string | undefined {
    fs.mkdirSync(this.buildsDir, { recursive: true });
    fs.mkdirSync(this.stagingDir, { recursive: true });
    const objects = this.objects;
    return objects.dir === this.objectsDir
      ? undefined
      : `${this.objectsDir} is not on the filesystem of ${this.buildsDir}; the content-addressed objects are kept in ${objects.dir} so that builds can hard-link them`;
  }

  /**
   * The repositories' content-addressed files: `DATA_DIR/objects`, or, when builds/ is a filesystem of its own
   * (compose gives nginx only that volume), `builds/.objects` beside the staging folder: hard links need one
   * filesystem. nginx serves neither.
   */
  get objects(): ObjectStore {
    if (!this.objectStore) {
      fs.mkdirSync(this.buildsDir, { recursive: true });
      fs.mkdirSync(this.objectsDir, { recursive: true });
      this.objectStore = new ObjectStore(canHardLink(this.buildsDir, this.objectsDir) ? this.objectsDir : path.join(this.buildsDir, OBJECTS_IN_BUILDS));
    }
    return this.objectStore;
  }

  /** The bucket holding the builds with `STORAGE=s3` (see storage/s3-build-store.ts); none on the filesystem. */
  get bucket(): S3Builds | undefined {
    return undefined;
  }

  prDir(site: string, pr: number, visibility: Visibility): string {
    return path.join(this.buildsDir, site, prFolderName(pr, visibility));
  }

  buildDir(site: string, pr: number, visibility: Visibility, sha7: string): string {
    return path.join(this.prDir(site, pr, visibility), sha7);
  }

  /**
   * Removes the staging folders of every replica but `running` (nothing in them was ever served); another
   * replica's upload in flight keeps its folder.
   */
  removeStaging(running: Set<string>): number {
    let removed = 0;
    for (const entry of fs.readdirSync(this.stagingDir)) {
      const owner = entry.includes('.') ? entry.slice(0, entry.indexOf('.')) : '';
      if (running.has(owner)) continue;
      fs.rmSync(path.join(this.stagingDir, entry), { recursive: true, force: true });
      removed++;
    }
    return removed;
  }

  /** A file in staging of this replica (an upload's body, a downloaded artifact), named `<owner>.<random><suffix>`. */
  stagingFile(suffix = ''): string {
    return path.join(this.stagingDir, `${this.owner}.${crypto.randomBytes(8).toString('hex')}${suffix}`);
  }

  async createStaging(): Promise<string> {
    const dir = path.join(this.stagingDir, `${this.owner}.${crypto.randomBytes(8).toString('hex')}`);
    await fs.promises.mkdir(dir, { recursive: true });
    return dir;
  }

  async discard(dir: string): Promise<void> {
    await fs.promises.rm(dir, { recursive: true, force: true });
  }

  /**
   * Moves a fully extracted staging folder to `<site>/<pr folder>/<sha7>` with one rename. A build that is
   * already there is never replaced (409). A PR folder this call created is removed again on failure.
   */
  async publish(staging: string, site: string, pr: number, visibility: Visibility, sha7: string): Promise<string> {
    const prDir = this.prDir(site, pr, visibility);
    const createdPrDir = !fs.existsSync(prDir);
    await fs.promises.mkdir(prDir, { recursive: true });
    const target = path.join(prDir, sha7);
    try {
      if (fs.existsSync(target)) throw conflict(`A build of ${sha7} already exists for pull request #${pr}.`);
      await fs.promises.rename(staging, target);
      await setFolderModes(target, READ_ONLY);
      await this.pointLatestAt(prDir, sha7);
      return target;
    } catch (err) {
      if (createdPrDir) await fs.promises.rmdir(prDir).catch(() => undefined);
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOTEMPTY' || code === 'EEXIST') {
        throw conflict(`A build of ${sha7} already exists for pull request #${pr}.`);
      }
      throw err;
    }
  }

  /**
   * `<pr folder>/.latest` → `<sha7>`: what nginx serves as pr<N>--<site>. Replaced atomically (a new link
   * renamed over the old one); relative, so it survives the PR folder's renames between public and hidden.
   */
  private async pointLatestAt(prDir: string, sha7: string): Promise<void> {
    const temp = path.join(prDir, `.latest-${crypto.randomBytes(4).toString('hex')}`);
    await fs.promises.symlink(sha7, temp);
    await fs.promises.rename(temp, path.join(prDir, LATEST));
  }

  /** Renames the PR folder between public and hidden; nothing to do when the PR has no builds yet. */
  async setVisibility(site: string, pr: number, from: Visibility, to: Visibility): Promise<boolean> {
    if (from === to) return false;
    try {
      await fs.promises.rename(this.prDir(site, pr, from), this.prDir(site, pr, to));
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  }

  /**
   * A crash between a rename and its database row can leave the PR in the folder the row does not name, or
   * in both. Brings every build into the folder of `recorded` (the row's visibility), so the next decision
   * moves one folder as usual and never answers with an error.
   */
  async repairBothFolders(site: string, pr: number, recorded: Visibility): Promise<void> {
    const here = this.prDir(site, pr, recorded);
    const other = this.prDir(site, pr, recorded === 'public' ? 'hidden' : 'public');
    if (!fs.existsSync(other)) return;
    if (!fs.existsSync(here)) {
      await fs.promises.rename(other, here);
      return;
    }
    const otherLatest = await fs.promises.readlink(path.join(other, LATEST)).catch(() => undefined);
    for (const entry of await fs.promises.readdir(other)) {
      if (!/^[0-9a-f]{7}$/.test(entry) || fs.existsSync(path.join(here, entry))) continue;
      // A folder moved to another parent must be writable (its `..` entry changes).
      await fs.promises.chmod(path.join(other, entry), WRITABLE);
      await fs.promises.rename(path.join(other, entry), path.join(here, entry));
      await fs.promises.chmod(path.join(here, entry), READ_ONLY);
    }
    await removeTree(other);
    const hereLatest = await fs.promises.readlink(path.join(here, LATEST)).catch(() => undefined);
    if (!hereLatest && otherLatest && fs.existsSync(path.join(here, otherLatest))) await this.pointLatestAt(here, otherLatest);
  }

  /** Moves every build of a repository to another site: one rename (old URLs stop at once). */
  async moveSite(from: string, to: string): Promise<void> {
    const target = path.join(this.buildsDir, to);
    if (fs.existsSync(target)) throw conflict(`The builds folder of site '${to}' already exists.`);
    try {
      await fs.promises.rename(path.join(this.buildsDir, from), target);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err; // no builds yet: nothing to move
    }
  }

  /** Every `<site>/<pr folder>/<sha7>` folder on disk. */
  buildDirs(): string[] {
    const dirs: string[] = [];
    const list = (dir: string) => (fs.existsSync(dir) ? fs.readdirSync(dir, { withFileTypes: true }) : []);
    for (const site of list(this.buildsDir)) {
      if (!site.isDirectory() || site.name.startsWith('.')) continue;
      for (const pr of list(path.join(this.buildsDir, site.name))) {
        if (!pr.isDirectory() || !/^(hidden--)?[1-9][0-9]*$/.test(pr.name)) continue;
        for (const build of list(path.join(this.buildsDir, site.name, pr.name))) {
          if (build.isDirectory() && /^[0-9a-f]{7}$/.test(build.name)) dirs.push(path.join(this.buildsDir, site.name, pr.name, build.name));
        }
      }
    }
    return dirs;
  }

  /** Whether any build of `site` is stored (its folder exists). */
  hasSiteFolder(site: string): boolean {
    return fs.existsSync(path.join(this.buildsDir, site));
  }

  hasPrFolder(site: string, pr: number): boolean {
    return fs.existsSync(this.prDir(site, pr, 'public')) || fs.existsSync(this.prDir(site, pr, 'hidden'));
  }

  /** Removes every build of a PR, wherever it lives. */
  async removePr(site: string, pr: number): Promise<void> {
    for (const v of ['public', 'hidden'] as const) await removeTree(this.prDir(site, pr, v));
  }

  /** Usable for /health: the builds dir exists and a file can be created in staging. */
  async check(): Promise<void> {
    const probe = path.join(this.stagingDir, `${this.owner}.health-${Date.now()}`);
    await fs.promises.writeFile(probe, '');
    await fs.promises.unlink(probe);
  }
}
