/**
 * Issue 25: manifests cost the server no more than they cost the client. Inflating, parsing and checking a
 * manifest runs off the main thread, so webhooks are answered while the worst manifests are being read; what a
 * manifest leaves in the database is its parsed list (not the body as sent), a bounded number per repository.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import zlib from 'node:zlib';
import { SignJWT } from 'jose';
import nock from 'nock';
import { manifests } from '../src/db/tables.js';
import { manifestReader } from '../src/upload/manifest-reader.js';
import { UPLOAD_SECRET_NAME } from '../src/upload/route.js';
import { eventually } from './helpers/eventually.js';
import { FakeGitHub } from './helpers/fake-github.js';
import { sha, startTestServer, type TestServer } from './helpers/server.js';
import { signedWebhook } from './helpers/webhooks.js';

const OWNER = { id: 9001, login: 'octo-org' };
const DOCS = 7001;
const CONTRIBUTOR = { id: 555, login: 'contributor' };

let fake: FakeGitHub;
let server: TestServer;

beforeAll(async () => {
  nock.enableNetConnect('127.0.0.1');
  fake = await new FakeGitHub().start();
  fake.addRepo({ id: DOCS, owner: OWNER, name: 'docs' });
  server = await startTestServer({ ...fake.env });
});
afterAll(async () => {
  await server?.close();
  await fake.close();
});

const hashOf = (content: Buffer | string) => crypto.createHash('sha256').update(content).digest('hex');

/**
 * The worst manifest for the server: 50,000 files (MAX_BUILD_FILES) of ~230-character paths, each its own content
 * (one lookup each), ~15 MiB of JSON, 2 MB gzipped.
 */
function worstManifest(): { gzipped: Buffer; json: string } {
  const files: Record<string, { sha256: string; size: number }> = {};
  const folder = 'a'.repeat(180);
  for (let i = 0; i < 50_000; i++) files[`${folder}/${i.toString().padStart(40, '0')}.html`] = { sha256: hashOf(String(i)), size: 100 };
  const json = JSON.stringify({ files });
  return { json, gzipped: zlib.gzipSync(json) };
}

async function postManifest(pr: number, commit: string, body: Buffer, headers: Record<string, string> = {}, token?: string) {
  const res = await fetch(`${server.url}/create-build/${pr}/${commit}/manifest`, {
    method: 'POST',
    headers: { authorization: `Token ${token ?? (await server.token({ 'pull-request': pr }))}`, 'content-type': 'application/json', ...headers },
    body: new Uint8Array(body),
  });
  await res.arrayBuffer();
  return res.status;
}

/** As the CLI sends a manifest: again after Retry-After while the server answers 503. */
async function postManifestRetrying(pr: number, commit: string, body: Buffer, headers: Record<string, string> = {}) {
  for (;;) {
    const res = await fetch(`${server.url}/create-build/${pr}/${commit}/manifest`, {
      method: 'POST',
      headers: { authorization: `Token ${await server.token({ 'pull-request': pr })}`, 'content-type': 'application/json', ...headers },
      body: new Uint8Array(body),
    });
    await res.arrayBuffer();
    if (res.status !== 503) return res.status;
    await new Promise((resolve) => setTimeout(resolve, Number(res.headers.get('retry-after')) * 1000));
  }
}

async function webhookMs(): Promise<number> {
  const started = performance.now();
  const res = await fetch(`${server.url}/api/github/webhooks`, { method: 'POST', ...signedWebhook('ping', { zen: 'Keep it logically awesome.', hook_id: 1 }) });
  await res.arrayBuffer();
  expect(res.status).toBe(200);
  return performance.now() - started;
}

test('under 6 concurrent worst-case manifests (sent again after 503 as the CLI does), a webhook is still answered at once (goal < 1 s)', async () => {
  const commits = Array.from({ length: 6 }, (_, i) => sha((0x10 + i).toString(16)));
  fake.addPull(DOCS, { number: 1, user: CONTRIBUTOR, commits });
  const { gzipped, json } = worstManifest();
  await webhookMs(); // Probot's first delivery loads what it needs
  let done = 0;
  const started = performance.now();
  const posts = commits.map((commit) => postManifestRetrying(1, commit, gzipped, { 'content-encoding': 'gzip' }).finally(() => done++));
  const delays: number[] = [];
  while (done < commits.length) delays.push(await webhookMs());
  const statuses = await Promise.all(posts);
  const elapsed = performance.now() - started;
  const worst = Math.max(...delays);
  console.log(
    `${commits.length} manifests of ${(json.length / 2 ** 20).toFixed(1)} MiB (${(gzipped.length / 1000).toFixed(0)} KB gzipped) in ${elapsed.toFixed(0)} ms; ` +
      `${delays.length} webhooks meanwhile, slowest ${worst.toFixed(0)} ms, median ${delays.sort((a, b) => a - b)[delays.length >> 1]!.toFixed(0)} ms`,
  );
  expect(statuses).toEqual(commits.map(() => 200));
  // The goal is < 1 s (GitHub's timeout is 10 s); measured 0.3-0.8 s alone on 2 cores, 1.3 s with another suite
  // running beside it. Asserted at 3 s so a loaded CI box holds it; the old main-thread code kept a webhook 23 s.
  expect(worst).toBeLessThan(3000);
}, 120_000);

