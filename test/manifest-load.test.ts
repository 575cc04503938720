/**
 * Issue 25: manifests cost the server no more than they cost the client. Inflating, parsing and checking a
 * manifest runs off the main thread, so webhooks are answered while the worst manifests are being read; what a
 * manifest leaves in the database is its parsed list (not the body as sent), a bounded number per repository.
 */
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { SignJWT } from 'jose';
import nock from 'nock';
import { manifests } from '../src/db/tables.js';
import { manifestReader } from '../src/upload/manifest-reader.js';
import { UPLOAD_SECRET_NAME } from '../src/upload/route.js';
import { eventually } from './helpers/eventually.js';
import { FakeGitHub } from './helpers/fake-github.js';
import { sha, startTestServer, type TestServer } from './helpers/server.js';
import { siteTarball } from './helpers/tarballs.js';
import { signedWebhook } from './helpers/webhooks.js';

const OWNER = { id: 9001, login: 'octo-org' };
const DOCS = 7001;
const CONTRIBUTOR = { id: 555, login: 'contributor' };
const LABEL = 'safe for preview';

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

const execFileAsync = promisify(execFile);
/** The manifest senders' own process (test/helpers/manifest-flood.mjs). */
const FLOOD = new URL('./helpers/manifest-flood.mjs', import.meta.url).pathname;

const hashOf = (content: Buffer | string) => crypto.createHash('sha256').update(content).digest('hex');

/**
 * The worst manifest for the server: 50,000 files (MAX_BUILD_FILES) of ~230-character paths, each its own content
 * (one lookup each), ~15 MiB of JSON, 2 MB gzipped.
 */
