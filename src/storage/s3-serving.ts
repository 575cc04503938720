/**
 * Serving STORAGE=s3 builds (issue 29): nginx asks Node which object a preview request maps to (an auth_request
 * sub-request it caches a few seconds), then fetches that object from the private bucket through a URL Node signed.
 *
 * Node's answer to the sub-request, read by nginx/preview-s3.conf:
 * - 204: serve the object (`X-Preview-Gate-Object`: the signed path and query on the bucket's endpoint) with status 200;
 * - 401: serve the object (the build's own 404.html) with status 404;
 * - 403: nothing here, nginx's plain 404 (an unknown preview, a hidden one without a grant, a missing file).
 * `X-Preview-Gate-Route` says which Cache-Control applies (`commit`, `latest` or `hidden`); `X-Preview-Gate-Pr` links
 * the hidden banner to its pull request.
 */
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { Router, type Request, type Response } from 'express';
import type { Config } from '../config.js';
import type { Database } from '../db/database.js';
import { and, desc, eq } from '../db/orm.js';
import { first } from '../db/query.js';
import { buildFiles, builds, pullRequests, repositories } from '../db/tables.js';
import { objectKey, type S3Objects } from './s3-objects.js';

export const PREVIEW_RESOLVE_PATH = '/.preview-gate/resolve';
/** Set by nginx on its sub-request only (nginx/preview-s3.conf); no client request to Node can carry it there. */
export const RESOLVE_MARKER = 'x-preview-gate-resolve';
/**
 * How long a signed object URL is valid. nginx keeps Node's answer 4-5 s and uses the URL at once; the margin is
 * for a slow bucket and clocks a little apart. The URL never leaves nginx.
 */
export const SIGNED_URL_SECONDS = 60;
/**
 * Paths of builds kept in memory, all builds together (~250 bytes each: ~25 MB). A build never changes, so a kept
 * list is never stale; the least recently used builds go first.
 */
const PATHS_KEPT = 100_000;

export interface PreviewHostName {
  name: string;
  site: string;
  pr: number;
  /** Per-commit hosts only: `pr<N>-<sha7>--<site>`; the stable host `pr<N>--<site>` serves the newest build. */
  sha7?: string;
}

/** The preview host a Host header names, as nginx's server_name patterns read it; undefined for any other host. */
export function parsePreviewHost(previewDomain: string, hostHeader: string | undefined): PreviewHostName | undefined {
  const name = (hostHeader ?? '').replace(/:\d+$/, '').toLowerCase();
  const suffix = `.${previewDomain}`;
  if (!name.endsWith(suffix)) return undefined;
  const m = /^pr([1-9][0-9]{0,8})(?:-([0-9a-f]{7}))?--([a-z0-9-]+)$/.exec(name.slice(0, -suffix.length));
  return m ? { name, pr: Number(m[1]), sha7: m[2], site: m[3]! } : undefined;
}

export interface FileRow {
  repositoryId: number;
  sha256: string;
  contentType: string;
}

/** A build's paths, and the folders they make (for "a folder's index.html"). */
export class BuildManifest {
  readonly folders = new Set<string>();

  constructor(readonly files: Map<string, FileRow>) {
    for (const path of files.keys()) {
      for (let i = path.indexOf('/'); i !== -1; i = path.indexOf('/', i + 1)) this.folders.add(path.slice(0, i + 1));
    }
  }
}

export type PathAnswer = { found: FileRow } | { notFoundPage: FileRow } | { nothing: true };

/**
 * The request path as nginx's `$uri` is: without the query, %-escapes decoded, `.` and `..` segments resolved,
 * repeated slashes merged. Undefined for what nginx would refuse (a bad escape, a NUL).
 */
export function normalizedPath(requestUri: string): string | undefined {
  const raw = requestUri.split('?')[0]!;
  if (!raw.startsWith('/')) return undefined;
  let decoded: string;
  try {
    decoded = decodeURIComponent(raw);
  } catch {
    return undefined;
  }
  if (decoded.includes('\0')) return undefined;
  const segments: string[] = [];
  const parts = decoded.split('/');
  parts.forEach((segment, i) => {
    const last = i === parts.length - 1;
    if (segment === '..') segments.pop();
    if (segment === '..' || segment === '.') {
      if (last) segments.push('');
      return;
    }
    if (segment !== '' || last) segments.push(segment);
  });
  return `/${segments.join('/')}`;
}

/**
 * nginx/preview-site.conf's rules over a build's rows: a path whose last segment has an extension is that file or a
 * 404; any other is the file, the folder's index.html, or the app shell /index.html; a 404 is the build's own
 * /404.html when it has one. (A folder without index.html, 403 on the filesystem, is a 404 here.)
 */
export function answerFor(manifest: BuildManifest, uri: string): PathAnswer {
  const notFound = (): PathAnswer => {
    const page = manifest.files.get('404.html');
    return page ? { notFoundPage: page } : { nothing: true };
  };
  const path = uri.slice(1);
  const file = manifest.files.get(path);
  if (/\.[^/]*$/.test(uri)) return file ? { found: file } : notFound();
  if (file) return { found: file };
  const folder = path === '' || path.endsWith('/') ? path : `${path}/`;
  if (folder === '' || manifest.folders.has(folder)) {
    const index = manifest.files.get(`${folder}index.html`);
    return index ? { found: index } : notFound();
  }
  const shell = manifest.files.get('index.html');
  return shell ? { found: shell } : notFound();
}

