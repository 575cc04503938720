/**
 * Behind a CDN (docs/operations.md "Behind a CDN"). nginx sends every per-commit file with a short shared-cache
 * lifetime (CDN_MAX_AGE_SECONDS) and the PR's surrogate key; when a PR stops being public (made hidden, removed,
 * moved to another site), this purges what a CDN may still hold of it: one PURGE naming the key (for CDNs that
 * tag by it), and one PURGE per URL of the PR's builds (for caches that know only exact URLs, as nginx's own).
 *
 * A purge is a queue row, written in the transaction that records the flip: it runs once the flip is committed,
 * off its path, and is retried a few times; it never undoes or delays the flip. When every attempt fails, the CDN
 * keeps its copies at most CDN_MAX_AGE_SECONDS.
 */
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import type { BuildStore } from './builds/store.js';
import type { Config } from './config.js';
import type { Database, Orm } from './db/database.js';
import { and, eq } from './db/orm.js';
import { first } from './db/query.js';
import { buildFiles, builds, repositories } from './db/tables.js';
import type { Metrics } from './metrics.js';
import type { Job, WorkQueue } from './queue.js';

export const PURGE_JOB = 'cdn-purge';

/** Attempts of one purge (1 + 2 + 4 + 8 s of backoff between them) before the CDN's own expiry is left to hold. */
export const PURGE_ATTEMPTS = 5;
/** PURGE requests of one job at most: past it the CDN's expiry (CDN_MAX_AGE_SECONDS) holds for the rest. */
const MAX_PURGE_URLS = 10_000;
const PURGES_AT_ONCE = 8;
const PURGE_TIMEOUT_MS = 10_000;

/**
 * The surrogate key of one PR's previews. nginx writes the same from the host's parts (nginx/preview-cdn.conf:
 * `pg-pr$pg_pr--$pg_site`): change both together. A site is `[a-z0-9-]+` and a PR number has no `-`, so
 * the key names one (site, PR).
 */
export function surrogateKey(site: string, pr: number): string {
  return `pg-pr${pr}--${site}`;
}

/** What a purge job carries: the PR, the site its URLs were under, and its builds when the flip happened. */
interface PurgeData {
  repositoryId: number;
  number: number;
  site: string;
  builds: { id: number; sha7: string }[];
}

/**
 * Records a purge of the PR's previews under `site` (the repository's current site when omitted), inside the
 * caller's transaction when there is one. Nothing without CDN_PURGE_URL.
 */
export async function enqueuePurge(
  deps: { config: Config; queue: WorkQueue },
  q: Orm,
  pr: { id: number; repositoryId: number; number: number },
  site?: string,
): Promise<void> {
  if (!deps.config.cdnPurgeUrl) return;
  const siteNow = site ?? (await first(q.select({ site: repositories.site }).from(repositories).where(eq(repositories.id, pr.repositoryId)).limit(1)))?.site;
  if (!siteNow) return;
  const rows = await q
    .select({ id: builds.id, sha7: builds.sha7 })
    .from(builds)
    .where(and(eq(builds.pullRequestId, pr.id), eq(builds.status, 'ready')));
  const data: PurgeData = { repositoryId: pr.repositoryId, number: pr.number, site: siteNow, builds: rows };
  await deps.queue.enqueue(PURGE_JOB, `cdn:pr:${pr.repositoryId}#${pr.number}@${siteNow}`, { ...data });
}

/** Two purges of one PR waiting together: every build either named. */
export function mergePurges(older: Record<string, unknown>, newer: Record<string, unknown>): Record<string, unknown> {
  const all = [...((older as unknown as PurgeData).builds ?? []), ...((newer as unknown as PurgeData).builds ?? [])];
  return { ...newer, builds: [...new Map(all.map((b) => [b.id, b])).values()] };
}

/**
 * The URL paths that serve a build's files, as a browser sends them: each file, and a folder's `index.html` also
 * as `/dir/` and `/dir`. Paths a single-page app answers with its `index.html` are not known: they expire.
 */
