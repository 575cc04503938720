/**
 * Content-addressed builds and digest uploads (issue 15): a PR's next commit sends only what changed, identical
 * files are one inode, and every bad manifest or archive is refused with nothing stored.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import nock from 'nock';
import { eq } from '../src/db/orm.js';
import { buildContents, builds, objects, repositories } from '../src/db/tables.js';
import { compareContents, decodeContents } from '../src/previews/changed-pages.js';
import { FakeGitHub } from './helpers/fake-github.js';
import { forgetCleanStop, sha, startTestServer, type TestServer } from './helpers/server.js';
import { tarball } from './helpers/tarballs.js';

const OWNER = { id: 9001, login: 'octo-org' };
const DOCS = 7001;
const CONTRIBUTOR = { id: 555, login: 'contributor' };
const LABEL = 'safe for preview';
const [A, B, C] = [sha('a1'), sha('b2'), sha('c3')];

let fake: FakeGitHub;
let server: TestServer;

beforeEach(async () => {
  nock.enableNetConnect('127.0.0.1');
  fake = await new FakeGitHub().start();
  fake.addRepo({ id: DOCS, owner: OWNER, name: 'docs' });
});
afterEach(async () => {
  await server?.close();
  await fake.close();
});

const start = async (env: Record<string, string> = {}) => (server = await startTestServer({ ...fake.env, ...env }));

/** A site of `n` pages plus a shared stylesheet; `changed` pages get other content. */
function site(n: number, changed: number[] = []): Record<string, Buffer> {
  const files: Record<string, Buffer> = { 'assets/site.css': Buffer.from('body { font-family: serif }') };
  for (let i = 0; i < n; i++) files[`page-${i}.html`] = Buffer.from(`<h1>page ${i}${changed.includes(i) ? ' (changed)' : ''}</h1>`);
  return files;
}

const hashOf = (content: Buffer) => crypto.createHash('sha256').update(content).digest('hex');

function manifestOf(files: Record<string, Buffer>): string {
  const listed: Record<string, { sha256: string; size: number }> = {};
  for (const [p, content] of Object.entries(files)) listed[p] = { sha256: hashOf(content), size: content.length };
  return JSON.stringify({ files: listed });
}

async function postManifest(pr: number, commit: string, body: string, token?: string) {
  const res = await fetch(`${server.url}/create-build/${pr}/${commit}/manifest`, {
    method: 'POST',
    headers: { authorization: `Token ${token ?? (await server.token({ 'pull-request': pr }))}`, 'content-type': 'application/json' },
    body,
  });
  return { status: res.status, body: (await res.json()) as { missing?: string[]; error?: string; url?: string; visibility?: string } };
}

/** The digest upload's second step: a tar.gz of `send`, naming the manifest by its hash. */
const sendMissing = (pr: number, commit: string, manifest: string, send: Record<string, Buffer>) =>
  server.upload(pr, commit, tarball(send), { headers: { 'preview-gate-manifest': hashOf(Buffer.from(manifest)) } });

const buildDir = (pr: number, commit: string, visibility: 'public' | 'hidden' = 'public') =>
  path.join(server.config.buildsDir, 'docs', visibility === 'public' ? String(pr) : `hidden--${pr}`, commit.slice(0, 7));
/** The stored bytes the quota reads (the repositories' counters) and the sum of the object rows: always equal. */
async function objectBytes(): Promise<{ counted: number; rows: number }> {
  const { db } = server.core;
  const counted = (await db.orm.select({ bytes: repositories.objectBytes }).from(repositories)).reduce((sum, r) => sum + r.bytes, 0);
  const rows = (await db.orm.select({ size: objects.size }).from(objects)).reduce((sum, r) => sum + r.size, 0);
  return { counted, rows };
}
/** Bytes of the distinct contents of `files`: what storing them adds. */
const bytesOf = (files: Record<string, Buffer>) => [...new Map(Object.values(files).map((c) => [hashOf(c), c.length])).values()].reduce((sum, n) => sum + n, 0);
const objectFiles = () => (fs.readdirSync(path.join(server.config.dataDir, 'objects'), { recursive: true }) as string[]).filter((p) => /[0-9a-f]{64}$/.test(p));
const staging = () => fs.readdirSync(path.join(server.config.buildsDir, '.staging'));

