/**
 * A replica whose heartbeat could not be written for longer than the lease (a database outage, a stall), taken for
 * dead by another, then going on: it registers again, its upload in flight is kept, and a claim another replica took
 * over meanwhile is not undone by its failure. (Found by an outside review of the scale-out work.)
 */
import fs from 'node:fs';
import path from 'node:path';
import { builds, replicas } from '../src/db/tables.js';
import { eq } from '../src/db/orm.js';
import { commitsOf, githubFor } from './helpers/github.js';
import { replicasPerTest, uploadInTwoHalves } from './helpers/replicas.js';
import { sha } from './helpers/server.js';
import { siteTarball } from './helpers/tarballs.js';
import { eventually } from './helpers/eventually.js';

const LABEL = 'safe for preview';
const group = replicasPerTest({ leaseMs: 900 });
const start = (tmp?: string) => group.start(tmp);
const waitFor = (check: () => boolean | Promise<boolean>) => eventually(check);

test('a replica whose heartbeat paused past the lease and then resumed is alive again, and its upload in flight is kept', async () => {
  const a = await start();
  const b = await start(a.tmp);
  const commit = sha('d1');
  githubFor({ number: 9, commits: [commit], labels: [LABEL] });
  commitsOf({ number: 9, commits: [commit], labels: [LABEL] });
  const upload = await uploadInTwoHalves(a, 9, commit, siteTarball('in flight on a'));
  await waitFor(async () => (await a.core.db.orm.select().from(builds).where(eq(builds.status, 'pending'))).length === 1);
  // What b's heartbeat sees after a's heartbeat could not be written for longer than the lease (a database outage).
  await b.core.db.orm.update(replicas).set({ heartbeatAt: new Date(Date.now() - 5_000) }).where(eq(replicas.id, a.replica.id));
  expect(await b.replica.takeOverDead()).toEqual([a.replica.id]);
  // a goes on: its next heartbeat finds its row gone and registers again.
  await eventually(() => b.replica.isAlive(a.replica.id), 5_000).catch(() => undefined);
  const aliveAfterResume = await b.replica.isAlive(a.replica.id);
  // A third replica starts (a deploy, a scale-up).
  const c = await start(a.tmp);
  const claimAfterStart = (await c.core.db.orm.select().from(builds)).map((r) => ({ status: r.status, owner: r.claimOwner === a.replica.id ? 'a' : r.claimOwner }));
  const stagingOfA = fs.readdirSync(a.core.store.stagingDir).filter((f) => f.startsWith(a.replica.id));
  githubFor({ number: 9, commits: [commit], labels: [LABEL] });
  commitsOf({ number: 9, commits: [commit], labels: [LABEL] });
  upload.finish();
  const res = await upload.answered;
  const answer = { status: res.status, body: await res.text() };
  const rows = (await c.core.db.orm.select().from(builds)).map((r) => r.status);
  expect({ aliveAfterResume, claimAfterStart, stagingOfA: stagingOfA.length > 0, status: answer.status, rows }).toEqual({
    aliveAfterResume: true, claimAfterStart: [{ status: 'pending', owner: 'a' }], stagingOfA: true, status: 201, rows: ['ready'],
  });
});

test("after such a pause, a concurrent upload of the same SHA on another replica does not take over the resumed replica's live claim", async () => {
  const a = await start();
  const b = await start(a.tmp);
  const commit = sha('d2');
  githubFor({ number: 10, commits: [commit], labels: [LABEL] });
  commitsOf({ number: 10, commits: [commit], labels: [LABEL] });
  const upload = await uploadInTwoHalves(a, 10, commit, siteTarball('first, on a'));
  await waitFor(async () => (await a.core.db.orm.select().from(builds).where(eq(builds.status, 'pending'))).length === 1);
  await b.core.db.orm.update(replicas).set({ heartbeatAt: new Date(Date.now() - 5_000) }).where(eq(replicas.id, a.replica.id));
  expect(await b.replica.takeOverDead()).toEqual([a.replica.id]);
  await eventually(() => b.replica.isAlive(a.replica.id), 5_000).catch(() => undefined);
  githubFor({ number: 10, commits: [commit], labels: [LABEL] });
  commitsOf({ number: 10, commits: [commit], labels: [LABEL] });
  const rival = await fetch(`${b.url}/create-build/10/${commit}`, {
    method: 'POST',
    headers: { authorization: `Token ${await b.token({ 'pull-request': 10 })}`, 'content-type': 'application/gzip' },
    body: new Uint8Array(siteTarball('second, on b')),
  });
  const rivalAnswer = { status: rival.status, retryAfter: rival.headers.get('retry-after') };
  githubFor({ number: 10, commits: [commit], labels: [LABEL] });
  commitsOf({ number: 10, commits: [commit], labels: [LABEL] });
  upload.finish();
  const first = await upload.answered;
  const firstAnswer = { status: first.status, body: await first.text() };
  const served = fs.readFileSync(path.join(a.config.buildsDir, 'docs', '10', commit.slice(0, 7), 'index.html'), 'utf8');
  expect({ rivalAnswer, first: firstAnswer.status, served }).toEqual({ rivalAnswer: { status: 409, retryAfter: '2' }, first: 201, served: expect.stringContaining('first, on a') });
});

