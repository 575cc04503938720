/**
 * Previews behind a CDN (issue 29, item 3): per-commit files are immutable for browsers but kept
 * CDN_MAX_AGE_SECONDS by shared caches and tagged with the PR's surrogate key; a PR made hidden (or removed) is
 * purged through CDN_PURGE_URL after the flip is committed. The CDN is a second, real nginx (proxy_cache with
 * Debian's cache-purge module) in front of the preview nginx; the purge hook's requests are also recorded by a
 * plain HTTP server.
 */
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import nock from 'nock';
import { pino } from 'pino';
import { BuildStore } from '../src/builds/store.js';
import { CdnPurger, PURGE_ATTEMPTS, surrogateKey, urlPathsOf } from '../src/cdn.js';
import { loadConfig } from '../src/config.js';
import { jobs } from '../src/db/tables.js';
import { nginxOptionsFrom, renderNginx } from '../src/nginx.js';
import { eventually } from './helpers/eventually.js';
import { FakeGitHub } from './helpers/fake-github.js';
import { CACHE_PURGE_MODULE, freePort, NGINX, request, startCdnNginx, startNginx, type RunningNginx } from './helpers/nginx.js';
import { sha, startTestServer, type TestServer } from './helpers/server.js';
import { tarball } from './helpers/tarballs.js';
import { signedWebhook } from './helpers/webhooks.js';

const DOCS = 7001;
const LABEL = 'safe for preview';
const host = (pr: number, commit: string) => `pr${pr}-${commit.slice(0, 7)}--docs.previews.test`;
const site = (marker: string) =>
  tarball({ 'index.html': `<h1>${marker}</h1>`, 'app.js': `console.log(${JSON.stringify(marker)})`, 'guide/index.html': '<h1>guide</h1>', 'a b.txt': 'spaced' });
const figures = process.env.PRINT_FIGURES ? (line: string) => console.log(line) : () => undefined;

/** Starts the fake GitHub with the docs repository, its PRs labelled (public) or not. */
async function fakeGitHub(pulls: { number: number; commits: string[]; labelled?: boolean; state?: 'open' | 'closed' }[]): Promise<FakeGitHub> {
  const fake = await new FakeGitHub().start();
  fake.addRepo({ id: DOCS, owner: { id: 9001, login: 'octo-org' }, name: 'docs' });
  fake.addUser({ id: 1001, login: 'maintainer' }, { [DOCS]: 'write' });
  for (const p of pulls) fake.addPull(DOCS, { number: p.number, user: { id: 555, login: 'contributor' }, commits: p.commits, labels: p.labelled ? [LABEL] : [] });
  return fake;
}

/** Removes the label on GitHub and delivers `unlabeled`: the PR is hidden when the delivery is answered. */
async function unlabel(fake: FakeGitHub, server: TestServer, pr: number): Promise<void> {
  fake.change(DOCS, pr, { labels: [] });
  const res = await fetch(`${server.url}/api/github/webhooks`, { method: 'POST', ...signedWebhook('pull_request', fake.pullRequestEvent(DOCS, pr, 'unlabeled', { label: { name: LABEL } })) });
  expect(res.status).toBe(200);
}

const noNginx = !NGINX || !CACHE_PURGE_MODULE;
if (noNginx) console.warn('cdn.test.ts: the CDN tests need nginx and libnginx-mod-http-cache-purge (apt-get install, as .ci/run does); skipped');