test('a second commit sends only the changed file; the build is whole and shares inodes with the first', async () => {
  await start();
  fake.addPull(DOCS, { number: 1, user: CONTRIBUTOR, commits: [A, B], labels: [LABEL] });
  const first = site(50);
  expect((await server.upload(1, A, tarball(first))).status).toBe(201);

  const second = site(50, [7]);
  const manifest = manifestOf(second);
  const answer = await postManifest(1, B, manifest);
  expect(answer).toEqual({ status: 200, body: { missing: [hashOf(second['page-7.html']!)] } });
  const res = await sendMissing(1, B, manifest, { 'page-7.html': second['page-7.html']! });
  expect(res.status).toBe(201);
  expect(await res.json()).toEqual({ url: `https://pr1-${B.slice(0, 7)}--docs.previews.test/`, visibility: 'public' });

  for (const [name, content] of Object.entries(second)) {
    const file = path.join(buildDir(1, B), name);
    expect(fs.readFileSync(file)).toEqual(content);
    expect(fs.statSync(file).mode & 0o777).toBe(0o444);
    const same = fs.statSync(path.join(buildDir(1, A), name));
    // Unchanged files are the first build's inodes; the changed one is its own.
    expect(fs.statSync(file).ino === same.ino).toBe(name !== 'page-7.html');
  }
  // 51 distinct contents of the first build plus the changed page: each stored once.
  expect(objectFiles()).toHaveLength(52);
  expect(await server.core.db.orm.select().from(objects)).toHaveLength(52);
  const row = (await server.core.db.orm.select().from(builds)).find((b) => b.sha === B)!;
  expect({ files: row.files, bytes: row.bytes }).toEqual({ files: 51, bytes: Object.values(second).reduce((n, c) => n + c.length, 0) });
  expect(staging()).toEqual([]);
  // The file list kept for the changed pages names every file, sent or linked from the store: only page-7 changed.
  const listOf = async (commit: string) => {
    const build = (await server.core.db.orm.select().from(builds)).find((b) => b.sha === commit)!;
    return decodeContents((await server.core.db.orm.select().from(buildContents).where(eq(buildContents.buildId, build.id)))[0]!);
  };
  expect((await listOf(B)).paths).toEqual(Object.keys(second).sort());
  const { pages, assets } = compareContents(await listOf(A), await listOf(B));
  expect({ pages, assets }).toEqual({
    pages: { added: [], changed: ['page-7.html'], removed: [] },
    assets: { added: [], changed: [], removed: [] },
  });
});

test('a manifest naming only stored files stores the build at once and answers like an upload (202 hidden, then 409)', async () => {
  await start();
  fake.addPull(DOCS, { number: 2, user: CONTRIBUTOR, commits: [A, B] });
  expect((await server.upload(2, A, tarball(site(5)))).status).toBe(202);
  const renamed = { ...site(5) };
  renamed['moved/page-0.html'] = renamed['page-0.html']!;
  delete renamed['page-0.html'];
  const answer = await postManifest(2, B, manifestOf(renamed));
  expect(answer.status).toBe(202);
  expect(answer.body.visibility).toBe('hidden');
  expect(fs.readFileSync(path.join(buildDir(2, B, 'hidden'), 'moved', 'page-0.html'), 'utf8')).toBe('<h1>page 0</h1>');
  // The same SHA again: 409 at the manifest, before anything is sent.
  expect((await postManifest(2, B, manifestOf(site(5, [1])))).status).toBe(409);
});

test('a gzip-compressed manifest is named by the sha256 of its JSON; a bad encoding or a gzip bomb is refused', async () => {
  await start();
  fake.addPull(DOCS, { number: 10, user: CONTRIBUTOR, commits: [A], labels: [LABEL] });
  const files = site(3);
  const manifest = manifestOf(files);
  const post = async (body: Buffer, encoding: string) =>
    fetch(`${server.url}/create-build/10/${A}/manifest`, {
      method: 'POST',
      headers: { authorization: `Token ${await server.token({ 'pull-request': 10 })}`, 'content-encoding': encoding, 'content-type': 'application/json' },
      body: new Uint8Array(body),
    });
  let res = await post(Buffer.from(manifest), 'br');
  expect(res.status).toBe(400);
  expect((await res.json()).error).toMatch(/Content-Encoding "br" is not supported/);
  res = await post(Buffer.from(manifest), 'gzip');
  expect(res.status).toBe(400);
  expect((await res.json()).error).toMatch(/not valid gzip/);
  // 17 MiB of spaces inflate past the 16 MiB cap: refused without inflating it all.
  res = await post(zlib.gzipSync(Buffer.alloc(17 * 1024 * 1024, ' ')), 'gzip');
  expect(res.status).toBe(413);
  res = await post(zlib.gzipSync(manifest), 'gzip');
  expect(res.status).toBe(200);
  expect((await sendMissing(10, A, manifest, files)).status).toBe(201);
});

