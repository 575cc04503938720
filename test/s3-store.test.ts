/**
 * Builds kept in an S3 bucket (STORAGE=s3, issue 29): an upload puts each new content once and becomes rows; a
 * digest upload puts only what changed; a flip, a close and a cleanup are row changes; the cleanup's garbage
 * collection removes what no build references after the grace period. Through the real server, against a real
 * engine (Ceph RGW: `npm run test:engines`); skipped without S3_ENDPOINT. Each test has a bucket of its own.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import nock from 'nock';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { eq } from '../src/db/orm.js';
import { buildFiles, builds, objects, repositories } from '../src/db/tables.js';
import { contentTypeOf } from '../src/storage/content-types.js';
import { S3Objects } from '../src/storage/s3-objects.js';
import { FakeGitHub } from './helpers/fake-github.js';
import { sha, startTestServer, type TestServer } from './helpers/server.js';
import { tarball } from './helpers/tarballs.js';

const OWNER = { id: 9001, login: 'octo-org' };
const DOCS = 7001;
const CONTRIBUTOR = { id: 555, login: 'contributor' };
const LABEL = 'safe for preview';
const [A, B, C] = [sha('a1'), sha('b2'), sha('c3')];
const HOUR = 3600_000;

const hashOf = (content: Buffer) => crypto.createHash('sha256').update(content).digest('hex');

test('content types of build_files rows are nginx/preview-types.conf\'s', () => {
  expect(contentTypeOf('index.html')).toBe('text/html');
  expect(contentTypeOf('assets/app.MJS')).toBe('text/javascript');
  expect(contentTypeOf('fonts/a.woff2')).toBe('font/woff2');
  expect(contentTypeOf('LICENSE')).toBe('application/octet-stream');
  expect(contentTypeOf('archive.unknown')).toBe('application/octet-stream');
});

const engineEnv = process.env.S3_ENDPOINT
  ? {
      S3_ENDPOINT: process.env.S3_ENDPOINT,
      S3_REGION: process.env.S3_REGION ?? 'us-east-1',
      AWS_ACCESS_KEY_ID: process.env.AWS_ACCESS_KEY_ID ?? '',
      AWS_SECRET_ACCESS_KEY: process.env.AWS_SECRET_ACCESS_KEY ?? '',
    }
  : undefined;
const describeEngine = engineEnv ? describe : describe.skip;
const engineName = engineEnv
  ? `STORAGE=s3 against the engine at ${engineEnv.S3_ENDPOINT}`
  : 'STORAGE=s3 against a real S3 engine (skipped: S3_ENDPOINT is unset; run `npm run test:engines`)';

describeEngine(engineName, () => {
  let fake: FakeGitHub;
  let server: TestServer;
  let bucketName: string;

  beforeEach(async () => {
    nock.enableNetConnect('127.0.0.1');
    fake = await new FakeGitHub().start();
    fake.addRepo({ id: DOCS, owner: OWNER, name: 'docs' });
    bucketName = `preview-gate-store-${crypto.randomBytes(6).toString('hex')}`;
    const admin = new S3Client({ endpoint: engineEnv!.S3_ENDPOINT, region: engineEnv!.S3_REGION, forcePathStyle: true });
    await admin.send(new CreateBucketCommand({ Bucket: bucketName }));
    admin.destroy();
  });
  afterEach(async () => {
    await server?.close();
    await fake.close();
  });

  const start = async (env: Record<string, string> = {}) =>
    (server = await startTestServer({ ...fake.env, ...engineEnv!, STORAGE: 's3', S3_BUCKET: bucketName, CLEANUP_AFTER_HOURS: '0', ...env }));
  const bucket = () => server.core.store.bucket!.bucket;
  const inBucket = async () => {
    const listed = new Map<string, Date | undefined>();
    for await (const object of bucket().list()) listed.set(`${object.repositoryId}/${object.sha256}`, object.lastModified);
    return listed;
  };
  /** Requests the server sends to the bucket from now on. */
  const countRequests = () => {
    const counted: string[] = [];
    const client = bucket().client;
    const send = client.send.bind(client);
    client.send = ((command: { constructor: { name: string } }, ...rest: unknown[]) => {
      counted.push(command.constructor.name);
      return (send as (...args: unknown[]) => unknown)(command, ...rest);
    }) as typeof client.send;
    return counted;
  };
  const rows = async () => server.core.db.orm.select().from(buildFiles);
  const readyBuilds = async () => (await server.core.db.orm.select().from(builds)).filter((b) => b.status === 'ready');
  const read = async (object: S3Objects, repositoryId: number, hash: string) => {
    const body = await object.get(repositoryId, hash);
    const chunks: Buffer[] = [];
    for await (const chunk of body!) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  };
  function site(n: number, changed: number[] = []): Record<string, Buffer> {
    const files: Record<string, Buffer> = { 'assets/site.css': Buffer.from('body { font-family: serif }'), 'copy/site.css': Buffer.from('body { font-family: serif }') };
    for (let i = 0; i < n; i++) files[`page-${i}.html`] = Buffer.from(`<h1>page ${i}${changed.includes(i) ? ' (changed)' : ''}</h1>`);
    return files;
  }
  const manifestOf = (files: Record<string, Buffer>) =>
    JSON.stringify({ files: Object.fromEntries(Object.entries(files).map(([p, c]) => [p, { sha256: hashOf(c), size: c.length }])) });

  test('a first upload puts every content once and is rows: each build_files object is in the bucket with its bytes; nothing in a builds folder', async () => {
    await start();
    fake.addPull(DOCS, { number: 1, user: CONTRIBUTOR, commits: [A, B], labels: [LABEL] });
    const files = site(20);
    const puts = countRequests();
    const res = await server.upload(1, A, tarball(files));
    expect(res.status).toBe(201);
    // 21 distinct contents (the stylesheet twice): 21 puts, nothing else but the puts.
    expect(puts.filter((c) => c === 'PutObjectCommand')).toHaveLength(21);
    const stored = await rows();
    expect(stored.map((r) => r.path).sort()).toEqual(Object.keys(files).sort());
    const repo = (await server.core.db.orm.select().from(repositories))[0]!;
    for (const row of stored) {
      expect(row).toMatchObject({ repositoryId: repo.id, sha256: hashOf(files[row.path]!), size: files[row.path]!.length, contentType: contentTypeOf(row.path) });
      expect(hashOf(await read(bucket(), row.repositoryId, row.sha256))).toBe(row.sha256);
    }
    expect((await inBucket()).size).toBe(21);
    const [build] = await readyBuilds();
    expect(build).toMatchObject({ sha: A, files: 22, contentAddressed: true });
    // The quota's counter is the bytes put.
    const distinct = [...new Map(Object.values(files).map((c) => [hashOf(c), c.length])).values()].reduce((a, b) => a + b, 0);
    expect(repo.objectBytes).toBe(distinct);
    // The builds folder holds only the (empty) scratch: no site, no PR folder, no .latest.
    expect(server.buildsTree().filter((p) => !p.startsWith('.staging') && !p.startsWith('.no-objects'))).toEqual([]);
    expect(fs.readdirSync(server.core.store.stagingDir)).toEqual([]);
    const health = await fetch(`${server.url}/health`);
    expect(health.status).toBe(200);
    expect(await health.json()).toMatchObject({ status: 'ok', builds: 'ok', bucket: 'ok' });
    // The whole next commit as a plain upload: only its one new content is put.
    const before = puts.length;
    expect((await server.upload(1, B, tarball(site(20, [3])))).status).toBe(201);
    expect(puts.slice(before).filter((c) => c === 'PutObjectCommand')).toHaveLength(1);
    expect((await inBucket()).size).toBe(22);
  });

  test('a digest upload of the next commit puts only the changed file; a manifest of stored files puts nothing', async () => {
    await start();
    fake.addPull(DOCS, { number: 1, user: CONTRIBUTOR, commits: [A, B, C], labels: [LABEL] });
    expect((await server.upload(1, A, tarball(site(30)))).status).toBe(201);
    const second = site(30, [7]);
    const manifest = manifestOf(second);
    const puts = countRequests();
    const answer = await fetch(`${server.url}/create-build/1/${B}/manifest`, {
      method: 'POST',
      headers: { authorization: `Token ${await server.token({ 'pull-request': 1 })}`, 'content-type': 'application/json' },
      body: manifest,
    });
    expect(await answer.json()).toEqual({ missing: [hashOf(second['page-7.html']!)] });
    const res = await server.upload(1, B, tarball({ 'page-7.html': second['page-7.html']! }), { headers: { 'preview-gate-manifest': hashOf(Buffer.from(manifest)) } });
    expect(res.status).toBe(201);
    expect(puts.filter((c) => c === 'PutObjectCommand')).toHaveLength(1);
    const build = (await readyBuilds()).find((b) => b.sha === B)!;
    const files = await server.core.db.orm.select().from(buildFiles).where(eq(buildFiles.buildId, build.id));
    expect(Object.fromEntries(files.map((f) => [f.path, f.sha256]))).toEqual(Object.fromEntries(Object.entries(second).map(([p, c]) => [p, hashOf(c)])));
    expect((await inBucket()).size).toBe(32);
    // Every file stored already: the manifest alone stores the build, with no request to the bucket.
    const before = puts.length;
    const renamed = { ...second, 'moved/page-0.html': second['page-0.html']! };
    const all = await fetch(`${server.url}/create-build/1/${C}/manifest`, {
      method: 'POST',
      headers: { authorization: `Token ${await server.token({ 'pull-request': 1 })}`, 'content-type': 'application/json' },
      body: manifestOf(renamed),
    });
    expect(all.status).toBe(201);
    expect(puts.slice(before)).toEqual([]);
    expect(await server.core.db.orm.select().from(objects)).toHaveLength(32);
  });

  test('a label flip public → hidden → public sends nothing to the bucket: the PR row is the truth', async () => {
    await start();
    fake.addPull(DOCS, { number: 1, user: CONTRIBUTOR, commits: [A], labels: [LABEL] });
    expect((await server.upload(1, A, tarball(site(3)))).status).toBe(201);
    const before = await inBucket();
    const requests = countRequests();
    const repo = (await server.core.db.orm.select().from(repositories))[0]!;
    fake.change(DOCS, 1, { labels: [] });
    expect((await server.previews.reconcile(repo, 1, { event: 'test' })).pr.visibility).toBe('hidden');
    fake.change(DOCS, 1, { labels: [LABEL] });
    expect((await server.previews.reconcile(repo, 1, { event: 'test' })).pr.visibility).toBe('public');
    expect(requests).toEqual([]);
    expect(await inBucket()).toEqual(before);
    expect(await rows()).toHaveLength(5);
  });

  test("sites are the repository's row: the first upload takes the settings' site at once, a later one is moved with nothing sent to the bucket", async () => {
    fake.repos.get(DOCS)!.files['.github/preview-gate.yml'] = 'site: handbook\n';
    await start();
    fake.addPull(DOCS, { number: 4, user: CONTRIBUTOR, commits: [A, B], labels: [LABEL] });
    const res = await server.upload(4, A, tarball({ 'index.html': Buffer.from('<h1>hi</h1>') }));
    expect(res.status).toBe(201);
    expect(((await res.json()) as { url: string }).url).toBe(`https://pr4-${A.slice(0, 7)}--handbook.previews.test/`);
    expect((await server.core.registry.findRepositoryById(DOCS))!.site).toBe('handbook');
    // Builds stored: a new site is a move-site job, which changes the row only.
    fake.repos.get(DOCS)!.files['.github/preview-gate.yml'] = 'site: manual\n';
    const requests = countRequests();
    expect((await server.upload(4, B, tarball({ 'index.html': Buffer.from('<h1>hi</h1>') }))).status).toBe(201);
    await server.previews.settled();
    expect((await server.core.registry.findRepositoryById(DOCS))!.site).toBe('manual');
    expect(requests).toEqual([]);
    expect((await rows()).map((r) => r.path)).toEqual(['index.html', 'index.html']);
  });

  test('closing + cleanup removes the rows; after the grace, GC removes objects only that PR used and keeps those another PR uses', async () => {
    await start();
    fake.addPull(DOCS, { number: 1, user: CONTRIBUTOR, commits: [A], labels: [LABEL] });
    fake.addPull(DOCS, { number: 2, user: CONTRIBUTOR, commits: [B], labels: [LABEL] });
    const shared = Buffer.from('shared by both PRs');
    const onlyOne = Buffer.from('only in PR 1');
    expect((await server.upload(1, A, tarball({ 'index.html': onlyOne, 'shared.css': shared }))).status).toBe(201);
    expect((await server.upload(2, B, tarball({ 'index.html': Buffer.from('PR 2'), 'shared.css': shared }))).status).toBe(201);
    // A failed upload's put: an object without a row, removed after the grace as well.
    const repo = (await server.core.db.orm.select().from(repositories))[0]!;
    const stray = Buffer.from('put by an upload that then failed');
    await bucket().putOnce(repo.id, hashOf(stray), stray, stray.length);
    expect((await inBucket()).size).toBe(4);

    fake.change(DOCS, 1, { state: 'closed' });
    await server.previews.reconcile(repo, 1, { event: 'test' });
    // Within the grace: the builds' rows go, every object stays (a digest upload may be about to use it).
    const soon = await server.previews.cleanup(new Date(Date.now() + 1000));
    expect(soon.removedPrs).toBe(1);
    expect(soon.freed.objects).toBe(0);
    expect((await rows()).map((r) => r.path).sort()).toEqual(['index.html', 'shared.css']);
    expect((await inBucket()).size).toBe(4);

    const later = await server.previews.cleanup(new Date(Date.now() + 25 * HOUR));
    expect(later.freed).toEqual({ objects: 2, bytes: onlyOne.length + stray.length });
    expect([...(await inBucket()).keys()].sort()).toEqual([`${repo.id}/${hashOf(Buffer.from('PR 2'))}`, `${repo.id}/${hashOf(shared)}`].sort());
    const left = await server.core.db.orm.select().from(objects);
    expect(left.map((o) => o.sha256).sort()).toEqual([hashOf(Buffer.from('PR 2')), hashOf(shared)].sort());
    const counted = (await server.core.db.orm.select().from(repositories))[0]!.objectBytes;
    expect(counted).toBe(shared.length + 'PR 2'.length);
  });

  test('an upload that relies on an object the GC removed meanwhile fails (503) with nothing recorded; sent again, it is stored', async () => {
    await start();
    fake.addPull(DOCS, { number: 1, user: CONTRIBUTOR, commits: [A], labels: [LABEL] });
    fake.addPull(DOCS, { number: 2, user: CONTRIBUTOR, commits: [B], labels: [LABEL] });
    const page = Buffer.from('<h1>the same page</h1>');
    expect((await server.upload(1, A, tarball({ 'index.html': page }))).status).toBe(201);
    const repo = (await server.core.db.orm.select().from(repositories))[0]!;
    fake.change(DOCS, 1, { state: 'closed' });
    await server.previews.reconcile(repo, 1, { event: 'test' });
    await server.previews.cleanup(new Date(Date.now() + 1000));
    // PR 2's upload finds the object recorded as it starts; the GC takes it before the upload commits.
    const s3 = server.core.store.bucket!;
    const putFresh = s3.putFresh.bind(s3);
    s3.putFresh = async (...args) => {
      await server.previews.cleanup(new Date(Date.now() + 25 * HOUR));
      return putFresh(...args);
    };
    const res = await server.upload(2, B, tarball({ 'index.html': page }));
    expect(res.status).toBe(503);
    expect(await res.json()).toEqual({ error: 'Files this build shares with earlier builds were removed from the bucket meanwhile; send the upload again.' });
    expect(await readyBuilds()).toEqual([]);
    expect(await rows()).toEqual([]);
    s3.putFresh = putFresh;
    expect((await server.upload(2, B, tarball({ 'index.html': page }))).status).toBe(201);
    expect(hashOf(await read(bucket(), repo.id, hashOf(page)))).toBe(hashOf(page));
  });

  test('a bucket that refuses the puts (wrong secret): the upload answers 503 in one sentence, no build is ready, /health says unavailable', async () => {
    await start({ AWS_SECRET_ACCESS_KEY: 'not-the-secret-of-this-engine' });
    fake.addPull(DOCS, { number: 1, user: CONTRIBUTOR, commits: [A], labels: [LABEL] });
    const res = await server.upload(1, A, tarball(site(3)));
    expect(res.status).toBe(503);
    expect(await res.json()).toEqual({ error: 'The build could not be stored in the bucket; nothing was published. Try the upload again.' });
    expect(await server.core.db.orm.select().from(builds)).toEqual([]);
    expect(await rows()).toEqual([]);
    expect(await server.core.db.orm.select().from(objects)).toEqual([]);
    expect(fs.readdirSync(server.core.store.stagingDir)).toEqual([]);
    expect(JSON.stringify(server.logs)).not.toContain('not-the-secret-of-this-engine');
    const health = await fetch(`${server.url}/health`);
    expect(health.status).toBe(503);
    expect(await health.json()).toEqual({ status: 'unavailable', error: 'The database, the builds directory or the bucket is not usable.' });
  });
});
