/**
 * Two server processes on one database file and one DATA_DIR (two startServer() in this process, each with its
 * own replica id and database connection): upload claims, the sweep and cleanup schedule, and the clean-stop
 * marker are per replica.
 */
import fs from 'node:fs';
import { spawn } from 'node:child_process';
import path from 'node:path';
import nock from 'nock';
import { builds, prLocks, replicas, schedules } from '../src/db/tables.js';
import { withPr } from '../src/previews/context.js';
import { eq } from '../src/db/orm.js';
import { commitsOf, githubFor } from './helpers/github.js';
import { replicasPerTest, uploadInTwoHalves } from './helpers/replicas.js';
import { sha, withDatabaseOf, type TestServer } from './helpers/server.js';
import { siteTarball } from './helpers/tarballs.js';

const LABEL = 'safe for preview';
const group = replicasPerTest();
const start = group.start;
const waitFor = async (check: () => boolean | Promise<boolean>) => {
  while (!(await check())) await new Promise((r) => setTimeout(r, 10));
};

test("a replica starting while another holds an upload claim leaves the claim and its staging; that upload is stored", async () => {
  const a = await start();
  const commit = sha('c1');
  githubFor({ number: 1, commits: [commit], labels: [LABEL] });
  commitsOf({ number: 1, commits: [commit], labels: [LABEL] });
  const upload = await uploadInTwoHalves(a, 1, commit, siteTarball('in flight'));
  const claim = async () => (await a.core.db.orm.select().from(builds).where(eq(builds.status, 'pending')))[0];
  await waitFor(async () => (await claim()) !== undefined && fs.readdirSync(a.core.store.stagingDir).length > 0);
  expect((await claim())!.claimOwner).toBe(a.replica.id);

  const b = await start(a.tmp);
  expect(await claim()).toMatchObject({ claimOwner: a.replica.id, status: 'pending' });
  expect(fs.readdirSync(a.core.store.stagingDir).every((f) => f.startsWith(`${a.replica.id}.`))).toBe(true);
  upload.finish();
  expect((await upload.answered).status).toBe(201);
  expect((await b.core.db.orm.select().from(builds))[0]).toMatchObject({ sha7: commit.slice(0, 7), status: 'ready' });
  expect(fs.readFileSync(path.join(a.config.buildsDir, 'docs', '1', commit.slice(0, 7), 'index.html'), 'utf8')).toContain('in flight');
});

test("the claim and staging of a replica that died (heartbeat expired, no clean stop) are removed at the next start", async () => {
  const a = await start(undefined, { leaseMs: 300 });
  const commit = sha('c2');
  githubFor({ number: 2, commits: [commit], labels: [LABEL] });
  commitsOf({ number: 2, commits: [commit], labels: [LABEL] });
  const upload = await uploadInTwoHalves(a, 2, commit, siteTarball('never finished'));
  const pending = async () => (await a.core.db.orm.select({ id: builds.id }).from(builds).where(eq(builds.status, 'pending'))).length;
  await waitFor(async () => (await pending()) === 1);
  const deadId = a.replica.id;
  await group.crash(a);
  upload.finish();
  await upload.answered.catch(() => undefined);
  // A's process stays (this test's), so only the expiry of its heartbeat says it is dead.
  const beat = await withDatabaseOf(a.config, async (db) => (await db.orm.select().from(replicas).where(eq(replicas.id, deadId)))[0]!.heartbeatAt);
  const expiredAt = beat.getTime() + 300;
  await waitFor(() => Date.now() > expiredAt);

  const b = await start(a.tmp, { leaseMs: 300 });
  expect(await b.core.db.orm.select().from(builds)).toEqual([]);
  expect(fs.readdirSync(b.core.store.stagingDir).filter((f) => f.startsWith(deadId))).toEqual([]);
  expect((await b.core.db.orm.select().from(replicas)).map((r) => r.id)).toEqual([b.replica.id]);
});

