/**
 * Serving STORAGE=s3 builds (issue 29): nginx asks Node which object a preview request maps to (a cached
 * sub-request) and fetches it from the private bucket through a URL Node signs. Real nginx and a real S3 engine
 * (Ceph RGW, `npm run test:engines`); without S3_ENDPOINT those tests are skipped, and the skipped block says why.
 * The path rules and the rendering run everywhere.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import nock from 'nock';
import { and, eq } from '../src/db/orm.js';
import { buildFiles, builds, pullRequests } from '../src/db/tables.js';
import { PassThrough } from 'node:stream';
import { runCli } from '../src/cli.js';
import { renderNginx } from '../src/nginx.js';
import { S3Objects } from '../src/storage/s3-objects.js';
import { answerFor, BuildManifest, ManifestCache, normalizedPath, parsePreviewHost, type FileRow } from '../src/storage/s3-serving.js';
import { eventually } from './helpers/eventually.js';
import { FakeGitHub } from './helpers/fake-github.js';
import { freePort, NGINX, rawGet, request, startNginx, type RunningNginx } from './helpers/nginx.js';
import { sha, startTestServer, type TestServer } from './helpers/server.js';
import { tarball } from './helpers/tarballs.js';

const sha256 = (content: string) => crypto.createHash('sha256').update(content).digest('hex');

describe('the path rules of preview-site.conf, over a build’s rows', () => {
  const row = (name: string): FileRow => ({ repositoryId: 1, sha256: sha256(name), contentType: 'text/plain' });
  const manifest = (paths: string[]) => new BuildManifest(new Map(paths.map((p) => [p, row(p)])));
  const site = manifest(['index.html', 'app.js', 'docs/index.html', 'docs/guide.html', 'LICENSE', 'empty/a.js', '404.html']);
  const served = (m: BuildManifest, uri: string) => {
    const answer = answerFor(m, uri);
    if ('found' in answer) return answer.found.sha256;
    if ('notFoundPage' in answer) return `404:${answer.notFoundPage.sha256}`;
    return 'nothing';
  };

  test('file, folder index.html, app shell; a missing extension path is the build’s 404.html or nothing', () => {
    expect(served(site, '/')).toBe(sha256('index.html'));
    expect(served(site, '/app.js')).toBe(sha256('app.js'));
    expect(served(site, '/LICENSE')).toBe(sha256('LICENSE'));
    expect(served(site, '/docs')).toBe(sha256('docs/index.html'));
    expect(served(site, '/docs/')).toBe(sha256('docs/index.html'));
    expect(served(site, '/some/route')).toBe(sha256('index.html'));
    expect(served(site, '/missing.js')).toBe(`404:${sha256('404.html')}`);
    expect(served(site, '/docs/missing.html')).toBe(`404:${sha256('404.html')}`);
    // A folder without index.html (403 on the filesystem): the 404.
    expect(served(site, '/empty/')).toBe(`404:${sha256('404.html')}`);
    const bare = manifest(['app.js']);
    expect(served(bare, '/missing.js')).toBe('nothing');
    expect(served(bare, '/route')).toBe('nothing');
    expect(served(bare, '/')).toBe('nothing');
  });

  test('builds’ file lists are read once each, the least recently used let go past the bound on paths kept', async () => {
    const reads: number[] = [];
    const cache = new ManifestCache(async (buildId) => {
      reads.push(buildId);
      if (buildId === 9) throw new Error('database down');
      return manifest(Array.from({ length: 10 }, (_, i) => `${buildId}/${i}.js`));
    }, 25);
    await cache.get(1);
    await cache.get(2);
    await cache.get(1); // kept; now the most recently used
    expect(reads).toEqual([1, 2]);
    await cache.get(3); // 30 paths > 25: build 2 goes
    await cache.get(1);
    await cache.get(2);
    expect(reads).toEqual([1, 2, 3, 2]);
    // A failed read is not kept: asked again next time.
    await expect(cache.get(9)).rejects.toThrow('database down');
    await expect(cache.get(9)).rejects.toThrow('database down');
    expect(reads).toEqual([1, 2, 3, 2, 9, 9]);
  });

  test('the path is read as nginx reads $uri: decoded, dot segments resolved, slashes merged, query dropped', () => {
    expect(normalizedPath('/docs//guide.html?x=1')).toBe('/docs/guide.html');
    expect(normalizedPath('/a/../docs/./guide.html')).toBe('/docs/guide.html');
    expect(normalizedPath('/%64ocs/a%20b.html')).toBe('/docs/a b.html');
    expect(normalizedPath('/../../etc/passwd')).toBe('/etc/passwd');
    expect(normalizedPath('/docs/..')).toBe('/');
    expect(normalizedPath('/docs/%2e%2e/app.js')).toBe('/app.js');
    expect(normalizedPath('/bad%zz')).toBeUndefined();
    expect(normalizedPath('/nul%00.js')).toBeUndefined();
    expect(normalizedPath('relative')).toBeUndefined();
  });

  test('preview host names as the server_name patterns read them', () => {
    expect(parsePreviewHost('previews.test', 'pr12-abcdef0--docs.previews.test')).toEqual({ name: 'pr12-abcdef0--docs.previews.test', pr: 12, sha7: 'abcdef0', site: 'docs' });
    expect(parsePreviewHost('previews.test', 'PR12--docs.previews.test:8080')).toEqual({ name: 'pr12--docs.previews.test', pr: 12, sha7: undefined, site: 'docs' });
    for (const other of ['uploads.test', 'pr0--docs.previews.test', 'pr1-abc--docs.previews.test', 'docs.previews.test', 'pr1--docs.previews.test.evil', undefined]) {
      expect(parsePreviewHost('previews.test', other)).toBeUndefined();
    }
  });
});

describe('rendering', () => {
  const options = { previewDomain: 'previews.test', buildsDir: '/srv/builds', upstream: '127.0.0.1:3000', publicHost: 'uploads.test', maxUploadBytes: 1000, listen: '80' };

  test('`preview-gate nginx` renders the S3 mode when STORAGE=s3, the filesystem one otherwise', async () => {
    const print = async (env: Record<string, string>) => {
      const stdout = new PassThrough();
      let text = '';
      stdout.on('data', (d: Buffer) => (text += d.toString()));
      const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-s3-cli-'));
      try {
        const code = await runCli(['nginx'], { stdin: new PassThrough(), stdout, stderr: new PassThrough(), env: { DATA_DIR: tmp, PREVIEW_DOMAIN: 'previews.test', PUBLIC_URL: 'https://uploads.test', ...env } });
        expect(code).toBe(0);
      } finally {
        fs.rmSync(tmp, { recursive: true, force: true });
      }
      return text;
    };
    const bucket = await print({ STORAGE: 's3', S3_BUCKET: 'previews', S3_ENDPOINT: 'http://10.0.0.5:7480' });
    expect(bucket).toContain('auth_request /.preview-gate/resolve;');
    expect(bucket).toContain('upstream preview_gate_bucket {\n    server 10.0.0.5:7480;');
    expect(bucket).toContain('proxy_set_header Host "10.0.0.5:7480";');
    // https PUBLIC_URL: the view cookie is the __Host- one Node sets.
    expect(bucket).toContain('__Host-preview-gate-view=');
    const disk = await print({ S3_BUCKET: 'previews' });
    expect(disk).not.toContain('/.preview-gate/resolve');
    expect(disk).toContain('try_files');
  });

  test('STORAGE=s3 renders preview hosts that hold no build, and nginx accepts it', () => {
    const conf = renderNginx({ ...options, s3: { endpoint: 'https://s3.eu-west-1.amazonaws.com', bucket: 'previews' } });
    expect(conf).not.toContain('/srv/builds');
    expect(conf).toContain('auth_request /.preview-gate/resolve;');
    expect(conf).toContain('proxy_set_header Host "s3.eu-west-1.amazonaws.com";');
    expect(conf).toContain('proxy_ssl_verify on;');
    // The main host is the filesystem mode's, unchanged.
    const main = (c: string) => c.slice(c.indexOf('# The upload / webhook host.'), c.indexOf('# One commit:') === -1 ? c.indexOf('# The preview hosts') : c.indexOf('# One commit:'));
    expect(main(conf)).toBe(main(renderNginx(options)));
    if (!NGINX) return;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-s3-render-'));
    try {
      // A name endpoint goes through a variable (needs a resolver, as the README says for names).
      fs.writeFileSync(path.join(dir, 'nginx.conf'), `pid ${dir}/pid; error_log ${dir}/error.log; events {} http { resolver 127.0.0.1; ${conf} }`);
      const check = spawnSync(NGINX, ['-t', '-p', dir, '-c', path.join(dir, 'nginx.conf')], { encoding: 'utf8' });
      expect(check.stderr).toContain('syntax is ok');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

const engine = process.env.S3_ENDPOINT && process.env.S3_BUCKET && NGINX ? describe : describe.skip;
const engineName = process.env.S3_ENDPOINT ? 'through real nginx from a real S3 engine' : 'through real nginx from a real S3 engine (skipped: S3_ENDPOINT is unset; run `npm run test:engines`)';

engine(engineName, () => {
  const MAIN_HOST = 'uploads.test';
  const DOCS = 7001;
  const A = sha('a1'); // PR 1, hidden
  const B = sha('b2'); // PR 2, public
  const C = sha('c3'); // PR 2, newer
  const E = sha('e5'); // PR 3, public, some of its objects missing from the bucket
  const hiddenHost = `pr1-${A.slice(0, 7)}--docs.previews.test`;
  const commitHost = `pr2-${B.slice(0, 7)}--docs.previews.test`;
  const stableHost = 'pr2--docs.previews.test';
  const files = (marker: string): Record<string, string> => ({
    'index.html': `<html><body><h1>${marker}</h1></body></html>`,
    'app.js': `console.log(${JSON.stringify(marker)})`,
    'guide/index.html': `<html><body>guide ${marker}</body></html>`,
    'mod.mjs': 'export default 1',
    '404.html': `<html><body>lost in ${marker}</body></html>`,
  });
  const TYPES: Record<string, string> = { html: 'text/html', js: 'text/javascript', mjs: 'text/javascript' };

  let fake: FakeGitHub;
  let server: TestServer;
  let nginx: RunningNginx;
  let bucket: S3Objects;

  async function buildOf(sha40: string) {
    return (
      await server.core.db.orm
        .select({ buildId: builds.id, prId: builds.pullRequestId, repositoryId: pullRequests.repositoryId })
        .from(builds)
        .innerJoin(pullRequests, eq(pullRequests.id, builds.pullRequestId))
        .where(eq(builds.sha, sha40))
    )[0]!;
  }

  /**
   * The rows and objects of an uploaded build, as the S3 ingest writes them (idempotent: it may have done so);
   * `absent`: paths whose row names an object the bucket does not have.
   */
  async function storeInBucket(sha40: string, content: Record<string, string>, absent: string[] = []): Promise<void> {
    const { buildId, repositoryId } = await buildOf(sha40);
    for (const [name, text] of Object.entries(content)) {
      const hash = absent.includes(name) ? sha256(`never stored ${name}`) : sha256(text);
      if (!absent.includes(name)) await bucket.putOnce(repositoryId, hash, Buffer.from(text), Buffer.byteLength(text));
      const contentType = TYPES[name.split('.').pop()!] ?? 'application/octet-stream';
      await server.core.db.orm.delete(buildFiles).where(and(eq(buildFiles.buildId, buildId), eq(buildFiles.path, name)));
      await server.core.db.orm.insert(buildFiles).values({ buildId, path: name, repositoryId, sha256: hash, size: Buffer.byteLength(text), contentType });
    }
  }

  const viaNginx = (host: string, urlPath: string, headers: Record<string, string> = {}) => request(nginx.port, host, urlPath, { headers });
  const cookiePair = (header: string | string[] | undefined) => [header ?? []].flat()[0]?.split(';')[0];

  async function viewCookie(login: string): Promise<string | undefined> {
    fake.signInAs = login;
    const start = await viaNginx(MAIN_HOST, '/login');
    const approved = await fetch(start.headers.location!, { redirect: 'manual' });
    const callback = new URL(approved.headers.get('location')!);
    const signedIn = await viaNginx(MAIN_HOST, `${callback.pathname}${callback.search}`, { cookie: cookiePair(start.headers['set-cookie'])! });
    const session = cookiePair([signedIn.headers['set-cookie'] ?? []].flat().filter((c) => /^(__Host-)?preview-gate=/.test(c)));
    const view = await viaNginx(MAIN_HOST, `/view/1/1/${A.slice(0, 7)}`, { cookie: session! });
    if (view.status !== 302) return undefined;
    const ticket = new URL(view.headers.location!);
    const redeemed = await viaNginx(hiddenHost, `${ticket.pathname}${ticket.search}`);
    expect(redeemed.status).toBe(303);
    return cookiePair(redeemed.headers['set-cookie']);
  }

  beforeAll(async () => {
    nock.enableNetConnect('127.0.0.1');
    fake = await new FakeGitHub().start();
    fake.addRepo({ id: DOCS, owner: { id: 9001, login: 'octo-org' }, name: 'docs' });
    fake.addUser({ id: 1001, login: 'maintainer' }, { [DOCS]: 'write' });
    const s3 = { STORAGE: 's3', S3_ENDPOINT: process.env.S3_ENDPOINT!, S3_BUCKET: process.env.S3_BUCKET!, S3_REGION: process.env.S3_REGION ?? 'us-east-1' };
    server = await startTestServer({ ...fake.env, ...s3, PUBLIC_URL: `http://${MAIN_HOST}`, GITHUB_CLIENT_ID: fake.client.id, GITHUB_CLIENT_SECRET: fake.client.secret });
    bucket = S3Objects.fromSettings(server.config.s3!);
    nginx = await startNginx(path.join(server.tmp, 'nginx'), {
      previewDomain: 'previews.test',
      buildsDir: server.config.buildsDir,
      upstream: new URL(server.url).host,
      publicHost: MAIN_HOST,
      maxUploadBytes: server.config.maxUploadBytes,
      s3: { endpoint: process.env.S3_ENDPOINT!, bucket: process.env.S3_BUCKET! },
    });
    fake.addPull(DOCS, { number: 1, user: { id: 555, login: 'contributor' }, commits: [A] });
    fake.addPull(DOCS, { number: 2, user: { id: 555, login: 'contributor' }, commits: [B, C], labels: ['safe for preview'] });
    fake.addPull(DOCS, { number: 3, user: { id: 555, login: 'contributor' }, commits: [E], labels: ['safe for preview'] });
    expect((await server.upload(1, A, tarball(files('not reviewed')))).status).toBe(202);
    expect((await server.upload(2, B, tarball(files('public one')))).status).toBe(201);
    expect((await server.upload(2, C, tarball(files('newest')))).status).toBe(201);
    await storeInBucket(A, files('not reviewed'));
    await storeInBucket(B, files('public one'));
    await storeInBucket(C, files('newest'));
    expect((await server.upload(3, E, tarball(files('third')))).status).toBe(201);
    await storeInBucket(E, files('third'), ['app.js', '404.html']);
    // Nothing is read from the disk in this mode: the builds folder goes away.
    fs.rmSync(server.config.buildsDir, { recursive: true, force: true });
  });
  afterAll(async () => {
    if (process.env.SHOW_NGINX_ERRORS) console.log(fs.readFileSync(path.join(server.tmp, 'nginx', 'logs', 'error.log'), 'utf8'));
    bucket?.close();
    await nginx?.stop();
    await server?.close();
    await fake?.close();
  });

  const noBucketHeaders = (headers: Record<string, unknown>) => Object.keys(headers).filter((h) => /^x-(amz|rgw)-/.test(h));

  test('a public per-commit file: 200, its row’s content type, immutable, nothing of the bucket’s', async () => {
    const page = await viaNginx(commitHost, '/');
    expect([page.status, page.body.toString()]).toEqual([200, '<html><body><h1>public one</h1></body></html>']);
    expect(page.headers['content-type']).toBe('text/html');
    // Immutable for browsers; a CDN keeps it CDN_MAX_AGE_SECONDS (60 by default) under the PR's surrogate key.
    expect(page.headers['cache-control']).toBe('public, max-age=31536000, s-maxage=60, immutable');
    expect([page.headers['cdn-cache-control'], page.headers['surrogate-key'], page.headers['cache-tag']]).toEqual(['max-age=60', 'pg-pr2--docs', 'pg-pr2--docs']);
    expect(page.headers['x-content-type-options']).toBe('nosniff');
    expect(page.headers['x-robots-tag']).toBeUndefined();
    expect(noBucketHeaders(page.headers)).toEqual([]);
    const mod = await viaNginx(commitHost, '/mod.mjs');
    expect([mod.status, mod.headers['content-type'], mod.body.toString()]).toEqual([200, 'text/javascript', 'export default 1']);
    // Headers a CDN or a visitor adds are not passed to Node's sub-request.
    const forwarded = await viaNginx(commitHost, '/app.js', { 'x-forwarded-for': '203.0.113.9', 'x-preview-gate-uri': '/mod.mjs' });
    expect([forwarded.status, forwarded.body.toString()]).toEqual([200, 'console.log("public one")']);
    // A revalidation is the bucket's 304, with the same Cache-Control.
    expect(mod.headers.etag).toBeDefined();
    const same = await viaNginx(commitHost, '/mod.mjs', { 'if-none-match': String(mod.headers.etag) });
    expect([same.status, same.headers['cache-control'], same.body.length]).toEqual([304, 'public, max-age=31536000, s-maxage=60, immutable', 0]);
    // Only GET and HEAD, as for static files.
    expect((await request(nginx.port, commitHost, '/app.js', { method: 'POST', body: Buffer.from('x') })).status).toBe(405);
    // A HEAD is the GET's headers (the signature is a GET's).
    const head = await request(nginx.port, commitHost, '/app.js', { method: 'HEAD' });
    expect([head.status, head.headers['content-type'], head.body.length]).toEqual([200, 'text/javascript', 0]);
  });

  test('folders, the app shell, and the stable host’s newest build (revalidated, not immutable)', async () => {
    expect((await viaNginx(commitHost, '/guide')).body.toString()).toBe('<html><body>guide public one</body></html>');
    expect((await viaNginx(commitHost, '/guide/')).body.toString()).toBe('<html><body>guide public one</body></html>');
    expect((await viaNginx(commitHost, '/some/route')).body.toString()).toContain('public one');
    const newest = await viaNginx(stableHost, '/');
    expect([newest.status, newest.body.toString(), newest.headers['cache-control']]).toEqual([200, '<html><body><h1>newest</h1></body></html>', 'no-cache']);
  });

  test('a missing file with an extension: 404 no-store with the build’s 404.html; an unknown preview: the plain 404', async () => {
    const missing = await viaNginx(commitHost, '/missing.js');
    expect([missing.status, missing.headers['cache-control'], missing.body.toString()]).toEqual([404, 'no-store', '<html><body>lost in public one</body></html>']);
    const unknown = await viaNginx('pr9-9999999--docs.previews.test', '/');
    expect([unknown.status, unknown.headers['cache-control']]).toEqual([404, 'no-store']);
    expect(unknown.body.toString()).toContain('404 Not Found');
    expect((await viaNginx('pr2-0000000--docs.previews.test', '/app.js')).status).toBe(404);
  });

  test('a hidden build: the plain 404 for anyone without a grant; with one, the file with the banner, private', async () => {
    const unknown = await viaNginx('pr9-9999999--docs.previews.test', '/');
    for (const cookie of [undefined, 'preview-gate-view=forged']) {
      const hidden = await viaNginx(hiddenHost, '/', cookie ? { cookie } : {});
      expect([hidden.status, hidden.headers['cache-control'], hidden.body]).toEqual([404, 'no-store', unknown.body]);
      expect((await viaNginx(hiddenHost, '/missing.js', cookie ? { cookie } : {})).body).toEqual(unknown.body);
    }
    const cookie = (await viewCookie('maintainer'))!;
    expect(cookie).toMatch(/^preview-gate-view=/);
    const page = await viaNginx(hiddenHost, '/', { cookie });
    expect(page.status).toBe(200);
    expect(page.body.toString()).toMatch(/^<html><body><h1>not reviewed<\/h1><div role="note" [^>]*><details open><summary[^>]*>Hidden preview &mdash; not reviewed\./);
    expect(page.body.toString()).toMatch(/<a [^>]*href="http:\/\/127\.0\.0\.1:\d+\/octo-org\/docs\/pull\/1">The pull request<\/a>/);
    expect([page.headers['cache-control'], page.headers['x-robots-tag']]).toEqual(['private, no-store', 'noindex']);
    // Nothing a CDN would keep or could be purged by: a hidden answer is no shared cache's business.
    expect([page.headers['cdn-cache-control'], page.headers['surrogate-key'], page.headers['cache-tag']]).toEqual([undefined, undefined, undefined]);
    const script = await viaNginx(hiddenHost, '/app.js', { cookie });
    expect([script.status, script.body.toString(), script.headers['cache-control']]).toEqual([200, 'console.log("not reviewed")', 'private, no-store']);
    const missing = await viaNginx(hiddenHost, '/missing.js', { cookie });
    expect([missing.status, missing.headers['cache-control']]).toEqual([404, 'private, no-store']);
    expect(missing.body.toString()).toContain('lost in not reviewed');
    // The grant is this host's only.
    expect((await viaNginx('pr1--docs.previews.test', '/', { cookie })).status).toBe(404);
    // A spelling nginx does not read as the view cookie but a cookie parser does (a space before `=`): the grant
    // must not be answered under the key of requests without a cookie, or anonymous visitors get the hidden page.
    const spaced = cookie.replace('=', ' =');
    const path = '/guide/';
    expect((await viaNginx(hiddenHost, path, { cookie: spaced })).status).toBe(404);
    expect((await viaNginx(hiddenHost, path)).status).toBe(404);
  });

  test('the resolving endpoint answers nginx’s sub-request only: no spelling reaches it from outside', async () => {
    const marker = { 'x-preview-gate-resolve': '1', 'x-preview-gate-uri': '/app.js' };
    for (const spelling of ['/.preview-gate/resolve', '/.preview-gate//resolve', '/.preview-gate/./resolve', '/%2Epreview-gate/resolve', '/.preview-gate/x/../resolve', '/.preview-gate/resolve?x=1']) {
      for (const host of [commitHost, stableHost]) {
        const answer = await viaNginx(host, spelling, marker);
        expect([spelling, host, answer.status, answer.headers['x-preview-gate-object']]).toEqual([spelling, host, 404, undefined]);
      }
      // The upload host hands everything to Node, with its own Host: Node refuses.
      const main = await viaNginx(MAIN_HOST, spelling, marker);
      expect([spelling, main.status, main.headers['x-preview-gate-object']]).toEqual([spelling, 404, undefined]);
    }
    // An absolute URI naming a preview host is that host's request (nginx chooses the server by it).
    const absolute = await rawGet(nginx.port, `http://${commitHost}/.preview-gate/resolve`, MAIN_HOST);
    expect(absolute.status).toBe(404);
    expect(absolute.head).not.toMatch(/x-preview-gate/i);
    // Node itself: without nginx's marker, or with a forwarded client address, the app's 404.
    const direct = (headers: Record<string, string>) => request(Number(new URL(server.url).port), commitHost, '/.preview-gate/resolve', { headers });
    expect((await direct({ 'x-preview-gate-uri': '/app.js' })).status).toBe(404);
    expect((await direct({ ...marker, 'x-forwarded-for': '203.0.113.9' })).status).toBe(404);
    expect((await direct(marker)).status).toBe(204); // the test's own control: nginx's request is answered
  });

  test('an object the bucket does not have: the plain 404, no-store, nothing of the bucket’s answer', async () => {
    const host = `pr3-${E.slice(0, 7)}--docs.previews.test`;
    const plain = await viaNginx('pr9-9999999--docs.previews.test', '/');
    expect((await viaNginx(host, '/')).status).toBe(200); // the control: the build is served
    // The file itself, and the build's 404.html when its object is missing too.
    for (const urlPath of ['/app.js', '/missing.js']) {
      const answer = await viaNginx(host, urlPath);
      expect([urlPath, answer.status, answer.headers['cache-control'], answer.body]).toEqual([urlPath, 404, 'no-store', plain.body]);
      expect(answer.body.toString()).not.toMatch(/<\?xml|NoSuchKey|AccessDenied|RequestId/);
      expect(noBucketHeaders(answer.headers)).toEqual([]);
    }
  });

  test('a refusal of the bucket (a Host other than the one signed): the plain 404, no-store, nothing of the bucket’s', async () => {
    // The same bucket, reached by another name than the one Node signs for: the engine answers 403 to every GET.
    const endpoint = new URL(process.env.S3_ENDPOINT!);
    const misnamed = await startNginx(path.join(server.tmp, 'nginx-misnamed'), {
      previewDomain: 'previews.test',
      buildsDir: server.config.buildsDir,
      upstream: new URL(server.url).host,
      publicHost: MAIN_HOST,
      maxUploadBytes: server.config.maxUploadBytes,
      s3: { endpoint: `http://localhost:${endpoint.port}`, bucket: process.env.S3_BUCKET! },
    });
    try {
      const plain = await request(misnamed.port, 'pr9-9999999--docs.previews.test', '/');
      for (const urlPath of ['/app.js', '/missing.js']) {
        const answer = await request(misnamed.port, commitHost, urlPath);
        expect([urlPath, answer.status, answer.headers['cache-control'], answer.body]).toEqual([urlPath, 404, 'no-store', plain.body]);
        expect(answer.body.toString()).not.toMatch(/<\?xml|SignatureDoesNotMatch|AccessDenied|RequestId/);
        expect(noBucketHeaders(answer.headers)).toEqual([]);
      }
    } finally {
      await misnamed.stop();
    }
  });

  test('a flood of forged view cookies is limited per address before it becomes work for Node; plain visitors are not counted', async () => {
    // All at once: nginx counts requests as they arrive, however slowly Node answers the ones let through.
    const forged = await Promise.all(Array.from({ length: 300 }, (_, i) => viaNginx(hiddenHost, '/', { cookie: `preview-gate-view=junk${i}` })));
    const statuses = forged.map((a) => a.status);
    expect(new Set(statuses)).toEqual(new Set([404, 429]));
    expect(statuses.filter((s) => s === 404).length).toBeLessThan(300);
    // Without a view cookie, the same address is served at once.
    expect((await viaNginx(commitHost, '/app.js')).status).toBe(200);
  });

  test('Node not answering: 503, no-store', async () => {
    const nowhere = await startNginx(path.join(server.tmp, 'nginx-nowhere'), {
      previewDomain: 'previews.test',
      buildsDir: server.config.buildsDir,
      upstream: `127.0.0.1:${await freePort()}`,
      publicHost: MAIN_HOST,
      maxUploadBytes: server.config.maxUploadBytes,
      s3: { endpoint: process.env.S3_ENDPOINT!, bucket: process.env.S3_BUCKET! },
    });
    try {
      const answer = await request(nowhere.port, commitHost, '/app.js');
      expect([answer.status, answer.headers['cache-control']]).toEqual([503, 'no-store']);
    } finally {
      await nowhere.stop();
    }
  });

  test('what Node’s sub-request costs: a page’s files asked for the first time and again (figures with SHOW_FIGURES=1)', async () => {
    const timed = async (paths: string[]) => {
      const started = process.hrtime.bigint();
      const answers: number[] = [];
      for (let i = 0; i < paths.length; i += 10) answers.push(...(await Promise.all(paths.slice(i, i + 10).map(async (p) => (await viaNginx(commitHost, p)).status))));
      return { ms: Number(process.hrtime.bigint() - started) / 1e6 / paths.length, answers };
    };
    // Distinct app-shell paths: each one a miss of nginx's cache (Node asked, the bucket fetched).
    const paths = Array.from({ length: 60 }, (_, i) => `/route/${i}`);
    const first = await timed(paths);
    const again = await timed(paths); // within 4 s: nginx answers from its cache, only the bucket is asked
    expect(new Set([...first.answers, ...again.answers])).toEqual(new Set([200]));
    if (process.env.SHOW_FIGURES) console.log(`per request, 10 at a time: ${first.ms.toFixed(2)} ms asking Node, ${again.ms.toFixed(2)} ms from nginx's cache`);
  });

  test('a flip to hidden (a row update) stops nginx serving within its 4-5 s cache; the time is measured', async () => {
    const { prId } = await buildOf(C);
    expect((await viaNginx(stableHost, '/app.js')).status).toBe(200); // in nginx's cache now
    await server.core.db.orm.update(pullRequests).set({ visibility: 'hidden' }).where(eq(pullRequests.id, prId));
    const flippedAt = Date.now();
    let lastServed = 0;
    await eventually(async () => {
      const sentAt = Date.now() - flippedAt; // when asked, not when answered: a slow answer was still asked in time
      const answer = await viaNginx(stableHost, '/app.js');
      if (answer.status === 200) lastServed = sentAt;
      return answer.status === 404;
    }, 15_000);
    const hiddenAfter = Date.now() - flippedAt;
    if (process.env.SHOW_FIGURES) console.log(`flip to hidden: last served ${lastServed} ms after, 404 from ${hiddenAfter} ms`);
    expect(lastServed).toBeLessThan(5_500);
    expect((await viaNginx(stableHost, '/app.js')).headers['cache-control']).toBe('no-store');
    await server.core.db.orm.update(pullRequests).set({ visibility: 'public' }).where(eq(pullRequests.id, prId));
  });
});
