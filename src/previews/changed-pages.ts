/**
 * What no hosted preview shows: the pages a commit changed. Each stored build keeps its path → sha256 list
 * (`build_contents`, written with its object rows); a build is compared with the PR's previous stored build from
 * those lists alone — no file is read, so a 3,000-file build is compared in a few milliseconds
 * (bench/changed-pages.mjs).
 *
 * A page is an HTML file. A page is "changed" when its own bytes changed. A page whose bytes did not change but
 * whose loaded files (stylesheets, scripts, images, media, frames) did is listed apart: the files each HTML content
 * loads are read once, when its bytes come through an upload (the extractor has them), and kept with the
 * repository's object row of that content (`objects.page_refs`), so a digest upload that does not send an
 * unchanged page still knows what it loads. At upload, each build's list also keeps, per page, the files of that
 * build it loads (`build_contents.loads`, indices into its own sorted paths): a comparison reads nothing more.
 * The other changed files (CSS, JS, images...) are counted.
 */
import zlib from 'node:zlib';
import { and, eq, inArray, isNull } from '../db/orm.js';
import type { Orm } from '../db/database.js';
import { buildContents, objects, type builds } from '../db/tables.js';
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

/** A page whose own bytes did not change, but some files it loads did (`through`: those files' paths). */
export interface LoadsChanged extends ChangedFile {
  through: string[];
}

export type BuildChanges =
  /**
   * Compared with the PR's previous stored build (`previousSha7`). `assets`: the non-HTML files that differ.
   * `loadsChanged`: unchanged pages whose loaded files were changed or added (only pages whose loaded files are known).
   */
  | { kind: 'compared'; previousSha7: string; pages: Changes; assets: Changes; loadsChanged: LoadsChanged[] }
  /** The PR's first stored build: nothing to compare with. */
  | { kind: 'first' }
  /** This build or the previous one has no file list (stored before builds kept one, or too long to list): saying nothing beats saying wrong. */
  | { kind: 'unknown' };

export const isPage = (path: string) => /\.x?html?$/i.test(path);

/** Per page, at most this many loaded files, of this many characters together, are kept (the rest are not followed). */
const MAX_REFERENCES = 500;
const MAX_REFERENCE_CHARS = 64 * 1024;
/**
 * Per build, at most this many (page, loaded file) pairs are kept (1.6 MB before gzip): past it, which pages load
 * changed files is "not known" for the build, as MAX_LISTED_PATH_CHARS does for its paths.
 */
export const MAX_LOAD_PAIRS = 400_000;
/**
 * The elements that make a browser load another file, and the attributes naming it. `[^<>]*`, not `[^>]*`: a tag
 * that never closes ends at the next `<`, so 1 MB of `<img<img…` is one pass, not one pass per `<img`.
 */
const LOADING_TAGS = /<(script|link|img|source|video|audio|track|iframe|embed|object|input)\b([^<>]*)>/gi;
const LOADING_ATTRIBUTES = /\s(src|href|srcset|poster|data)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))/gi;

/**
 * The local files an HTML page loads, as written in it (relative or root-relative URLs, without query or
 * fragment): `src`/`href`/`srcset`/`poster`/`data` of the elements that load something. A link to another page
 * (`<a href>`) is not a load; files other files load (a stylesheet's fonts) are not followed. A scan of the tags,
 * not a parser: a tag inside a comment or a script's text may be counted, which can only add a page to the list.
 */