/** Whether this request's view cookie may see the hidden PR of its preview host now; the banner's PR link if so. */
export type HiddenPreviewCheck = (req: Request) => Promise<{ prLink: string } | undefined>;

export interface S3ServingDeps {
  config: Config;
  db: Database;
  bucket: S3Objects;
  /** Undefined until sign-in is configured: then no hidden build is served to anyone. */
  hidden?: HiddenPreviewCheck;
}

/** The build a preview host names now: its repository's, its PR's, ready; and the PR's visibility. */
async function buildOfHost(db: Database, host: PreviewHostName) {
  const conditions = [eq(repositories.site, host.site), eq(repositories.installed, true), eq(builds.status, 'ready')];
  if (host.sha7) conditions.push(eq(builds.sha7, host.sha7));
  return first(
    db.orm
      .select({ buildId: builds.id, visibility: pullRequests.visibility })
      .from(repositories)
      .innerJoin(pullRequests, and(eq(pullRequests.repositoryId, repositories.id), eq(pullRequests.number, host.pr)))
      .innerJoin(builds, eq(builds.pullRequestId, pullRequests.id))
      .where(and(...conditions))
      // The stable host: the newest build (ids grow with each claim).
      .orderBy(desc(builds.id))
      .limit(1),
  );
}

/** nginx's sub-request for a preview request on STORAGE=s3; any other request to this path is a plain 404. */
export function s3ServingRouter(deps: S3ServingDeps): Router {
  const router = Router({ caseSensitive: true, strict: true });
  const manifests = new ManifestCache((buildId) => manifestOf(deps.db, buildId));
  router.get(PREVIEW_RESOLVE_PATH, async (req, res, next) => {
    const host = parsePreviewHost(deps.config.previewDomain, req.headers.host);
    // Only nginx's sub-request: it sets the marker, and the upload host (which adds X-Forwarded-For) never passes a
    // preview host name. Anything else falls through to the app's 404.
    if (req.headers[RESOLVE_MARKER] !== '1' || req.headers['x-forwarded-for'] !== undefined || !host) return next();
    res.set('Cache-Control', 'private, no-store');
    const uri = normalizedPath(req.get('x-preview-gate-uri') ?? '');
    const build = uri === undefined ? undefined : await buildOfHost(deps.db, host);
    if (!build || uri === undefined) return void res.status(403).end();
    let route = host.sha7 ? 'commit' : 'latest';
    if (build.visibility !== 'public') {
      const granted = await deps.hidden?.(req);
      if (!granted) return void res.status(403).end();
      route = 'hidden';
      res.set('X-Preview-Gate-Pr', granted.prLink);
    }
    const answer = answerFor(await manifests.get(build.buildId), uri);
    if ('nothing' in answer) return void res.status(403).end();
    const file = 'found' in answer ? answer.found : answer.notFoundPage;
    res.set('X-Preview-Gate-Route', route);
    res.set('X-Preview-Gate-Object', await signedPath(deps.bucket, file));
    res.status('found' in answer ? 204 : 401).end();
  });
  return router;
}

/** A build's rows. */
async function manifestOf(db: Database, buildId: number): Promise<BuildManifest> {
  const rows = await db.orm
    .select({ path: buildFiles.path, repositoryId: buildFiles.repositoryId, sha256: buildFiles.sha256, contentType: buildFiles.contentType })
    .from(buildFiles)
    .where(eq(buildFiles.buildId, buildId));
  return new BuildManifest(new Map(rows.map(({ path, ...file }) => [path, file])));
}

/**
 * The object's GET on the bucket's endpoint, signed for SIGNED_URL_SECONDS: path and query only (nginx sends it to
 * the endpoint it was rendered with, with that Host). The bucket answers with the row's content type.
 */
async function signedPath(bucket: S3Objects, file: FileRow): Promise<string> {
  const command = new GetObjectCommand({ Bucket: bucket.bucket, Key: objectKey(file.repositoryId, file.sha256), ResponseContentType: file.contentType });
  const url = new URL(await getSignedUrl(bucket.client, command, { expiresIn: SIGNED_URL_SECONDS }));
  return `${url.pathname}${url.search}`;
}

/** Builds' file lists, read once each (a build's rows never change), the most recently used kept. */
export class ManifestCache {
  private readonly kept = new Map<number, { manifest: Promise<BuildManifest>; paths: number }>();
  private paths = 0;

  constructor(
    private readonly load: (buildId: number) => Promise<BuildManifest>,
    private readonly pathsKept = PATHS_KEPT,
  ) {}

  get(buildId: number): Promise<BuildManifest> {
    const entry = this.kept.get(buildId);
    if (entry) {
      // Moved to the end: the Map's order is the use order.
      this.kept.delete(buildId);
      this.kept.set(buildId, entry);
      return entry.manifest;
    }
    const manifest = this.load(buildId);
    const added = { manifest, paths: 0 };
    this.kept.set(buildId, added);
    manifest.then(
      (m) => {
        if (this.kept.get(buildId) !== added) return;
        added.paths = m.files.size;
        this.paths += added.paths;
        this.evict();
      },
      () => {
        if (this.kept.get(buildId) === added) this.kept.delete(buildId);
      },
    );
    return manifest;
  }

  private evict(): void {
    for (const [buildId, entry] of this.kept) {
      if (this.paths <= this.pathsKept || this.kept.size === 1) return;
      this.kept.delete(buildId);
      this.paths -= entry.paths;
    }
  }

}
