/**
 * What no hosted preview shows: the pages a commit changed. Each stored build keeps its path → sha256 list
 * (`build_contents`, written with its object rows); a build is compared with the PR's previous stored build from
 * those lists alone — no file is read, so a 3,000-file build is compared in a few milliseconds
 * (bench/changed-pages.mjs).
 *
 * A page is an HTML file. A page is "changed" when its own bytes changed; which assets a page loads is not known
 * without reading it, so the other files that changed (CSS, JS, images...) are counted and listed apart.
 */
import zlib from 'node:zlib';
import { inArray } from '../db/orm.js';
import type { Orm } from '../db/database.js';
import { buildContents, type builds } from '../db/tables.js';
import type { Config } from '../config.js';
import { buildUrl } from '../notify.js';

type Build = typeof builds.$inferSelect;

/** A build's files: path (relative, `/`-separated) → sha256. */
export type Contents = Map<string, string>;

export interface ChangedFile {
  path: string;
  /** The file on the build's own per-commit host; for a removed page, on the previous build's host. */
  url: string;
}

export interface Changes {
  added: ChangedFile[];
  changed: ChangedFile[];
  removed: ChangedFile[];
}

export type BuildChanges =
  /** Compared with the PR's previous stored build (`previousSha7`). `assets`: the non-HTML files that differ. */
  | { kind: 'compared'; previousSha7: string; pages: Changes; assets: Changes }
  /** The PR's first stored build: nothing to compare with. */
  | { kind: 'first' }
  /** This build or the previous one has no file list (stored before builds kept one, or too long to list): saying nothing beats saying wrong. */
  | { kind: 'unknown' };

const isPage = (path: string) => /\.x?html?$/i.test(path);

/** A build's list as stored: paths sorted (UTF-16 order, as `<` compares), and their sha256s, 32 bytes each, in that order. */
export interface StoredContents {
  paths: string[];
  hashes: Buffer;
}

/**
 * Paths longer than this together (UTF-16 units, NUL separators included) are not listed: the build's changes are
 * "not known". 3,000 paths of 40 characters take 120 KB; without a cap, 50,000 paths of 1,024 characters (what
 * MAX_BUILD_FILES allows) would make every comment edit decode 50 MB per build on the event loop.
 */
export const MAX_LISTED_PATH_CHARS = 4 * 1024 * 1024;

/**
 * Encoded for `build_contents`, or undefined when the paths are too long to list (MAX_LISTED_PATH_CHARS). Sorted
 * once here so that comparing two builds is one merge walk, without a Map.
 */
export function encodeContents(contents: Contents): { paths: Buffer; hashes: Buffer } | undefined {
  let chars = 0;
  for (const path of contents.keys()) chars += path.length + 1;
  if (chars > MAX_LISTED_PATH_CHARS) return undefined;
  const paths = [...contents.keys()].sort();
  const hashes = Buffer.allocUnsafe(paths.length * 32);
  paths.forEach((path, i) => hashes.write(contents.get(path)!, i * 32, 32, 'hex'));
  // Level 1: paths repeat their folders, so it compresses them almost as well as 6, in a fraction of the time.
  return { paths: zlib.gzipSync(paths.join('\0'), { level: 1 }), hashes };
}

export function decodeContents(row: { paths: Buffer; hashes: Buffer }): StoredContents {
  const text = zlib.gunzipSync(row.paths).toString('utf8');
  return { paths: text ? text.split('\0') : [], hashes: row.hashes };
}

/** Stores a build's file list; called in the transaction that makes the build ready (encode it before). */
export async function recordContents(tx: Orm, buildId: number, encoded: { paths: Buffer; hashes: Buffer } | undefined): Promise<void> {
  if (encoded) await tx.insert(buildContents).values({ buildId, ...encoded }).onConflictDoNothing();
}

type Paths = Record<keyof Changes, string[]>;

