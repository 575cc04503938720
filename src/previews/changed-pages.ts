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
import type { Db } from '../db/client.js';
import { buildContents, type builds } from '../db/schema.js';
import type { Config } from '../config.js';
import { buildUrl } from '../notify.js';

type Build = typeof builds.$inferSelect;
type Writer = Pick<Db, 'insert'>;

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
  /** This build or the previous one was stored before builds kept their file lists: saying nothing beats saying wrong. */
  | { kind: 'unknown' };

const isPage = (path: string) => /\.x?html?$/i.test(path);

export function encodeContents(contents: Contents): Buffer {
  return zlib.gzipSync(JSON.stringify(Object.fromEntries(contents)), { level: 6 });
}

export function decodeContents(blob: Buffer): Contents {
  return new Map(Object.entries(JSON.parse(zlib.gunzipSync(blob).toString('utf8')) as Record<string, string>));
}

/** Stores a build's file list; called in the transaction that makes the build ready (encode it before: it takes a few ms). */
export function recordContents(tx: Writer, buildId: number, encoded: Buffer): void {
  tx.insert(buildContents).values({ buildId, files: encoded }).onConflictDoNothing().run();
}

/** The paths added, changed and removed from `before` to `after`, split into pages and other files, sorted. */
export function compareContents(before: Contents, after: Contents): { pages: Record<keyof Changes, string[]>; assets: Record<keyof Changes, string[]> } {
  const pages = { added: [] as string[], changed: [] as string[], removed: [] as string[] };
  const assets = { added: [] as string[], changed: [] as string[], removed: [] as string[] };
  for (const [path, hash] of after) {
    const old = before.get(path);
    if (old === hash) continue;
    (isPage(path) ? pages : assets)[old === undefined ? 'added' : 'changed'].push(path);
  }
  for (const path of before.keys()) if (!after.has(path)) (isPage(path) ? pages : assets).removed.push(path);
  for (const list of [pages, assets]) for (const paths of Object.values(list)) paths.sort();
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
export function changesOfBuilds(db: Db, config: Config, site: string, prNumber: number, prBuilds: Build[]): Map<number, BuildChanges> {
  const ordered = [...prBuilds].filter((b) => b.status === 'ready').sort((a, b) => a.id - b.id);
  const stored = new Map<number, Contents>();
  if (ordered.length) {
    const rows = db
      .select()
      .from(buildContents)
      .where(inArray(buildContents.buildId, ordered.map((b) => b.id)))
      .all();
    for (const row of rows) stored.set(row.buildId, decodeContents(row.files));
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
    const linked = (paths: Record<keyof Changes, string[]>): Changes => ({
      added: paths.added.map((path) => ({ path, url: fileUrl(here, path) })),
      changed: paths.changed.map((path) => ({ path, url: fileUrl(here, path) })),
      removed: paths.removed.map((path) => ({ path, url: fileUrl(there, path) })),
    });
    result.set(build.id, { kind: 'compared', previousSha7: previous.sha7, pages: linked(pages), assets: linked(assets) });
  });
  return result;
}