function worstManifest(): { gzipped: Buffer; json: string } {
  return (worst ??= buildWorstManifest());
}
let worst: { gzipped: Buffer; json: string } | undefined;
function buildWorstManifest(): { gzipped: Buffer; json: string } {
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
async function postManifestRetrying(pr: number, commit: string, body: Buffer, headers: Record<string, string> = {}, token?: string) {
  for (;;) {
    const res = await fetch(`${server.url}/create-build/${pr}/${commit}/manifest`, {
      method: 'POST',
      headers: { authorization: `Token ${token ?? (await server.token({ 'pull-request': pr }))}`, 'content-type': 'application/json', ...headers },
      body: new Uint8Array(body),
    });
    await res.arrayBuffer();
    if (res.status !== 503) return res.status;
    await new Promise((resolve) => setTimeout(resolve, Number(res.headers.get('retry-after')) * 1000));
  }
}

/** A repository of octo-org with its upload secret, and a token for its pull request `pr` (as Travis signs one). */
async function repositoryWithToken(name: string, pr: number) {
  const repo = await server.core.registry.ensureRepository(`octo-org/${name}`);
  const secret = `${name}-secret-of-more-than-32-bytes-0123456789`;
  await server.core.secrets.set(repo.accountId, repo.id, UPLOAD_SECRET_NAME, Buffer.from(secret));
  const token = await new SignJWT({ slug: `octo-org/${name}`, 'pull-request': pr }).setProtectedHeader({ alg: 'HS256' }).setIssuer('Travis CI, GmbH').setIssuedAt().setExpirationTime('90m').sign(Buffer.from(secret));
  return { repo, token };
}

/** How long an `unlabeled` delivery of docs's PR 1 takes to be answered (it hides the PR: files moved, rows written). */
async function unlabeledMs(): Promise<number> {
  const started = performance.now();
  const res = await fetch(`${server.url}/api/github/webhooks`, { method: 'POST', ...signedWebhook('pull_request', fake.pullRequestEvent(DOCS, 1, 'unlabeled', { label: { name: LABEL } })) });
  await res.arrayBuffer();
  expect(res.status).toBe(200);
  return performance.now() - started;
}

const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;

test('under 16 concurrent worst-case manifests (4 repositories × 4, sent again after 503 as the CLI does), unlabeled deliveries are answered in < 1 s', async () => {
  // docs's PR 1 is public, so the first unlabeled delivery hides it and the others find it hidden.
  const head = sha('0f');
  fake.addPull(DOCS, { number: 1, user: CONTRIBUTOR, commits: [head], labels: [LABEL] });
  expect((await server.upload(1, head, siteTarball('pr 1'))).status).toBe(201);
  await server.previews.settled();
  const { gzipped, json } = worstManifest();
  const docs = { repo: (await server.core.registry.findRepository('octo-org/docs'))!, token: await server.token({ 'pull-request': 5 }) };
  const senders = [docs, ...(await Promise.all(['api', 'blog', 'shop'].map((name) => repositoryWithToken(name, 5))))];
  fake.change(DOCS, 1, { labels: [] }); // as GitHub says once the label is removed
  await unlabeledMs(); // Probot's first delivery loads what it needs

  const posts = senders.flatMap(({ token }, r) => Array.from({ length: 4 }, (_, i) => ({ path: `/create-build/5/${sha((0x10 + 4 * r + i).toString(16))}/manifest`, token })));
  const bodyFile = path.join(server.config.dataDir, 'worst-manifest.json.gz');
  fs.writeFileSync(bodyFile, gzipped);

  const started = performance.now();
  const flood = execFileAsync(process.execPath, [FLOOD, JSON.stringify({ url: server.url, bodyFile, posts })]);
  let done = false;
  void flood.finally(() => (done = true)).catch(() => undefined);
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  const answers: number[] = [];
  // A delivery every 100 ms at most (GitHub's pace in a busy organisation), not back to back: deliveries sent
  // as fast as they are answered measure the loop they saturate themselves (each queues a decision and feedback).
  while (!done) {
    const next = new Promise((resolve) => setTimeout(resolve, 100));
    answers.push(await unlabeledMs());
    await next;
  }
  delay.disable();
  const { stdout, stderr } = await flood;
  const statuses = JSON.parse(stdout) as number[];
  if (stderr) console.log(stderr);
  const elapsed = performance.now() - started;
  const sorted = [...answers].sort((a, b) => a - b);
  const worst = sorted.at(-1)!;
  console.log(
    `${posts.length} manifests of ${(json.length / 2 ** 20).toFixed(1)} MiB (${(gzipped.length / 1000).toFixed(0)} KB gzipped) from 4 repositories in ${(elapsed / 1000).toFixed(1)} s; ` +
      `${answers.length} unlabeled deliveries meanwhile: median ${percentile(sorted, 0.5).toFixed(0)} ms, p99 ${percentile(sorted, 0.99).toFixed(0)} ms, slowest ${worst.toFixed(0)} ms; ` +
      `longest event-loop stall ${(delay.max / 1e6).toFixed(0)} ms`,
  );
  expect(statuses).toEqual(posts.map(() => 200));
  expect(await server.core.registry.findPullRequest(senders[0]!.repo.id, 1)).toMatchObject({ visibility: 'hidden' });
  // GitHub gives up on a delivery after 10 s; the old main-thread reading kept one 23 s. Measured on 2 cores
  // at load 8-14 (other suites beside it): p99 250-440 ms, slowest 560-1,100 ms; the slowest are single
  // deliveries whose thread the OS did not run for a few hundred ms (a profile shows no stall of ours in them).
  expect(percentile(sorted, 0.99)).toBeLessThan(1000);
  expect(worst).toBeLessThan(2000);
}, 240_000);

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
  expect(all.filter((r) => r.repositoryId === rows[0]!.repositoryId).length).toBeLessThanOrEqual(8);
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
  const { token: otherToken } = await repositoryWithToken('other', 1);

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

test('a list file left without its row (a crash between the two) is removed by the cleanup, once older than a manifest lives', async () => {
  const commit = sha('5e');
  const listed = Buffer.from(JSON.stringify({ files: { 'index.html': { sha256: hashOf('kept'), size: 4 } } }));
  expect(await postManifest(6, commit, listed)).toBe(200);
  const listsDir = path.join(server.config.dataDir, 'manifests');
  const kept = (await server.core.db.orm.select().from(manifests)).find((r) => r.sha === commit)!.body;
  // What the manifest thread writes before the main thread inserts the row: a crash in between leaves the file.
  const stray = (age: number) => {
    const name = path.join(listsDir, `${crypto.randomUUID()}.list`);
    fs.writeFileSync(name, 'a list');
    const then = new Date(Date.now() - age);
    fs.utimesSync(name, then, then);
    return name;
  };
  const old = stray(2 * 3600_000);
  // A young one may be another replica's, its row a moment away: left for a later cleanup.
  const young = stray(0);
  await server.previews.cleanup();
  expect(fs.existsSync(old)).toBe(false);
  expect(fs.existsSync(young)).toBe(true);
  expect(fs.existsSync(path.join(listsDir, kept))).toBe(true);
});