export function urlPathsOf(files: string[]): string[] {
  const paths = new Set<string>(['/']);
  for (const file of files) {
    // Characters a URL would read as something else are written as a link to the file must write them.
    const urlPath = new URL(file.replace(/[%#?\\]/g, (c) => encodeURIComponent(c)), 'http://files/').pathname;
    paths.add(urlPath);
    if (urlPath === '/index.html') continue;
    if (urlPath.endsWith('/index.html')) {
      const folder = urlPath.slice(0, -'index.html'.length);
      paths.add(folder);
      paths.add(folder.slice(0, -1));
    }
  }
  return [...paths];
}

/** One PURGE, sent to the purge address: the Host it names, its path, its headers (the key, Basic auth). */
interface PurgeRequest {
  host: string;
  path: string;
  headers: Record<string, string>;
}

/** Sends the PURGE requests of `cdn-purge` jobs to CDN_PURGE_URL. */
export class CdnPurger {
  private readonly agent: http.Agent;

  constructor(
    private readonly config: Config,
    private readonly db: Database,
    private readonly store: BuildStore,
    private readonly log: Logger,
    private readonly metrics?: Pick<Metrics, 'cdnPurges'>,
  ) {
    const secure = config.cdnPurgeUrl?.startsWith('https:');
    this.agent = secure ? new https.Agent({ keepAlive: true, maxSockets: PURGES_AT_ONCE }) : new http.Agent({ keepAlive: true, maxSockets: PURGES_AT_ONCE });
  }

  /** A `cdn-purge` job: throws (to be retried) while attempts remain; then logs and lets the CDN's expiry hold. */
  async run(raw: Record<string, unknown>, job: Pick<Job, 'attempts'>): Promise<void> {
    if (!this.config.cdnPurgeUrl) return; // the row outlived the setting
    const data = raw as unknown as PurgeData;
    const key = surrogateKey(data.site, data.number);
    const requests = await this.requestsFor(data, key);
    // The key first: a CDN that tags by it is done then, before the URLs of caches that know only URLs.
    const failures = [...(await this.sendAll(requests.slice(0, 1))), ...(await this.sendAll(requests.slice(1)))];
    const pr = { repositoryId: data.repositoryId, pr: data.number, key };
    if (!failures.length) {
      this.metrics?.cdnPurges.inc({ outcome: 'done' });
      this.log.info({ ...pr, purges: requests.length }, 'purged the pull request from the CDN');
      return;
    }
    const message = `the CDN did not take ${failures.length} of ${requests.length} purges (${failures[0]})`;
    if (job.attempts + 1 >= PURGE_ATTEMPTS) {
      this.metrics?.cdnPurges.inc({ outcome: 'given_up' });
      this.log.error({ ...pr, attempts: job.attempts + 1 }, `gave up purging the pull request from the CDN: ${message}; its copies expire within CDN_MAX_AGE_SECONDS (${this.config.cdnMaxAgeSeconds} s)`);
      return;
    }
    this.metrics?.cdnPurges.inc({ outcome: 'failed' });
    throw new Error(message);
  }

  /** The key's PURGE to the purge address itself, then each URL's, sent there with the preview's Host. */
  private async requestsFor(data: PurgeData, key: string): Promise<PurgeRequest[]> {
    const target = new URL(this.config.cdnPurgeUrl!);
    const auth: Record<string, string> = target.username ? { authorization: `Basic ${Buffer.from(`${decodeURIComponent(target.username)}:${decodeURIComponent(target.password)}`).toString('base64')}` } : {};
    const requests: PurgeRequest[] = [{ host: target.host, path: `${target.pathname}${target.search}`, headers: { ...auth, 'surrogate-key': key } }];
    const domain = this.config.previewDomain;
    const stable = new Set<string>();
    const perHost: [string, string[]][] = [];
    for (const build of data.builds) {
      const paths = urlPathsOf(await this.filesOf(data, build));
      paths.forEach((p) => stable.add(p));
      perHost.push([`pr${data.number}-${build.sha7}--${data.site}.${domain}`, paths]);
    }
    perHost.push([`pr${data.number}--${data.site}.${domain}`, [...(stable.size ? stable : ['/'])]]);
    for (const [host, paths] of perHost) for (const p of paths) requests.push({ host, path: p, headers: { ...auth } });
    if (requests.length > MAX_PURGE_URLS + 1) {
      this.log.warn({ repositoryId: data.repositoryId, pr: data.number, urls: requests.length - 1 }, `only the first ${MAX_PURGE_URLS} URLs are purged; the CDN's copies of the others expire within CDN_MAX_AGE_SECONDS`);
      return requests.slice(0, MAX_PURGE_URLS + 1);
    }
    return requests;
  }

  /**
   * The files of one build: its rows when it is stored as rows (STORAGE=s3), else its folder, public or hidden,
   * under the repository's site now (a site move purges the old site's URLs). A removed build has neither.
   */
  private async filesOf(data: PurgeData, build: { id: number; sha7: string }): Promise<string[]> {
    const rows = await this.db.orm.select({ path: buildFiles.path }).from(buildFiles).where(eq(buildFiles.buildId, build.id));
    if (rows.length) return rows.map((r) => r.path);
    const repo = await first(this.db.orm.select({ site: repositories.site }).from(repositories).where(eq(repositories.id, data.repositoryId)).limit(1));
    if (!repo) return [];
    for (const visibility of ['hidden', 'public'] as const) {
      const dir = this.store.buildDir(repo.site, data.number, visibility, build.sha7);
      try {
        return (await fs.promises.readdir(dir, { recursive: true, withFileTypes: true }))
          .filter((e) => e.isFile())
          .map((e) => path.relative(dir, path.join(e.parentPath, e.name)).split(path.sep).join('/'));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    return [];
  }

  /** Sends every request, a few at a time; the failures, described without the purge address. */
  private async sendAll(requests: PurgeRequest[]): Promise<string[]> {
    const failures: string[] = [];
    let next = 0;
    const worker = async () => {
      while (next < requests.length) {
        const request = requests[next++]!;
        const failure = await this.send(request);
        if (failure) failures.push(failure);
      }
    };
    await Promise.all(Array.from({ length: Math.min(PURGES_AT_ONCE, requests.length) }, worker));
    return failures;
  }

  /**
   * One PURGE; undefined when the CDN took it: a 2xx, or 404 (nothing was cached under that URL or key, as
   * nginx's cache purge answers). Otherwise a sentence naming the URL purged, never the purge address.
   */
  private send(request: PurgeRequest): Promise<string | undefined> {
    const what = request.headers['surrogate-key'] ? `the key ${request.headers['surrogate-key']}` : `${request.host}${request.path}`;
    return new Promise((resolve) => {
      const failed = (reason: string) => resolve(`PURGE of ${what}: ${reason}`);
      let req: http.ClientRequest;
      try {
        req = this.request(request, (res) => {
          res.resume();
          const status = res.statusCode ?? 0;
          if ((status >= 200 && status < 300) || status === 404) resolve(undefined);
          else failed(`HTTP ${status}`);
        });
      } catch (err) {
        // A path or header Node refuses to send (ERR_UNESCAPED_CHARACTERS): that one URL fails, the others go.
        failed((err as NodeJS.ErrnoException).code ?? 'refused by Node');
        return;
      }
      req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })));
      req.on('error', (err: NodeJS.ErrnoException) => failed(err.code ?? 'network error'));
      req.end();
    });
  }

  /** A PURGE to the purge address with the request's Host (Basic auth already in its headers). */
  private request(request: PurgeRequest, onResponse: (res: http.IncomingMessage) => void): http.ClientRequest {
    const target = new URL(this.config.cdnPurgeUrl!);
    const hostname = target.hostname.replace(/^\[|\]$/g, '');
    const secure = target.protocol === 'https:';
    const options: https.RequestOptions = {
      hostname,
      port: target.port || undefined,
      // TLS names the purge address, not the Host header (Node's default for SNI).
      servername: secure && !net.isIP(hostname) ? hostname : undefined,
      method: 'PURGE',
      path: request.path,
      headers: { ...request.headers, host: request.host },
      agent: this.agent,
      timeout: PURGE_TIMEOUT_MS,
    };
    return secure ? https.request(options, onResponse) : http.request(options, onResponse);
  }

  close(): void {
    this.agent.destroy();
  }
}
