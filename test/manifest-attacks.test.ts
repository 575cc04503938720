/**
 * Issue 25, digest uploads under attack: sizes come from what was hashed or what is stored, never from the
 * manifest; the 201 names the site the build is stored under.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import nock from 'nock';
import { builds, objects, repositories } from '../src/db/tables.js';
import { eventually } from './helpers/eventually.js';
import { FakeGitHub } from './helpers/fake-github.js';
import { sha, startTestServer, type TestServer } from './helpers/server.js';
import { tarball } from './helpers/tarballs.js';

const OWNER = { id: 9001, login: 'octo-org' };
const DOCS = 7001;
const CONTRIBUTOR = { id: 555, login: 'contributor' };
const LABEL = 'safe for preview';
const [A, B] = [sha('a1'), sha('b2')];
const MiB = 1024 * 1024;

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
const hashOf = (content: Buffer) => crypto.createHash('sha256').update(content).digest('hex');

async function postManifest(pr: number, commit: string, body: string) {
  const res = await fetch(`${server.url}/create-build/${pr}/${commit}/manifest`, {
    method: 'POST',
    headers: { authorization: `Token ${await server.token({ 'pull-request': pr })}`, 'content-type': 'application/json' },
    body,
  });
  return { status: res.status, body: (await res.json()) as { missing?: string[]; error?: string; url?: string } };
}
const sendMissing = (pr: number, commit: string, manifest: string, send: Record<string, Buffer>) =>
  server.upload(pr, commit, tarball(send), { headers: { 'preview-gate-manifest': hashOf(Buffer.from(manifest)) } });

async function objectBytes(): Promise<{ counted: number; rows: number }> {
  const { db } = server.core;
  const counted = (await db.orm.select({ bytes: repositories.objectBytes }).from(repositories)).reduce((sum, r) => sum + r.bytes, 0);
  const rows = (await db.orm.select({ size: objects.size }).from(objects)).reduce((sum, r) => sum + r.size, 0);
  return { counted, rows };
}

/** Distinct incompressible contents of `size` bytes each. */
const noise = (n: number, size: number) => Array.from({ length: n }, () => crypto.randomBytes(size));

test('a content sent once and listed again at an unsent path with size 0 counts its real bytes: the quota holds', async () => {
  await start({ MAX_ACCOUNT_BYTES: String(5 * MiB) });
  fake.addPull(DOCS, { number: 1, user: CONTRIBUTOR, commits: [A, B, sha('c3'), sha('d4'), sha('e5'), sha('f6'), sha('a7'), sha('b8')], labels: [LABEL] });
  const commits = [A, B, sha('c3'), sha('d4'), sha('e5'), sha('f6'), sha('a7'), sha('b8')];
  let refused = 0;
  for (const commit of commits) {
    const [content] = noise(1, 3 * MiB) as [Buffer];
    // The manifest lists the content twice: once sent (its real size), once at a path not sent, size 0.
    const manifest = JSON.stringify({ files: { 'big.bin': { sha256: hashOf(content), size: content.length }, 'again.bin': { sha256: hashOf(content), size: 0 } } });
    const answer = await postManifest(1, commit, manifest);
    if (answer.status !== 200) {
      refused++;
      continue;
    }
    const res = await sendMissing(1, commit, manifest, { 'big.bin': content });
    if (res.status === 413) refused++;
  }
  // 5 MiB hold at most one 3 MiB content: the rest are refused, and the stored bytes are the real ones.
  expect(refused).toBeGreaterThanOrEqual(commits.length - 2);
  const stored = await objectBytes();
  expect(stored.counted).toBe(stored.rows);
  expect(stored.rows).toBeLessThanOrEqual(2 * 3 * MiB);
  for (const row of (await server.core.db.orm.select().from(objects))) expect(row.size).toBe(3 * MiB);
});

test('a stored content listed 400 times with size 0 is a build of its real size: MAX_BUILD_BYTES holds, usage shows the truth', async () => {
  await start({ MAX_BUILD_BYTES: String(10 * MiB) });
  fake.addPull(DOCS, { number: 2, user: CONTRIBUTOR, commits: [A, B], labels: [LABEL] });
  const [content] = noise(1, 2 * MiB) as [Buffer];
  expect((await server.upload(2, A, tarball({ 'big.bin': content }))).status).toBe(201);
  const files: Record<string, { sha256: string; size: number }> = {};
  for (let i = 0; i < 400; i++) files[`copy-${i}.bin`] = { sha256: hashOf(content), size: 0 };
  const answer = await postManifest(2, B, JSON.stringify({ files }));
  expect(answer.status).toBe(413);
  expect(answer.body.error).toMatch(/larger than 10485760 bytes/);
  expect((await server.core.db.orm.select().from(builds)).map((b) => b.sha)).toEqual([A]);
  // Four copies fit: the build's bytes are the real ones.
  const four: Record<string, { sha256: string; size: number }> = {};
  for (let i = 0; i < 4; i++) four[`copy-${i}.bin`] = { sha256: hashOf(content), size: 0 };
  expect((await postManifest(2, B, JSON.stringify({ files: four }))).status).toBe(201);
  const row = (await server.core.db.orm.select().from(builds)).find((b) => b.sha === B)!;
  expect(row.bytes).toBe(4 * content.length);
});