/** The paths added, changed and removed from `before` to `after`, split into pages and other files, sorted: one merge walk. */
export function compareContents(before: StoredContents, after: StoredContents): { pages: Paths; assets: Paths } {
  const pages: Paths = { added: [], changed: [], removed: [] };
  const assets: Paths = { added: [], changed: [], removed: [] };
  const note = (kind: keyof Changes, path: string) => (isPage(path) ? pages : assets)[kind].push(path);
  const [a, b] = [before.paths, after.paths];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (j >= b.length || (i < a.length && a[i]! < b[j]!)) note('removed', a[i++]!);
    else if (i >= a.length || b[j]! < a[i]!) note('added', b[j++]!);
    else {
      if (before.hashes.compare(after.hashes, j * 32, j * 32 + 32, i * 32, i * 32 + 32) !== 0) note('changed', b[j]!);
      i++;
      j++;
    }
  }
  return { pages, assets };
}

/** A file's direct link: `index.html` is its folder's URL. Every segment percent-encoded (a path is the PR author's text). */
export function fileUrl(base: string, path: string): string {
  const shown = path === 'index.html' ? '' : path.endsWith('/index.html') ? path.slice(0, -'index.html'.length) : path;
  const encoded = shown
    .split('/')
    .map((segment) => encodeURIComponent(segment).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`))
    .join('/');
  return `${base.replace(/\/$/, '')}/${encoded}`;
}

/**
 * For each of a PR's stored builds (any order), what changed since the build stored just before it in that PR.
 * One query for all the file lists, each decoded once.
 */
export async function changesOfBuilds(db: Orm, config: Config, site: string, prNumber: number, prBuilds: Build[]): Promise<Map<number, BuildChanges>> {
  const ordered = [...prBuilds].filter((b) => b.status === 'ready').sort((a, b) => a.id - b.id);
  const stored = new Map<number, StoredContents>();
  if (ordered.length) {
    const rows = await db
      .select()
      .from(buildContents)
      .where(inArray(buildContents.buildId, ordered.map((b) => b.id)));
    for (const row of rows) stored.set(row.buildId, decodeContents(row));
  }
  const result = new Map<number, BuildChanges>();
  ordered.forEach((build, i) => {
    const previous = ordered[i - 1];
    const after = stored.get(build.id);
    const before = previous && stored.get(previous.id);
    if (!after) return void result.set(build.id, { kind: 'unknown' });
    if (!previous) return void result.set(build.id, { kind: 'first' });
    if (!before) return void result.set(build.id, { kind: 'unknown' });
    const { pages, assets } = compareContents(before, after);
    const here = buildUrl(config, site, prNumber, build.sha7);
    const there = buildUrl(config, site, prNumber, previous.sha7);
    const linked = (paths: Paths): Changes => ({
      added: paths.added.map((path) => ({ path, url: fileUrl(here, path) })),
      changed: paths.changed.map((path) => ({ path, url: fileUrl(here, path) })),
      removed: paths.removed.map((path) => ({ path, url: fileUrl(there, path) })),
    });
    result.set(build.id, { kind: 'compared', previousSha7: previous.sha7, pages: linked(pages), assets: linked(assets) });
  });
  return result;
}

/**
 * One line about a build's changes, for the PR comment and the dashboard, e.g. "pages 2 changed, 1 added; 3 other
 * files (CSS, scripts, images…) differ (since abc1234)". `commit` formats the previous build's sha7 (code in markdown).
 */
export function describeChanges(entry: BuildChanges, commit: (sha7: string) => string = (sha7) => sha7): string {
  if (entry.kind === 'first') return 'the first build of this pull request (nothing to compare with)';
  if (entry.kind === 'unknown') return 'changes not known (this build or the one before it has no file list: stored before preview-gate kept them, or too many files to list)';
  const { pages, assets } = entry;
  const count = (n: number, what: string) => (n ? [`${n} ${what}`] : []);
  const pageParts = [...count(pages.changed.length, 'changed'), ...count(pages.added.length, 'added'), ...count(pages.removed.length, 'removed')];
  const otherFiles = assets.changed.length + assets.added.length + assets.removed.length;
  const pagesText = pageParts.length ? `pages ${pageParts.join(', ')}` : 'no page changed';
  const othersText = otherFiles ? `; ${otherFiles} other file${otherFiles === 1 ? '' : 's'} (CSS, scripts, images…) differ` : '';
  return `${pagesText}${othersText} (since ${commit(entry.previousSha7)})`;
}