test('stored files are linked while the archive streams in; stored files sent anyway (small and large) replace those links', async () => {
  await start();
  fake.addPull(DOCS, { number: 4, user: CONTRIBUTOR, commits: [A, B], labels: [LABEL] });
  const big = crypto.randomBytes(2 * 1024 * 1024 + 3); // streamed to disk, not through the writer thread
  const first = { ...site(30), 'media/big.bin': big };
  expect((await server.upload(4, A, tarball(first))).status).toBe(201);
  const second: Record<string, Buffer> = { ...site(30, [5]), 'media/big.bin': big };
  const manifest = manifestOf(second);
  expect((await postManifest(4, B, manifest)).body).toEqual({ missing: [hashOf(second['page-5.html']!)] });
  // The missing page, and two the server holds: they are in the archive although not asked for.
  const res = await sendMissing(4, B, manifest, { 'page-5.html': second['page-5.html']!, 'page-9.html': second['page-9.html']!, 'media/big.bin': big });
  expect(res.status).toBe(201);
  for (const [rel, content] of Object.entries(second)) expect(fs.readFileSync(path.join(buildDir(4, B), rel))).toEqual(content);
  expect(fs.readdirSync(buildDir(4, B), { recursive: true })).toHaveLength(Object.keys(second).length + 2); // + assets/, media/
  expect(staging()).toEqual([]);
});

test('a digest upload whose archive breaks while its stored files are being linked leaves nothing; sent again, it is stored', async () => {
  await start();
  fake.addPull(DOCS, { number: 8, user: CONTRIBUTOR, commits: [A, B], labels: [LABEL] });
  expect((await server.upload(8, A, tarball(site(3000)))).status).toBe(201);
  const next = site(3000, [3]);
  const manifest = manifestOf(next);
  expect((await postManifest(8, B, manifest)).body.missing).toHaveLength(1);
  // Not gzip: refused at its first bytes, while ~3,000 links are being made.
  const broken = await server.upload(8, B, Buffer.from('not a gzip stream'), { headers: { 'preview-gate-manifest': hashOf(Buffer.from(manifest)) } });
  expect(broken.status).toBe(400);
  expect(staging()).toEqual([]);
  expect(fs.existsSync(buildDir(8, B))).toBe(false);
  expect((await sendMissing(8, B, manifest, { 'page-3.html': next['page-3.html']! })).status).toBe(201);
  expect(fs.readdirSync(buildDir(8, B), { recursive: true })).toHaveLength(3002); // 3,001 files and assets/
});

test('within one build, identical files are sent once and stored once', async () => {
  await start();
  fake.addPull(DOCS, { number: 3, user: CONTRIBUTOR, commits: [A], labels: [LABEL] });
  const logo = crypto.randomBytes(2048);
  const files = { 'a/logo.png': logo, 'b/logo.png': logo, 'index.html': Buffer.from('<h1>x</h1>') };
  const manifest = manifestOf(files);
  const answer = await postManifest(3, A, manifest);
  expect(answer.body.missing).toHaveLength(2);
  expect((await sendMissing(3, A, manifest, { 'a/logo.png': logo, 'index.html': files['index.html'] })).status).toBe(201);
  expect(fs.statSync(path.join(buildDir(3, A), 'a/logo.png')).ino).toBe(fs.statSync(path.join(buildDir(3, A), 'b/logo.png')).ino);
  expect(fs.readFileSync(path.join(buildDir(3, A), 'b/logo.png'))).toEqual(logo);
});

