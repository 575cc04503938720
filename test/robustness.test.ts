import fs from 'node:fs';
import path from 'node:path';
import nock from 'nock';
import { builds, pullRequests } from '../src/db/tables.js';
import { githubThroughNock, commitsOf, githubFor } from './helpers/github.js';
import { sha, startTestServer, type TestServer } from './helpers/server.js';
import { siteTarball, tarball } from './helpers/tarballs.js';
import { installationToken, pullRequestEvent, sendWebhook, settingsFile } from './helpers/webhooks.js';

const LABEL = 'safe for preview';
let server: TestServer | undefined;

beforeEach(githubThroughNock);
afterEach(async () => {
  nock.cleanAll();
  await server?.close();
  server = undefined;
});

function github(pr: number, commits: string[], labels: string[] = [], times = 1) {
  for (let i = 0; i < times; i++) {
    githubFor({ number: pr, commits, labels });
    commitsOf({ number: pr, commits, labels });
  }
}

test('50 concurrent uploads of one SHA: exactly one stored, 49 × 409, content equal to one upload', async () => {
  // 50 uploads ask GitHub at once: on a loaded CI box one answer of the stand-in took longer than the tests'
  // usual 1.5 s GitHub timeout (one upload 503). This test is about the race, not GitHub's speed.
  server = await startTestServer({ GITHUB_TIMEOUT_MS: '10000' });
  const s = server;
  const commit = sha('90');
  github(1, [commit], [LABEL], 50);
  const answers = await Promise.all(Array.from({ length: 50 }, (_, i) => s.upload(1, commit, siteTarball(`racer-${i}`))));
  const statuses = answers.map((a) => a.status);
  // Every answer on a failure, with the sentences of those that are not 409.
  const odd = await Promise.all(answers.filter((a) => a.status !== 409).map(async (a) => `${a.status} ${await a.text()}`));
  expect({ created: statuses.filter((x) => x === 201).length, conflicts: statuses.filter((x) => x === 409).length, odd }).toEqual({ created: 1, conflicts: 49, odd: [expect.stringMatching(/^201 /)] });
  const index = fs.readFileSync(path.join(s.config.buildsDir, 'docs', '1', commit.slice(0, 7), 'index.html'), 'utf8');
  const winner = /racer-(\d+)/.exec(index)![1];
  expect(index).toBe(`<!doctype html><title>racer-${winner}</title><h1>racer-${winner}</h1>`);
  expect(await s.core.db.orm.select().from(builds)).toHaveLength(1);
});

test('an upload racing a label webhook of the same PR ends consistent', async () => {
  server = await startTestServer();
  const s = server;
  const commit = sha('91');
  github(2, [commit], [LABEL]);
  installationToken();
  settingsFile();
  const [upload, hook] = await Promise.all([
    s.upload(2, commit, siteTarball('race')),
    sendWebhook(s.url, 'pull_request', pullRequestEvent('labeled', { number: 2, labels: [LABEL], head: commit }, { label: { name: LABEL } })),
  ]);
  expect([201, 202]).toContain(upload.status);
  expect(hook.status).toBe(200);
  const pr = (await s.core.db.orm.select().from(pullRequests))[0]!;
  expect(pr.visibility).toBe('public');
  expect(fs.existsSync(path.join(s.config.buildsDir, 'docs', '2', commit.slice(0, 7), 'index.html'))).toBe(true);
  expect(fs.existsSync(path.join(s.config.buildsDir, 'docs', 'hidden--2'))).toBe(false);
});