test("what a manifest leaves is its parsed list, not the body as sent, and a repository's pending manifests are bounded", async () => {
  const commits = Array.from({ length: 10 }, (_, i) => sha((0x40 + i).toString(16)));
  fake.addPull(DOCS, { number: 2, user: CONTRIBUTOR, commits });
  // A body padded with 4 MiB of JSON whitespace: 4 KB gzipped on the wire.
  const listed = { 'index.html': { sha256: hashOf('x'), size: 1 } };
  const padded = Buffer.from(`{"files": ${JSON.stringify(listed)}${' '.repeat(4 * 2 ** 20)}}`);
  for (const commit of commits) expect(await postManifest(2, commit, zlib.gzipSync(padded), { 'content-encoding': 'gzip' })).toBe(200);
  const rows = (await server.core.db.orm.select().from(manifests)).filter((r) => r.pullRequestNumber === 2);
  expect(rows.length).toBeLessThanOrEqual(8);
  // Each row names its parsed list's file: a few dozen bytes, not the 4 MiB sent; no other list is left.
  for (const row of rows) expect(fs.statSync(path.join(server.config.dataDir, 'manifests', row.body)).size).toBeLessThan(1000);
  // The lists of the manifests dropped (this repository's older ones) are removed too.
  const all = await server.core.db.orm.select().from(manifests);
  expect(all.length).toBeLessThanOrEqual(8);
  const listFiles = () => fs.readdirSync(path.join(server.config.dataDir, 'manifests'));
  await eventually(() => listFiles().every((name) => all.some((r) => r.body === name)));
  // The newest are the ones kept.
  expect(rows.map((r) => r.sha)).toContain(commits.at(-1));
});

test('uploads naming the worst manifest do not stall the main thread (its list is never parsed there)', async () => {
  const commit = sha('7e');
  fake.addPull(DOCS, { number: 3, user: CONTRIBUTOR, commits: [commit] });
  const { json } = worstManifest();
  expect(await postManifest(3, commit, Buffer.from(json))).toBe(200);
  const token = await server.token({ 'pull-request': 3 });
  const upload = () =>
    fetch(`${server.url}/create-build/3/${commit}`, {
      method: 'POST',
      headers: { authorization: `Token ${token}`, 'preview-gate-manifest': hashOf(json), 'content-type': 'application/gzip' },
      body: 'not gzip',
    }).then(async (res) => {
      await res.arrayBuffer();
      return res.status;
    });
  // The server runs in this process: its event loop's longest stall is measured here.
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  const statuses = await Promise.all(Array.from({ length: 20 }, upload));
  delay.disable();
  const worstMs = delay.max / 1e6;
  console.log(`20 uploads naming a ${(json.length / 2 ** 20).toFixed(1)} MiB manifest: longest event-loop stall ${worstMs.toFixed(0)} ms`);
  // 400 (not gzip) for the upload that claims the SHA first, 409 for those that come while it holds it (503
  // when the stalled loop let GitHub's answers time out).
  for (const status of statuses) expect([400, 409, 503]).toContain(status);
  // Parsing the list on the main thread stalled it 745-930 ms here (uploads back to back; 1.2 s seen by /health);
  // read as stored, the longest stall is the one upload that walks the list (~120 ms). 400 ms: a loaded box.
  expect(worstMs).toBeLessThan(400);
}, 120_000);

test("one repository's flood of manifests is capped (503 + Retry-After) and another repository's is read in its turn", async () => {
  const commits = Array.from({ length: 12 }, (_, i) => sha((0x60 + i).toString(16)));
  const { gzipped } = worstManifest();
  const docs = (await server.core.registry.findRepository('octo-org/docs'))!;
  const other = await server.core.registry.ensureRepository('octo-org/other');
  const secret = 'other-secret-of-more-than-32-bytes-0123456789';
  await server.core.secrets.set(other.accountId, other.id, UPLOAD_SECRET_NAME, Buffer.from(secret));
  const otherToken = await new SignJWT({ slug: 'octo-org/other', 'pull-request': 1 }).setProtectedHeader({ alg: 'HS256' }).setIssuer('Travis CI, GmbH').setIssuedAt().setExpirationTime('90m').sign(Buffer.from(secret));

  let docsRead = 0;
  const flood = commits.map(async (commit) => {
    const res = await fetch(`${server.url}/create-build/4/${commit}/manifest`, {
      method: 'POST',
      headers: { authorization: `Token ${await server.token({ 'pull-request': 4 })}`, 'content-encoding': 'gzip' },
      body: new Uint8Array(gzipped),
    });
    const answer = { status: res.status, retryAfter: res.headers.get('retry-after'), body: (await res.json()) as { error?: string } };
    if (res.status === 200) docsRead++;
    return answer;
  });
  // docs's first manifest on the thread and its second waiting: the rest were refused.
  await eventually(() => manifestReader().queuedOf(docs.id) === 2, 60_000);
  const small = Buffer.from(JSON.stringify({ files: { 'index.html': { sha256: hashOf('other'), size: 5 } } }));
  expect(await postManifest(1, sha('0b'), small, {}, otherToken)).toBe(200);
  // Answered in its turn: after the manifest that was on the thread, before docs's next one.
  expect(docsRead).toBeLessThanOrEqual(1);
  const answers = await Promise.all(flood);
  expect(answers.filter((a) => a.status === 200)).toHaveLength(2);
  const refused = answers.filter((a) => a.status !== 200);
  expect(refused).toHaveLength(10);
  for (const answer of refused) {
    expect(answer).toEqual({ status: 503, retryAfter: '2', body: { error: expect.stringMatching(/already has 2 manifests being read; send this one again/) } });
  }
}, 120_000);