(noNginx ? describe.skip : describe)('behind a CDN (a second nginx with proxy_cache and PURGE)', () => {
  const A = sha('a1');
  const B = sha('b2');
  let fake: FakeGitHub;
  let server: TestServer;
  /** Origins rendered with CDN_MAX_AGE_SECONDS 60 (the default) and 1. */
  let origin: RunningNginx;
  let shortOrigin: RunningNginx;
  let cdn: RunningNginx;
  /** The CDN in front of `origin` (purged by the server), and the one in front of `shortOrigin` (never purged). */
  let cdnPort: number;
  let unpurgedCdnPort: number;

  beforeAll(async () => {
    nock.enableNetConnect('127.0.0.1');
    fake = await fakeGitHub([
      { number: 1, commits: [A], labelled: true },
      { number: 2, commits: [B], labelled: true },
    ]);
    cdnPort = await freePort();
    unpurgedCdnPort = await freePort();
    server = await startTestServer({ ...fake.env, PUBLIC_URL: 'http://uploads.test', CDN_PURGE_URL: `http://127.0.0.1:${cdnPort}/` });
    fs.chmodSync(server.tmp, 0o755);
    const options = { previewDomain: 'previews.test', buildsDir: server.config.buildsDir, upstream: new URL(server.url).host, publicHost: 'uploads.test', maxUploadBytes: server.config.maxUploadBytes };
    origin = await startNginx(path.join(server.tmp, 'origin'), { ...options, cdnMaxAgeSeconds: server.config.cdnMaxAgeSeconds });
    shortOrigin = await startNginx(path.join(server.tmp, 'short-origin'), { ...options, cdnMaxAgeSeconds: 1 });
    cdn = await startCdnNginx(path.join(server.tmp, 'cdn'), [
      { port: cdnPort, origin: origin.port },
      { port: unpurgedCdnPort, origin: shortOrigin.port },
    ]);
    expect((await server.upload(1, A, site('one'))).status).toBe(201);
    expect((await server.upload(2, B, site('two'))).status).toBe(201);
    await server.previews.settled();
  });
  afterAll(async () => {
    if (process.env.SHOW_NGINX_ERRORS) console.log(fs.readFileSync(path.join(server.tmp, 'cdn', 'logs', 'error.log'), 'utf8'));
    await cdn?.stop();
    await origin?.stop();
    await shortOrigin?.stop();
    await server?.close();
    await fake?.close();
  });

  test("a per-commit file is immutable for browsers, kept CDN_MAX_AGE_SECONDS by a CDN, and tagged with the PR's surrogate key", async () => {
    const file = await request(origin.port, host(1, A), '/app.js');
    expect(file.status).toBe(200);
    expect(file.headers['cache-control']).toBe('public, max-age=31536000, s-maxage=60, immutable');
    expect(file.headers['cdn-cache-control']).toBe('max-age=60');
    // nginx writes the key from the host's parts; Node computes the same one to purge it.
    expect(file.headers['surrogate-key']).toBe(surrogateKey('docs', 1));
    expect(file.headers['cache-tag']).toBe(surrogateKey('docs', 1));
    expect((await request(shortOrigin.port, host(1, A), '/app.js')).headers['cache-control']).toBe('public, max-age=31536000, s-maxage=1, immutable');
    // The stable host is revalidated every time, by browsers and CDNs; it carries the key too.
    const latest = await request(origin.port, 'pr1--docs.previews.test', '/');
    expect([latest.status, latest.headers['cache-control'], latest.headers['cdn-cache-control'], latest.headers['surrogate-key']]).toEqual([200, 'no-cache', undefined, surrogateKey('docs', 1)]);
    // Nothing but a found file may be kept: a 404 is no-store for everyone.
    const missing = await request(origin.port, host(1, A), '/missing.js');
    expect([missing.status, missing.headers['cache-control'], missing.headers['cdn-cache-control']]).toEqual([404, 'no-store', undefined]);
    // `preview-gate nginx` renders CDN_MAX_AGE_SECONDS from the environment.
    const rendered = renderNginx(nginxOptionsFrom(loadConfig({ CDN_MAX_AGE_SECONDS: '5' })));
    expect(rendered).toContain('"public, max-age=31536000, s-maxage=5, immutable"');
    expect(rendered).toContain('"max-age=5"');
  });

  test('a file the CDN cached is purged when its PR is made hidden: the CDN then answers 404, not its copy (figure with PRINT_FIGURES=1)', async () => {
    const paths = ['/', '/app.js', '/guide/', '/a%20b.txt'];
    for (const p of paths) {
      expect([p, (await request(cdnPort, host(1, A), p)).status]).toEqual([p, 200]);
      const again = await request(cdnPort, host(1, A), p);
      expect([p, again.status, again.headers['x-cache']]).toEqual([p, 200, 'HIT']);
    }
    const flipped = Date.now();
    await unlabel(fake, server, 1);
    // The origin stopped serving it when the delivery was answered; the CDN holds its copies until the purge.
    expect((await request(origin.port, host(1, A), '/app.js')).status).toBe(404);
    // Well under the 60 s the CDN would otherwise keep them.
    await eventually(async () => {
      for (const p of paths) if ((await request(cdnPort, host(1, A), p)).status !== 404) return false;
      return true;
    }, 20_000);
    figures(`CDN copy of a PR made hidden served until the purge: ${Date.now() - flipped} ms after the unlabeled delivery was sent (origin: 404 when it was answered)`);
    expect(server.logs.some((l) => l.msg === 'purged the pull request from the CDN' && l.key === surrogateKey('docs', 1))).toBe(true);
  });

  test('a CDN the purge does not reach drops its copy after CDN_MAX_AGE_SECONDS (1 s here) (figure with PRINT_FIGURES=1)', async () => {
    // This CDN is not the one CDN_PURGE_URL names: only its copy's s-maxage ends it.
    expect((await request(unpurgedCdnPort, host(2, B), '/app.js')).status).toBe(200);
    const cached = await request(unpurgedCdnPort, host(2, B), '/app.js');
    expect(cached.status).toBe(200);
    const flipped = Date.now();
    await unlabel(fake, server, 2);
    await eventually(async () => (await request(unpurgedCdnPort, host(2, B), '/app.js')).status === 404, 20_000);
    figures(`unpurged CDN copy (s-maxage=1) served for ${Date.now() - flipped} ms after the flip`);
  });
});