describe('bad manifests and digest uploads: a clear error, nothing stored', () => {
  const pr = 4;
  beforeEach(async () => {
    await start({ MAX_BUILD_FILES: '20', MAX_BUILD_BYTES: String(64 * 1024) });
    fake.addPull(DOCS, { number: pr, user: CONTRIBUTOR, commits: [A, B], labels: [LABEL] });
  });
  const nothingStored = async () => {
    expect(fs.existsSync(buildDir(pr, B))).toBe(false);
    expect(await server.core.db.orm.select().from(builds)).toEqual([]);
    expect(objectFiles()).toEqual([]);
    expect(staging()).toEqual([]);
  };

  test.each([
    ['over the file limit', 413, manifestOf(site(25)), /more than 20 files/],
    ['over the byte limit', 413, JSON.stringify({ files: { 'big.bin': { sha256: 'a'.repeat(64), size: 65 * 1024 } } }), /larger than 65536 bytes/],
    ['a path climbing out', 400, JSON.stringify({ files: { '../evil.html': { sha256: 'a'.repeat(64), size: 1 } } }), /outside the build/],
    ['an absolute path', 400, JSON.stringify({ files: { '/etc/passwd': { sha256: 'a'.repeat(64), size: 1 } } }), /absolute path/],
    ['a backslash', 400, JSON.stringify({ files: { 'a\\b.html': { sha256: 'a'.repeat(64), size: 1 } } }), /backslash/],
    ['a file where a folder is needed', 400, JSON.stringify({ files: { a: { sha256: 'a'.repeat(64), size: 1 }, 'a/b': { sha256: 'b'.repeat(64), size: 1 } } }), /conflicts/],
    ['one path twice', 400, JSON.stringify({ files: { 'a.html': { sha256: 'a'.repeat(64), size: 1 }, './a.html': { sha256: 'b'.repeat(64), size: 1 } } }), /more than once/],
    ['a hash that is not sha256', 400, JSON.stringify({ files: { 'a.html': { sha256: 'abc', size: 1 } } }), /64 lower-case hex/],
    ['a negative size', 400, JSON.stringify({ files: { 'a.html': { sha256: 'a'.repeat(64), size: -1 } } }), /whole number/],
    ['not JSON', 400, '{"files":', /not valid JSON/],
    ['the wrong shape', 400, JSON.stringify({ files: ['a.html'] }), /must be JSON/],
  ])('%s → %i', async (_what, status, body, message) => {
    const answer = await postManifest(pr, B, body);
    expect(answer.status).toBe(status);
    expect(answer.body.error).toMatch(message);
    await nothingStored();
  });

  test('a manifest over 16 MiB → 413 before it is read whole', async () => {
    const answer = await postManifest(pr, B, ' '.repeat(17 * 1024 * 1024));
    expect(answer.status).toBe(413);
    await nothingStored();
  });

  test('without a valid token → 401/403, the manifest is not kept', async () => {
    const res = await fetch(`${server.url}/create-build/${pr}/${B}/manifest`, { method: 'POST', body: manifestOf(site(2)) });
    expect(res.status).toBe(401);
    expect((await postManifest(pr, B, manifestOf(site(2)), await server.token({ 'pull-request': pr + 1 }))).status).toBe(403);
  });

  test('a sent file whose hash differs from the manifest → 400', async () => {
    const files = site(3);
    const manifest = manifestOf(files);
    expect((await postManifest(pr, B, manifest)).status).toBe(200);
    const res = await sendMissing(pr, B, manifest, { ...files, 'page-1.html': Buffer.from('<h1>page X</h1>') });
    expect(res.status).toBe(400);
    expect((await res.json()).error).toMatch(/"page-1.html" does not match the manifest/);
    await nothingStored();
  });

  test('a file named in the manifest neither sent nor stored → 400', async () => {
    const files = site(3);
    const manifest = manifestOf(files);
    await postManifest(pr, B, manifest);
    const { 'page-2.html': _left, ...sent } = files;
    const res = await sendMissing(pr, B, manifest, sent);
    expect(res.status).toBe(400);
    expect((await res.json()).error).toMatch(/names "page-2.html" .* neither sent nor stored; send the manifest again/);
    await nothingStored();
  });

  test('a file the manifest does not name → 400', async () => {
    const files = site(2);
    const manifest = manifestOf(files);
    await postManifest(pr, B, manifest);
    const res = await sendMissing(pr, B, manifest, { ...files, 'extra.html': Buffer.from('x') });
    expect(res.status).toBe(400);
    expect((await res.json()).error).toMatch(/"extra.html", which the manifest does not name/);
    await nothingStored();
  });

  test('a Preview-Gate-Manifest header that matches no manifest → 400; a malformed one → 400', async () => {
    const files = site(2);
    const manifest = manifestOf(files);
    await postManifest(pr, B, manifest);
    // The header of another body (one byte differs): not the manifest that was sent.
    let res = await sendMissing(pr, B, `${manifest} `, files);
    expect(res.status).toBe(400);
    expect((await res.json()).error).toMatch(/names no manifest sent for this commit/);
    // A manifest is bound to its commit.
    res = await server.upload(pr, A, tarball(files), { headers: { 'preview-gate-manifest': hashOf(Buffer.from(manifest)) } });
    expect(res.status).toBe(400);
    res = await server.upload(pr, B, tarball(files), { headers: { 'preview-gate-manifest': 'not-a-hash' } });
    expect(res.status).toBe(400);
    expect((await res.json()).error).toMatch(/must be the sha256/);
    await nothingStored();
  });
});