test('two replicas sweep once per interval in all; when the holder of the sweep dies, the other takes it over after its lease', async () => {
  const sweeps: number[] = [];
  nock('https://api.github.com')
    .persist()
    .get('/app/installations')
    .query(true)
    .reply(200, () => {
      sweeps.push(Date.now());
      return [];
    });
  const timing = { leaseMs: 400, sweepEveryMs: 200, scheduleCheckMs: 10 };
  const a = await start(undefined, timing);
  const b = await start(a.tmp, timing);
  await waitFor(() => sweeps.length >= 4);
  const runs = (await a.core.db.orm.select().from(schedules).where(eq(schedules.name, 'sweep')))[0]!;
  expect(runs.lastRunAt).not.toBeNull();
  // Each sweep starts at least an interval after the previous one ended (so after it started): never two at once.
  for (let i = 1; i < sweeps.length; i++) expect(sweeps[i]! - sweeps[i - 1]!).toBeGreaterThanOrEqual(200 - 5);

  // A dies holding the sweep's lease, the sweep due: B runs it only once that lease expired.
  await group.crash(a);
  await b.schedules.stop(0);
  const leaseUntil = Date.now() + 400;
  await b.core.db.orm.update(schedules).set({ leaseOwner: a.replica.id, leaseUntil: new Date(leaseUntil), nextRunAt: new Date() }).where(eq(schedules.name, 'sweep'));
  const before = sweeps.length;
  b.schedules.start(10);
  await waitFor(() => sweeps.length > before);
  expect(sweeps[before]!).toBeGreaterThanOrEqual(leaseUntil);
});

test("one replica's clean stop does not hide another's crash: the next start repairs after the crashed one", async () => {
  const a = await start(undefined, { leaseMs: 300 });
  const b = await start(a.tmp, { leaseMs: 300 });
  // What A's crash mid-upload leaves: its claim and its staging folder.
  fs.mkdirSync(path.join(a.core.store.stagingDir, `${a.replica.id}.half-extracted`));
  const aId = a.replica.id;
  await group.crash(a);
  await group.stop(b);
  const rows = await withDatabaseOf(a.config, async (db) =>
    (await db.orm.select().from(replicas)).map((r) => ({ id: r.id, stopped: r.stoppedAt, beat: r.heartbeatAt.getTime() })),
  );
  expect(rows.find((r) => r.id === aId)!.stopped).toBeNull();
  expect(rows.find((r) => r.id === b.replica.id)!.stopped).not.toBeNull();
  await waitFor(() => Date.now() > rows.find((r) => r.id === aId)!.beat + 300);

  const c = await start(a.tmp, { leaseMs: 300 });
  expect(fs.readdirSync(c.core.store.stagingDir)).toEqual([]);
  expect(c.logs.some((l) => /repaired|released/.test(l.msg))).toBe(true);
  expect((await c.core.db.orm.select().from(replicas)).map((r) => r.id)).toEqual([c.replica.id]);
});

test("a live replica that shares this host name but not its processes (host networking, a pod) is not taken for dead", async () => {
  const a = await start();
  const insert = (id: string, host: string) =>
    a.core.db.orm.insert(replicas).values({ id, host, pid: 2 ** 22 + 17, heartbeatAt: new Date() }); // a pid no process here has
  // Same host name, another pid namespace: its pid means nothing here, only its heartbeat counts.
  await insert('neighbour', a.replica.host.replace(/pid:\[\d+\]$/, 'pid:[1]'));
  // This very scope with a pid that is gone: a crash on this machine, repaired at once as before.
  await insert('crashed-here', a.replica.host);
  expect(await a.replica.takeOverDead()).toEqual(['crashed-here']);
  expect((await a.core.db.orm.select().from(replicas)).map((r) => r.id).sort()).toEqual([a.replica.id, 'neighbour'].sort());
});