/** A CDN's purge endpoint that records what it is sent and answers `status`. */
async function recordingCdn(): Promise<{ port: number; seen: { method: string; host: string; path: string; headers: http.IncomingHttpHeaders }[]; status: number; close(): Promise<void> }> {
  const cdn = { port: 0, seen: [] as { method: string; host: string; path: string; headers: http.IncomingHttpHeaders }[], status: 200, close: async () => {} };
  const srv = http.createServer((req, res) => {
    cdn.seen.push({ method: req.method!, host: req.headers.host!, path: req.url!, headers: req.headers });
    res.writeHead(cdn.status).end();
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  cdn.port = (srv.address() as { port: number }).port;
  cdn.close = () => new Promise<void>((resolve) => srv.close(() => resolve()));
  return cdn;
}

describe('the purge hook (CDN_PURGE_URL)', () => {
  const C = sha('c3');
  const D = sha('d4');
  const E = sha('e5');
  const F = sha('f6');
  let fake: FakeGitHub;
  let server: TestServer;
  let cdn: Awaited<ReturnType<typeof recordingCdn>>;
  const secrets = ['s3cret', 't0ken', Buffer.from('cdn:s3cret').toString('base64')];

  beforeAll(async () => {
    nock.enableNetConnect('127.0.0.1');
    fake = await fakeGitHub([
      { number: 3, commits: [C, D], labelled: true },
      { number: 4, commits: [E], labelled: true },
      { number: 5, commits: [F], labelled: true },
    ]);
    cdn = await recordingCdn();
    server = await startTestServer({ ...fake.env, CDN_PURGE_URL: `http://cdn:s3cret@127.0.0.1:${cdn.port}/purge?token=t0ken` });
    expect((await server.upload(3, C, site('c'))).status).toBe(201);
    expect((await server.upload(3, D, site('d'))).status).toBe(201);
    expect((await server.upload(4, E, site('e'))).status).toBe(201);
    expect((await server.upload(5, F, site('f'))).status).toBe(201);
    await server.previews.settled();
  });
  afterAll(async () => {
    await server?.close();
    await fake?.close();
    await cdn?.close();
  });
  beforeEach(() => {
    cdn.seen.length = 0;
    cdn.status = 200;
  });

  test("a public PR's uploads purge nothing; its flip to hidden purges its key, then every URL of its builds, with the URL's credentials", async () => {
    expect(cdn.seen).toEqual([]);
    await unlabel(fake, server, 3);
    await server.previews.settled();
    const basic = `Basic ${Buffer.from('cdn:s3cret').toString('base64')}`;
    const [key, ...urls] = cdn.seen;
    expect(key).toMatchObject({ method: 'PURGE', host: `127.0.0.1:${cdn.port}`, path: '/purge?token=t0ken' });
    expect([key!.headers['surrogate-key'], key!.headers.authorization]).toEqual([surrogateKey('docs', 3), basic]);
    const files = ['/', '/a%20b.txt', '/app.js', '/guide', '/guide/', '/guide/index.html', '/index.html'];
    const byHost = new Map<string, string[]>();
    for (const u of urls) {
      expect([u.method, u.headers.authorization, u.headers['surrogate-key']]).toEqual(['PURGE', basic, undefined]);
      byHost.set(u.host, [...(byHost.get(u.host) ?? []), u.path].sort());
    }
    expect(Object.fromEntries(byHost)).toEqual({ [host(3, C)]: files, [host(3, D)]: files, 'pr3--docs.previews.test': files });
  });

  test('a CDN that fails is asked again off the flip: the flip stands at once, and the log names no credential', async () => {
    cdn.status = 503;
    const started = Date.now();
    await unlabel(fake, server, 4);
    const answeredMs = Date.now() - started;
    expect((await server.core.registry.findPullRequest((await server.core.registry.ensureRepository('octo-org/docs')).id, 4))?.visibility).toBe('hidden');
    await eventually(async () => (await server.core.db.orm.select().from(jobs)).some((j) => j.kind === 'cdn-purge' && j.attempts >= 1));
    const tried = cdn.seen.length;
    cdn.status = 200;
    await eventually(() => server.logs.some((l) => l.msg === 'purged the pull request from the CDN' && l.key === surrogateKey('docs', 4)));
    expect(cdn.seen.length).toBeGreaterThan(tried);
    const logged = JSON.stringify(server.logs);
    expect(logged).toContain('HTTP 503');
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toMatch(/preview_gate_cdn_purges_total\{outcome="failed"\} [1-9]/);
    expect(metrics).toMatch(/preview_gate_cdn_purges_total\{outcome="done"\} [1-9]/);
    for (const secret of secrets) expect(logged).not.toContain(secret);
    figures(`unlabeled delivery answered in ${answeredMs} ms while the CDN answered 503`);
  });

  test(`after ${PURGE_ATTEMPTS} attempts a purge gives up with an error in the log (the CDN's copies expire)`, async () => {
    cdn.status = 500;
    const lines: { level: number; msg: string }[] = [];
    const log = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line)) });
    const purger = new CdnPurger(server.config, server.core.db, new BuildStore(server.config.buildsDir), log);
    const data = { repositoryId: 1, number: 4, site: 'docs', builds: [] };
    await expect(purger.run(data, { attempts: PURGE_ATTEMPTS - 2 })).rejects.toThrow(/did not take 2 of 2 purges \(PURGE of the key pg-pr4--docs: HTTP 500\)/);
    await expect(purger.run(data, { attempts: PURGE_ATTEMPTS - 1 })).resolves.toBeUndefined();
    purger.close();
    expect(lines.map((l) => [l.level, l.msg.replace(/\(.*/, '')])).toEqual([[50, 'gave up purging the pull request from the CDN: the CDN did not take 2 of 2 purges ']]);
    for (const secret of secrets) expect(JSON.stringify(lines)).not.toContain(secret);
  });

  test("a closed PR's builds removed by cleanup are purged once more", async () => {
    fake.change(DOCS, 4, { state: 'closed' });
    const res = await fetch(`${server.url}/api/github/webhooks`, { method: 'POST', ...signedWebhook('pull_request', fake.pullRequestEvent(DOCS, 4, 'closed')) });
    expect(res.status).toBe(200);
    await server.previews.settled();
    cdn.seen.length = 0;
    const result = await server.previews.cleanup(new Date(Date.now() + 48 * 3600_000));
    expect(result.removedPrs).toBe(1);
    await server.previews.settled();
    const [key, ...urls] = cdn.seen.map((s) => s.headers['surrogate-key'] ?? `${s.host}${s.path}`);
    // Its files are gone: each host's root is all that is known of them.
    expect([key, urls.sort()]).toEqual([surrogateKey('docs', 4), [`${host(4, E)}/`, 'pr4--docs.previews.test/'].sort()]);
  });

  test("a site move purges the public PRs' URLs under the old site (they answer 404 now)", async () => {
    fake.repos.get(DOCS)!.files['.github/preview-gate.yml'] = 'site: handbook\n';
    cdn.seen.length = 0;
    const res = await fetch(`${server.url}/api/github/webhooks`, { method: 'POST', ...signedWebhook('pull_request', fake.pullRequestEvent(DOCS, 5, 'synchronize')) });
    expect(res.status).toBe(200);
    await eventually(async () => (await server.core.registry.findRepositoryById(DOCS))?.site === 'handbook');
    await server.previews.settled();
    const keys = cdn.seen.filter((s) => s.headers['surrogate-key']).map((s) => s.headers['surrogate-key']);
    // PR 3 is hidden and PR 4 removed: their copies were purged already.
    expect(keys).toEqual([surrogateKey('docs', 5)]);
    const urls = cdn.seen.filter((s) => !s.headers['surrogate-key']).map((s) => `${s.host}${s.path}`);
    expect(urls).toContain(`${host(5, F)}/guide/index.html`);
    expect(urls).toContain('pr5--docs.previews.test/app.js');
  });
});

test('the URL paths of a build: each file as a browser asks for it, a folder by its index.html', () => {
  expect(urlPathsOf(['index.html', 'docs/index.html', 'a b/c#1?.css', 'x%y.js']).sort()).toEqual(['/', '/a%20b/c%231%3F.css', '/docs', '/docs/', '/docs/index.html', '/index.html', '/x%25y.js']);
});

test('CDN_PURGE_URL must be an http(s) URL, and a refused one is not echoed (it can hold credentials)', () => {
  expect(() => loadConfig({ CDN_PURGE_URL: 'ftp://user:pw@cdn' })).toThrow(/^CDN_PURGE_URL must be an absolute http\(s\) URL$/);
  expect(() => loadConfig({ CDN_MAX_AGE_SECONDS: '-1' })).toThrow(/CDN_MAX_AGE_SECONDS must be a whole number of seconds/);
  expect(loadConfig({}).cdnPurgeUrl).toBeUndefined();
  expect(loadConfig({}).cdnMaxAgeSeconds).toBe(60);
});