test('a server restarted between the manifest and its upload still takes the upload (the manifest is kept in SQLite)', async () => {
  await start();
  fake.addPull(DOCS, { number: 4, user: CONTRIBUTOR, commits: [A, B], labels: [LABEL] });
  expect((await server.upload(4, A, tarball(site(3)))).status).toBe(201);
  const next = site(3, [1]);
  const manifest = manifestOf(next);
  expect((await postManifest(4, B, manifest)).body.missing).toEqual([hashOf(next['page-1.html']!)]);
  await server.stop();
  server = await startTestServer(fake.env, server.tmp, { seedSecret: false });
  expect((await sendMissing(4, B, manifest, { 'page-1.html': next['page-1.html']! })).status).toBe(201);
  expect(fs.readFileSync(path.join(buildDir(4, B), 'page-1.html'), 'utf8')).toBe('<h1>page 1 (changed)</h1>');
  expect(fs.readFileSync(path.join(buildDir(4, B), 'page-2.html'), 'utf8')).toBe('<h1>page 2</h1>');
});

test('two concurrent digest uploads of one SHA: exactly one wins, the other gets 409', async () => {
  await start();
  fake.addPull(DOCS, { number: 5, user: CONTRIBUTOR, commits: [A], labels: [LABEL] });
  const files = site(30);
  const manifest = manifestOf(files);
  const [m1, m2] = await Promise.all([postManifest(5, A, manifest), postManifest(5, A, manifest)]);
  expect([m1.status, m2.status]).toEqual([200, 200]);
  const statuses = (await Promise.all([sendMissing(5, A, manifest, files), sendMissing(5, A, manifest, files)])).map((r) => r.status).sort();
  expect(statuses).toEqual([201, 409]);
  expect(fs.readdirSync(buildDir(5, A)).length).toBe(31);
  expect(staging()).toEqual([]);
});

test('an object removed by cleanup after the manifest named it: the upload says to send the manifest again, then works', async () => {
  await start();
  fake.addPull(DOCS, { number: 6, user: CONTRIBUTOR, commits: [A], labels: [LABEL] });
  fake.addPull(DOCS, { number: 7, user: CONTRIBUTOR, commits: [B], labels: [LABEL] });
  const files = site(4);
  expect((await server.upload(6, A, tarball(files))).status).toBe(201);
  const next = site(4, [0]);
  const manifest = manifestOf(next);
  expect((await postManifest(7, B, manifest)).body.missing).toEqual([hashOf(next['page-0.html']!)]);
  // PR 6 closes and its builds are removed: the objects PR 7's manifest relied on go with them.
  fake.change(DOCS, 6, { state: 'closed' });
  await server.previews.reconcile((await server.core.registry.findRepositoryById(DOCS))!, 6, { event: 'test' });
  expect(await objectBytes()).toEqual({ counted: bytesOf(files), rows: bytesOf(files) });
  const result = await server.previews.cleanup(new Date(Date.now() + 25 * 3600_000));
  expect(result).toMatchObject({ removedPrs: 1, freed: { objects: 5 } });
  // Cleanup took the objects' bytes off the count with their rows.
  expect(await objectBytes()).toEqual({ counted: 0, rows: 0 });

  const res = await sendMissing(7, B, manifest, { 'page-0.html': next['page-0.html']! });
  expect(res.status).toBe(400);
  expect((await res.json()).error).toMatch(/neither sent nor stored; send the manifest again/);
  expect(fs.existsSync(buildDir(7, B))).toBe(false);
  // Asked again, the server now lacks them all, and the build is stored whole.
  expect((await postManifest(7, B, manifest)).body.missing).toHaveLength(5);
  expect((await sendMissing(7, B, manifest, next)).status).toBe(201);
  expect(fs.readFileSync(path.join(buildDir(7, B), 'page-1.html'), 'utf8')).toBe('<h1>page 1</h1>');
});