test("the failure of an upload whose claim another replica took over does not delete that replica's claim", async () => {
  const a = await start();
  const b = await start(a.tmp);
  const commit = sha('d3');
  githubFor({ number: 11, commits: [commit], labels: [LABEL] });
  commitsOf({ number: 11, commits: [commit], labels: [LABEL] });
  const good = siteTarball('good');
  const broken = Buffer.concat([good.subarray(0, good.length >> 1), Buffer.alloc(good.length, 0x41)]);
  const upA = await uploadInTwoHalves(a, 11, commit, broken);
  await waitFor(async () => (await a.core.db.orm.select().from(builds).where(eq(builds.status, 'pending'))).length === 1);
  // What b's takeover does while a looks dead (its heartbeat unwritten past the lease): the claim becomes b's.
  await b.core.db.orm.update(builds).set({ claimOwner: b.replica.id, claimExpiresAt: b.replica.leaseUntil() }).where(eq(builds.status, 'pending'));
  upA.finish();
  const ra = await upA.answered;
  expect(ra.status).toBe(400);
  // b's claim is still there for b's upload to finish.
  const rows = (await b.core.db.orm.select().from(builds)).map((r) => ({ status: r.status, owner: r.claimOwner === b.replica.id ? 'b' : r.claimOwner }));
  expect(rows).toEqual([{ status: 'pending', owner: 'b' }]);
});

test.each([
  ['while its body streamed', 'streaming'],
  ['between the rename of its folder and marking it ready', 'published'],
] as const)('an upload whose claim another replica took over %s is not published by this one: 409 with Retry-After, nothing stored, the claim left to the other', async (_when, moment) => {
  const a = await start();
  const b = await start(a.tmp);
  const commit = sha(moment === 'streaming' ? 'd4' : 'd5');
  githubFor({ number: 12, commits: [commit], labels: [LABEL] });
  commitsOf({ number: 12, commits: [commit], labels: [LABEL] });
  // What b's takeover does while a looks dead (its heartbeat unwritten past the lease): the claim becomes b's.
  const takeOver = () => b.core.db.orm.update(builds).set({ claimOwner: b.replica.id, claimExpiresAt: b.replica.leaseUntil() }).where(eq(builds.status, 'pending'));
  if (moment === 'published') {
    const publish = a.core.store.publish.bind(a.core.store);
    a.core.store.publish = async (...args) => {
      const folder = await publish(...args);
      await takeOver();
      return folder;
    };
  }
  const upload = await uploadInTwoHalves(a, 12, commit, siteTarball('on a, whose claim b took'));
  await waitFor(async () => (await a.core.db.orm.select().from(builds).where(eq(builds.status, 'pending'))).length === 1);
  if (moment === 'streaming') await takeOver();
  upload.finish();
  const res = await upload.answered;
  const answer = { status: res.status, retryAfter: res.headers.get('retry-after'), body: await res.json() };
  const rows = (await b.core.db.orm.select().from(builds)).map((r) => ({ status: r.status, owner: r.claimOwner === b.replica.id ? 'b' : r.claimOwner }));
  const published = ['12', 'hidden--12'].some((folder) => fs.existsSync(path.join(a.config.buildsDir, 'docs', folder, commit.slice(0, 7))));
  expect({ answer, rows, published }).toEqual({
    answer: {
      status: 409,
      retryAfter: '2',
      body: { error: `Another replica took over storing ${commit.slice(0, 7)} for pull request #12 (this one looked stopped); try again shortly.` },
    },
    rows: [{ status: 'pending', owner: 'b' }],
    published: false,
  });
});