test("an upload of a SHA another live replica is storing gets 409 with Retry-After, not 'already stored'; the first one is stored", async () => {
  const a = await start();
  const b = await start(a.tmp);
  const commit = sha('c7');
  githubFor({ number: 7, commits: [commit], labels: [LABEL] });
  commitsOf({ number: 7, commits: [commit], labels: [LABEL] });
  const first = await uploadInTwoHalves(a, 7, commit, siteTarball('first'));
  await waitFor(async () => (await a.core.db.orm.select().from(builds).where(eq(builds.status, 'pending'))).length === 1);
  const githubAgain = () => {
    githubFor({ number: 7, commits: [commit], labels: [LABEL] });
    commitsOf({ number: 7, commits: [commit], labels: [LABEL] });
  };
  githubAgain();
  const res = await fetch(`${b.url}/create-build/7/${commit}`, {
    method: 'POST',
    headers: { authorization: `Token ${await b.token({ 'pull-request': 7 })}`, 'content-type': 'application/gzip' },
    body: new Uint8Array(siteTarball('second')),
  });
  expect(res.status).toBe(409);
  expect(res.headers.get('retry-after')).toMatch(/^[1-9][0-9]*$/);
  expect(await res.json()).toEqual({ error: `Another upload of ${commit.slice(0, 7)} is being stored for pull request #7; try again shortly.` });
  first.finish();
  expect((await first.answered).status).toBe(201);
  githubAgain();
  const again = await fetch(`${b.url}/create-build/7/${commit}`, {
    method: 'POST',
    headers: { authorization: `Token ${await b.token({ 'pull-request': 7 })}`, 'content-type': 'application/gzip' },
    body: new Uint8Array(siteTarball('second')),
  });
  expect(again.status).toBe(409);
  expect(again.headers.get('retry-after')).toBeNull();
});

test("the claim of a replica killed mid-upload is taken over at once by the retry on another replica (not 409), and that build is stored", async () => {
  const a = await start();
  const b = await start(a.tmp);
  const commit = sha('c8');
  githubFor({ number: 8, commits: [commit], labels: [LABEL] });
  commitsOf({ number: 8, commits: [commit], labels: [LABEL] });
  const upload = await uploadInTwoHalves(a, 8, commit, siteTarball('killed'));
  await waitFor(async () => (await a.core.db.orm.select().from(builds).where(eq(builds.status, 'pending'))).length === 1);
  const deadId = a.replica.id;
  await group.crash(a);
  upload.finish();
  await upload.answered.catch(() => undefined);
  // A SIGKILLed replica of this machine: its process is gone (a child that has exited stands for it); its
  // heartbeat and its claim's lease (30 s) are still fresh.
  const gone = spawn(process.execPath, ['-e', '0']);
  await new Promise((r) => gone.once('exit', r));
  await b.core.db.orm.update(replicas).set({ pid: gone.pid! }).where(eq(replicas.id, deadId));
  githubFor({ number: 8, commits: [commit], labels: [LABEL] });
  commitsOf({ number: 8, commits: [commit], labels: [LABEL] });

  const res = await fetch(`${b.url}/create-build/8/${commit}`, {
    method: 'POST',
    headers: { authorization: `Token ${await b.token({ 'pull-request': 8 })}`, 'content-type': 'application/gzip' },
    body: new Uint8Array(siteTarball('retried')),
  });
  expect(res.status).toBe(201);
  expect(await b.core.db.orm.select({ status: builds.status, claimOwner: builds.claimOwner }).from(builds)).toEqual([{ status: 'ready', claimOwner: b.replica.id }]);
  expect(fs.readFileSync(path.join(b.config.buildsDir, 'docs', '8', commit.slice(0, 7), 'index.html'), 'utf8')).toContain('retried');
});

test("one PR's work on two replicas is serialised by the database's lease row; another PR's is not held behind it", async () => {
  const a = await start();
  const b = await start(a.tmp);
  const ctxOf = (s: TestServer) => s.previews['ctx'];
  const events: string[] = [];
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  let aIn!: () => void;
  const aStarted = new Promise<void>((r) => (aIn = r));
  const first = withPr(ctxOf(a), 1, 5, async () => {
    events.push('a in');
    aIn();
    await held;
    events.push('a out');
  });
  await aStarted;
  const second = withPr(ctxOf(b), 1, 5, async () => void events.push('b in'));
  await waitFor(() => ctxOf(b).prLocks.waiting === 1);
  await withPr(ctxOf(b), 1, 6, async () => void events.push('b other PR'));
  expect(events).toEqual(['a in', 'b other PR']);
  release();
  await Promise.all([first, second]);
  expect(events).toEqual(['a in', 'b other PR', 'a out', 'b in']);
  expect(await a.core.db.orm.select().from(prLocks)).toEqual([]);
});