test('an object damaged by a power loss is dropped at the next start and never serves the same content again', async () => {
  await start();
  fake.addPull(DOCS, { number: 8, user: CONTRIBUTOR, commits: [A, B], labels: [LABEL] });
  const files = site(3);
  expect((await server.upload(8, A, tarball(files))).status).toBe(201);
  expect(await objectBytes()).toEqual({ counted: bytesOf(files), rows: bytesOf(files) });
  await server.stop();
  // What a power loss leaves: no clean-stop marker, one file (and so its object) empty.
  await forgetCleanStop(server.config);
  const damaged = path.join(buildDir(8, A), 'page-1.html');
  fs.chmodSync(damaged, 0o644);
  fs.truncateSync(damaged, 0);

  server = await startTestServer(fake.env, server.tmp, { seedSecret: false });
  expect(server.logs.some((l) => /object stored just before an unclean stop is damaged/.test(l.msg))).toBe(true);
  expect(fs.existsSync(buildDir(8, A))).toBe(false);
  // The damaged object went with its row and bytes; the build that linked the others was dropped, so they went too.
  expect(await objectBytes()).toEqual({ counted: 0, rows: 0 });
  // The same content again, by manifest: the damaged object is reported missing, not trusted.
  const manifest = manifestOf(files);
  expect((await postManifest(8, B, manifest)).body.missing).toEqual(Object.values(files).map(hashOf));
  expect((await sendMissing(8, B, manifest, files)).status).toBe(201);
  expect(fs.readFileSync(path.join(buildDir(8, B), 'page-1.html'), 'utf8')).toBe('<h1>page 1</h1>');
  // And by full upload of the first SHA.
  expect((await server.upload(8, A, tarball(files))).status).toBe(201);
  expect(fs.readFileSync(path.join(buildDir(8, A), 'page-1.html'), 'utf8')).toBe('<h1>page 1</h1>');
  expect(await objectBytes()).toEqual({ counted: bytesOf(files), rows: bytesOf(files) });
});

test('cleanup forgets the rows of objects gone from the store, except rows of the last minute (their objects are linked just after the answer)', async () => {
  await start();
  fake.addPull(DOCS, { number: 12, user: CONTRIBUTOR, commits: [A], labels: [LABEL] });
  const files = site(3);
  expect((await server.upload(12, A, tarball(files))).status).toBe(201);
  await waitFor(() => objectFiles().length === 4);
  // One object removed behind the server's back (the build keeps its own link to the content).
  const gone = files['page-2.html']!;
  fs.rmSync(path.join(server.config.dataDir, 'objects', objectFiles().find((p) => p.endsWith(hashOf(gone)))!));

  expect((await server.previews.cleanup()).freed).toEqual({ objects: 0, bytes: 0 });
  expect(await objectBytes()).toEqual({ counted: bytesOf(files), rows: bytesOf(files) });
  // Two minutes on, its row and bytes go; the others stay.
  await server.previews.cleanup(new Date(Date.now() + 120_000));
  expect(await objectBytes()).toEqual({ counted: bytesOf(files) - gone.length, rows: bytesOf(files) - gone.length });
  expect((await server.core.db.orm.select({ sha256: objects.sha256 }).from(objects)).map((r) => r.sha256).sort()).toEqual(
    Object.values(files).filter((c) => c !== gone).map(hashOf).sort(),
  );
});

async function waitFor(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 100 && !condition(); i++) await new Promise((r) => setTimeout(r, 20));
  expect(condition()).toBe(true);
}

test('a refused upload adds no object; the account quota counts stored bytes, not logical ones', async () => {
  await start({ MAX_ACCOUNT_BYTES: String(300 * 1024) });
  fake.addPull(DOCS, { number: 9, user: CONTRIBUTOR, commits: [A, B, C], labels: [LABEL] });
  // A commit GitHub does not know is refused after the body was read: nothing of it stays.
  const big = { 'data.bin': crypto.randomBytes(200 * 1024) };
  expect((await server.upload(9, sha('ff'), tarball(big))).status).toBe(403);
  expect(objectFiles()).toEqual([]);
  expect((await server.upload(9, A, tarball(big))).status).toBe(201);
  // The same 200 KiB again costs nothing: within a 300 KiB quota.
  expect((await server.upload(9, B, tarball({ ...big, 'index.html': Buffer.from('<h1>b</h1>') }))).status).toBe(201);
  const res = await server.upload(9, C, tarball({ 'other.bin': crypto.randomBytes(200 * 1024) }));
  expect(res.status).toBe(413);
  expect((await res.json()).error).toMatch(/MAX_ACCOUNT_BYTES/);
  expect(objectFiles()).toHaveLength(2);
});