test('one sha256 listed with two different sizes is a 400 with one sentence', async () => {
  await start();
  fake.addPull(DOCS, { number: 3, user: CONTRIBUTOR, commits: [A], labels: [LABEL] });
  const hash = hashOf(Buffer.from('x'));
  const answer = await postManifest(3, A, JSON.stringify({ files: { 'a.txt': { sha256: hash, size: 1 }, 'b.txt': { sha256: hash, size: 2 } } }));
  expect(answer.status).toBe(400);
  expect(answer.body.error).toMatch(/^[^.]*\.$/);
  expect(answer.body.error).toContain(hash);
});

test("the 201 of a repository's first upload names the site the settings chose, where the build is stored", async () => {
  fake.repos.get(DOCS)!.files['.github/preview-gate.yml'] = 'site: handbook\n';
  await start();
  fake.addPull(DOCS, { number: 4, user: CONTRIBUTOR, commits: [A], labels: [LABEL] });
  const res = await server.upload(4, A, tarball({ 'index.html': Buffer.from('<h1>hi</h1>') }));
  const body = (await res.json()) as { url: string };
  expect(res.status).toBe(201);
  await server.previews.settled();
  const site = (await server.core.registry.findRepositoryById(DOCS))!.site;
  expect(site).toBe('handbook');
  expect(body.url).toBe(`https://pr4-${A.slice(0, 7)}--handbook.previews.test/`);
  expect(fs.existsSync(path.join(server.config.buildsDir, 'handbook', '4', A.slice(0, 7), 'index.html'))).toBe(true);
});

test('an upload of a SHA another upload is storing is answered 409 once; the stalled first gets its 408 once, with no "headers sent" error logged', async () => {
  await start({ UPLOAD_IDLE_SECONDS: '1' });
  fake.addPull(DOCS, { number: 5, user: CONTRIBUTOR, commits: [A], labels: [LABEL] });
  const body = tarball({ 'index.html': Buffer.from('<h1>first</h1>'), 'big.bin': crypto.randomBytes(200_000) });
  // The first upload sends half its body and stops: its claim on the SHA stays in flight until it is cut.
  const first = http.request(`${server.url}/create-build/5/${A}`, {
    method: 'POST',
    headers: { authorization: `Token ${await server.token({ 'pull-request': 5 })}`, 'content-type': 'application/gzip', 'content-length': body.length },
  });
  const firstAnswer = new Promise<number | string>((resolve) => {
    first.on('response', (res) => (res.resume(), resolve(res.statusCode!)));
    first.on('error', (err) => resolve((err as NodeJS.ErrnoException).code ?? err.message));
  });
  first.write(body.subarray(0, body.length / 2));
  await eventually(async () => (await server.core.db.orm.select().from(builds)).length === 1);
  const second = await server.upload(5, A, body);
  expect(second.status).toBe(409);
  // The first is still being stored: the 409 says so and asks the client to come back (it may yet fail).
  expect(second.headers.get('retry-after')).toBe('2');
  expect(((await second.json()) as { error: string }).error).toMatch(/is being stored/);
  expect(await firstAnswer).toBe(408);
  await eventually(async () => (await server.core.db.orm.select().from(builds)).length === 0);
  await server.previews.settled();
  expect(server.logs.filter((l) => JSON.stringify(l).includes('ERR_HTTP_HEADERS_SENT'))).toEqual([]);
  expect(server.logs.filter((l) => l.level >= 50)).toEqual([]);
});

test('two concurrent digest uploads of one SHA: the loser is answered 409 once, with no "headers sent" error logged', async () => {
  await start();
  fake.addPull(DOCS, { number: 6, user: CONTRIBUTOR, commits: [A], labels: [LABEL] });
  const files: Record<string, Buffer> = {};
  for (let i = 0; i < 30; i++) files[`page-${i}.html`] = Buffer.from(`<h1>page ${i}</h1>`);
  const listed: Record<string, { sha256: string; size: number }> = {};
  for (const [p, content] of Object.entries(files)) listed[p] = { sha256: hashOf(content), size: content.length };
  const manifest = JSON.stringify({ files: listed });
  expect((await postManifest(6, A, manifest)).status).toBe(200);
  const answers = await Promise.all([sendMissing(6, A, manifest, files), sendMissing(6, A, manifest, files)]);
  expect(answers.map((r) => r.status).sort()).toEqual([201, 409]);
  await server.previews.settled();
  expect(server.logs.filter((l) => JSON.stringify(l).includes('ERR_HTTP_HEADERS_SENT'))).toEqual([]);
});

test('a write-first client on a keep-alive connection that carried earlier uploads gets its 413, not a broken pipe', async () => {
  await start({ MAX_BUILD_BYTES: String(1 * MiB) });
  const commits = [A, B, sha('c3'), sha('d4'), sha('e5'), sha('f6')];
  fake.addPull(DOCS, { number: 7, user: CONTRIBUTOR, commits, labels: [LABEL] });
  // Node's fetch keeps the connection alive between these, and sends each whole body before reading.
  expect((await server.upload(7, A, tarball({ 'index.html': Buffer.from('<h1>a</h1>') }))).status).toBe(201);
  expect((await server.upload(7, B, tarball({ 'index.html': Buffer.from('<h1>b</h1>') }))).status).toBe(201);
  // Over MAX_BUILD_BYTES at its first entry, with megabytes still to come after the answer.
  const over = tarball({ 'big.bin': crypto.randomBytes(6 * MiB) });
  for (const commit of commits.slice(2)) {
    const res = await server.upload(7, commit, over);
    expect(res.status).toBe(413);
    expect(((await res.json()) as { error: string }).error).toMatch(/larger than/);
  }
});