export function loadedReferences(html: Buffer): string[] {
  const text = html.toString('utf8');
  const found = new Set<string>();
  let chars = 0;
  for (const tag of text.matchAll(LOADING_TAGS)) {
    for (const attribute of tag[2]!.matchAll(LOADING_ATTRIBUTES)) {
      const name = attribute[1]!.toLowerCase();
      const value = attribute[2] ?? attribute[3] ?? attribute[4] ?? '';
      // srcset: "a.png 1x, b.png 2x" (each candidate's URL is its first word).
      const urls = name === 'srcset' ? value.split(',').map((c) => c.trim().split(/\s+/)[0] ?? '') : [value.trim()];
      for (const url of urls) {
        const local = url.replace(/[?#].*$/, '');
        // Not another host (`//cdn`, `https:`), not `data:`/`javascript:`, nothing a path cannot hold.
        if (!local || local.length > 1024 || /^[a-z][a-z0-9+.-]*:|^\/\/|[\s\\]/i.test(local)) continue;
        if (!found.has(local)) chars += local.length + 1;
        if (chars > MAX_REFERENCE_CHARS) return [...found];
        found.add(local);
        if (found.size >= MAX_REFERENCES) return [...found];
      }
    }
  }
  return [...found];
}

/** The build's path a reference made on `page` names (`dir/` is its index.html), or undefined when it leaves the site. */
export function resolveReference(page: string, reference: string): string | undefined {
  let resolved: string;
  // Most references are plain paths: joined without a URL parser (no `.`/`..` segment, no escape, no `//`).
  const plain = reference.startsWith('/') ? reference.slice(1) : `${page.slice(0, page.lastIndexOf('/') + 1)}${reference}`;
  if (!/%|\/\/|(^|\/)\.\.?(\/|$)/.test(plain)) return plain === '' || plain.endsWith('/') ? `${plain}index.html` : plain;
  try {
    const base = `http://site/${page.split('/').map(encodeURIComponent).join('/')}`; // a name may hold `#` or `?`
    resolved = decodeURIComponent(new URL(reference, base).pathname).slice(1);
  } catch {
    return undefined; // a malformed %-escape
  }
  return resolved === '' || resolved.endsWith('/') ? `${resolved}index.html` : resolved;
}

/**
 * Keeps the loaded files of the HTML contents an upload brought, on the repository's object rows (written by
 * recordObjects in the same transaction); a content whose list is known already keeps it (same bytes, same list).
 */
export async function recordPageReferences(tx: Orm, repositoryId: number, references: Map<string, string[]>): Promise<void> {
  for (const [sha256, list] of references) {
    await tx
      .update(objects)
      .set({ pageRefs: Buffer.from(list.join('\n')) })
      .where(and(eq(objects.repositoryId, repositoryId), eq(objects.sha256, sha256), isNull(objects.pageRefs)));
  }
}

/**
 * The loaded files of a build's HTML contents, at upload: those this upload's bytes showed (`fresh`), the others
 * from the repository's object rows (a digest upload does not send an unchanged page). Absent: not known.
 */
export async function pageReferences(db: Orm, repositoryId: number, contents: Contents, fresh: Map<string, string[]>): Promise<Map<string, string[]>> {
  const known = new Map(fresh);
  const asked = [...new Set([...contents].flatMap(([path, sha256]) => (isPage(path) && !known.has(sha256) ? [sha256] : [])))];
  // 500 at a time: SQLite limits the variables of one statement.
  for (let k = 0; k < asked.length; k += 500) {
    const rows = await db
      .select({ sha256: objects.sha256, pageRefs: objects.pageRefs })
      .from(objects)
      .where(and(eq(objects.repositoryId, repositoryId), inArray(objects.sha256, asked.slice(k, k + 500))));
    for (const row of rows) if (row.pageRefs) known.set(row.sha256, row.pageRefs.length ? row.pageRefs.toString('utf8').split('\n') : []);
  }
  return known;
}

/**
 * A build's list as stored: paths sorted (UTF-16 order, as `<` compares), and their sha256s, 32 bytes each, in that
 * order; `loads`: per page, the indices of the files it loads (gzipped uint32 runs: page, count, indices…), or null.
 */
export interface StoredContents {
  paths: string[];
  hashes: Buffer;
  loads?: Buffer | null;
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
export function encodeContents(contents: Contents, references?: Map<string, string[]>): EncodedContents | undefined {
  let chars = 0;
  for (const path of contents.keys()) chars += path.length + 1;
  if (chars > MAX_LISTED_PATH_CHARS) return undefined;
  const paths = [...contents.keys()].sort();
  const hashes = Buffer.allocUnsafe(paths.length * 32);
  paths.forEach((path, i) => hashes.write(contents.get(path)!, i * 32, 32, 'hex'));
  // Level 1: paths repeat their folders, so it compresses them almost as well as 6, in a fraction of the time.
  return { paths: zlib.gzipSync(paths.join('\0'), { level: 1 }), hashes, loads: references ? encodeLoads(paths, contents, references) : null };
}

type EncodedContents = { paths: Buffer; hashes: Buffer; loads: Buffer | null };

/** Per page whose loaded files are known and in the build: page index, count, their indices (uint32), gzipped. */
function encodeLoads(paths: string[], contents: Contents, references: Map<string, string[]>): Buffer | null {
  const indexOf = new Map(paths.map((path, i) => [path, i]));
  const runs: number[] = [];
  paths.forEach((path, i) => {
    const refs = isPage(path) ? references.get(contents.get(path)!) : undefined;
    if (!refs) return;
    if (runs.length > MAX_LOAD_PAIRS) return;
    const loaded = [...new Set(refs.flatMap((ref) => indexOf.get(resolveReference(path, ref) ?? '') ?? []))].filter((j) => j !== i);
    if (loaded.length) runs.push(i, loaded.length, ...loaded);
  });
  if (!runs.length || runs.length > MAX_LOAD_PAIRS) return null;
  const raw = Buffer.allocUnsafe(runs.length * 4);
  runs.forEach((n, k) => raw.writeUInt32LE(n, k * 4));
  return zlib.gzipSync(raw, { level: 1 });
}

/** The loads of a stored list: page index → the indices of the files it loads. */
function decodeLoads(loads: Buffer): Map<number, number[]> {
  const raw = zlib.gunzipSync(loads);
  const runs = Array.from({ length: raw.length >> 2 }, (_, k) => raw.readUInt32LE(k * 4));
  const byPage = new Map<number, number[]>();
  for (let k = 0; k + 1 < runs.length; k += 2 + runs[k + 1]!) byPage.set(runs[k]!, runs.slice(k + 2, k + 2 + runs[k + 1]!));
  return byPage;
}

export function decodeContents(row: { paths: Buffer; hashes: Buffer; loads?: Buffer | null }): StoredContents {
  const text = zlib.gunzipSync(row.paths).toString('utf8');
  return { paths: text ? text.split('\0') : [], hashes: row.hashes, loads: row.loads ?? null };
}

/** Stores a build's file list; called in the transaction that makes the build ready (encode it before). */
export async function recordContents(tx: Orm, buildId: number, encoded: EncodedContents | undefined): Promise<void> {
  if (encoded) await tx.insert(buildContents).values({ buildId, ...encoded }).onConflictDoNothing();
}

type Paths = Record<keyof Changes, string[]>;

/**
 * The paths added, changed and removed from `before` to `after`, split into pages and other files, sorted: one
 * merge walk. `samePages`: indices in `after` of the pages whose bytes did not change (what they load may have);
 * `differingAssets`: indices in `after` of the other files changed or added.
 */
export function compareContents(before: StoredContents, after: StoredContents): { pages: Paths; assets: Paths; samePages: number[]; differingAssets: Set<number> } {
  const pages: Paths = { added: [], changed: [], removed: [] };
  const assets: Paths = { added: [], changed: [], removed: [] };
  const samePages: number[] = [];
  const differingAssets = new Set<number>();
  const note = (kind: keyof Changes, path: string, at?: number) => {
    if (isPage(path)) return void pages[kind].push(path);
    assets[kind].push(path);
    if (at !== undefined) differingAssets.add(at);
  };
  const [a, b] = [before.paths, after.paths];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (j >= b.length || (i < a.length && a[i]! < b[j]!)) note('removed', a[i++]!);
    else if (i >= a.length || b[j]! < a[i]!) {
      note('added', b[j]!, j);
      j++;
    } else {
      if (before.hashes.compare(after.hashes, j * 32, j * 32 + 32, i * 32, i * 32 + 32) !== 0) note('changed', b[j]!, j);
      else if (isPage(b[j]!)) samePages.push(j);
      i++;
      j++;
    }
  }
  return { pages, assets, samePages, differingAssets };
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
    const { pages, assets, samePages, differingAssets } = compareContents(before, after);
    const here = buildUrl(config, site, prNumber, build.sha7);
    const there = buildUrl(config, site, prNumber, previous.sha7);
    const linked = (paths: Paths): Changes => ({
      added: paths.added.map((path) => ({ path, url: fileUrl(here, path) })),
      changed: paths.changed.map((path) => ({ path, url: fileUrl(here, path) })),
      removed: paths.removed.map((path) => ({ path, url: fileUrl(there, path) })),
    });
    // An unchanged page whose loaded files were changed or added (a file it names that is new now loads).
    const loads = differingAssets.size && samePages.length && after.loads ? decodeLoads(after.loads) : undefined;
    const loadsChanged = samePages.flatMap((j) => {
      const through = (loads?.get(j) ?? []).filter((k) => differingAssets.has(k)).map((k) => after.paths[k]!);
      const path = after.paths[j]!;
      return through.length ? [{ path, url: fileUrl(here, path), through }] : [];
    });
    result.set(build.id, { kind: 'compared', previousSha7: previous.sha7, pages: linked(pages), assets: linked(assets), loadsChanged });
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
  const pageParts = [
    ...count(pages.changed.length, 'changed'),
    ...count(entry.loadsChanged.length, 'loading changed files'),
    ...count(pages.added.length, 'added'),
    ...count(pages.removed.length, 'removed'),
  ];
  const otherFiles = assets.changed.length + assets.added.length + assets.removed.length;
  const pagesText = pageParts.length ? `pages ${pageParts.join(', ')}` : 'no page changed';
  const othersText = otherFiles ? `; ${otherFiles} other file${otherFiles === 1 ? '' : 's'} (CSS, scripts, images…) differ` : '';
  return `${pagesText}${othersText} (since ${commit(entry.previousSha7)})`;
}