test('a restart after an unclean stop sweeps staging, drops half-made builds and keeps complete ones', async () => {
  const first = await startTestServer();
  const commit = sha('92');
  github(3, [commit], [LABEL]);
  expect((await first.upload(3, commit, siteTarball('survivor'))).status).toBe(201);
  const { buildsDir, dataDir } = first.config;
  const pr = (await first.core.db.orm.select().from(pullRequests))[0]!;
  // What a SIGKILL in the middle of uploads leaves behind:
  fs.mkdirSync(path.join(buildsDir, '.staging', 'half-extracted', 'assets'), { recursive: true });
  fs.writeFileSync(path.join(buildsDir, '.staging', 'half-extracted', 'assets', 'a.js'), 'partial');
  await first.core.db.orm.insert(builds).values({ pullRequestId: pr.id, sha: sha('93'), sha7: sha('93').slice(0, 7), status: 'pending' });
  fs.mkdirSync(path.join(buildsDir, 'docs', '3', 'abcdef0'));
  fs.writeFileSync(path.join(buildsDir, 'docs', '3', 'abcdef0', 'index.html'), 'renamed but never recorded');
  await first.core.db.orm.insert(builds).values({ pullRequestId: pr.id, sha: sha('94'), sha7: sha('94').slice(0, 7), status: 'ready' });
  await first.stop();

  server = await startTestServer({ DATA_DIR: dataDir }, first.tmp);
  expect(fs.readdirSync(path.join(buildsDir, '.staging'))).toEqual([]);
  expect(fs.existsSync(path.join(buildsDir, 'docs', '3', 'abcdef0'))).toBe(false);
  const rows = await server.core.db.orm.select().from(builds);
  expect(rows.map((r) => [r.sha7, r.status])).toEqual([[commit.slice(0, 7), 'ready']]);
  expect(fs.readFileSync(path.join(buildsDir, 'docs', '3', commit.slice(0, 7), 'index.html'), 'utf8')).toContain('survivor');
});

test('the account quota (MAX_ACCOUNT_BYTES) refuses with 413 and names the limit', async () => {
  server = await startTestServer({ MAX_ACCOUNT_BYTES: String(150 * 1024) });
  const big = (fill: number) => tarball({ 'data.bin': Buffer.alloc(100 * 1024, fill) });
  github(4, [sha('95'), sha('96'), sha('97')], [LABEL], 3);
  expect((await server.upload(4, sha('95'), big(7))).status).toBe(201);
  // The quota counts stored bytes: the same files again cost nothing (they are links to the first build's).
  expect((await server.upload(4, sha('97'), big(7))).status).toBe(201);
  const res = await server.upload(4, sha('96'), big(8));
  expect(res.status).toBe(413);
  expect((await res.json()).error).toMatch(/octo-org .*153600 bytes of previews \(MAX_ACCOUNT_BYTES\)/);
  expect(fs.existsSync(path.join(server.config.buildsDir, 'docs', '4', sha('96').slice(0, 7)))).toBe(false);
});

test('the per-PR build limit (MAX_PR_BUILDS) refuses a further build with 413', async () => {
  server = await startTestServer({ MAX_PR_BUILDS: '2' });
  const commits = [sha('a1'), sha('a2'), sha('a3')];
  github(5, commits, [LABEL], 3);
  expect((await server.upload(5, commits[0]!, siteTarball())).status).toBe(201);
  expect((await server.upload(5, commits[1]!, siteTarball())).status).toBe(201);
  const res = await server.upload(5, commits[2]!, siteTarball());
  expect(res.status).toBe(413);
  expect((await res.json()).error).toMatch(/already holds 2 builds.*MAX_PR_BUILDS/);
});

test('GET /metrics reports uploads by status, bytes stored and extraction time in Prometheus text', async () => {
  server = await startTestServer();
  github(6, [sha('b1')], [LABEL]);
  expect((await server.upload(6, sha('b1'), siteTarball())).status).toBe(201);
  expect((await server.upload(6, 'bad', siteTarball())).status).toBe(400);
  const text = await (await fetch(`${server.url}/metrics`)).text();
  expect(text).toMatch(/preview_gate_uploads_total\{status="201"\} 1/);
  expect(text).toMatch(/preview_gate_uploads_total\{status="400"\} 1/);
  expect(text).toMatch(/preview_gate_stored_bytes [1-9]\d*/);
  expect(text).toMatch(/preview_gate_extraction_seconds_count 1/);
  expect(text).toMatch(/preview_gate_visibility_changes_total\{to="public"\} 1/);
});
