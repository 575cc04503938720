/**
 * The durable work queue (src/queue.ts) and the repository lock, on a real SQLite file, or on a PostgreSQL
 * database of its own when DATABASE_URL is set (npm run test:postgres).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import type { Database } from '../src/db/database.js';
import { openDatabase } from '../src/db/open.js';
import { freshPostgresDatabase, postgresUrl, type TestDatabase } from './helpers/postgres.js';
import { jobs } from '../src/db/tables.js';
import { forbidden } from '../src/errors.js';
import { SharedLock } from '../src/lock.js';
import pg from 'pg';
import { backoffMs, retryAfterMs, WorkQueue, type Job } from '../src/queue.js';
import { eventually } from './helpers/eventually.js';

let tmp: string;
let pgDatabase: TestDatabase | undefined;
let db: Database;
/** Every connection a test opened (the replicas' own), closed after it. */
let opened: Database[];
let queue: WorkQueue;
const log = pino({ level: 'silent' });

/** Another connection to the test's database, as another replica has. */
async function connect(): Promise<Database> {
  const another = await openDatabase({ databaseFile: path.join(tmp, 'q.sqlite'), databaseUrl: pgDatabase?.url });
  opened.push(another);
  return another;
}

beforeEach(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-queue-'));
  opened = [];
  pgDatabase = postgresUrl ? await freshPostgresDatabase() : undefined;
  db = await connect();
  queue = new WorkQueue(db, log);
});
afterEach(async () => {
  await queue.stop(1000);
  for (const each of opened) await each.close();
  await pgDatabase?.drop();
  fs.rmSync(tmp, { recursive: true, force: true });
});

test('requests for one key are coalesced into one row; the merge decides the data', async () => {
  const seen: unknown[] = [];
  queue.register('feedback', {
    lane: 'writes',
    run: async (data) => void seen.push(data.ids),
    merge: (a, b) => ({ ids: [...(a.ids as number[]), ...(b.ids as number[])] }),
  });
  for (const id of [1, 2, 3]) await queue.enqueue('feedback', 'pr:1#5', { ids: [id] });
  expect(await db.orm.select().from(jobs)).toHaveLength(1);
  queue.start();
  await queue.settled();
  expect(seen).toEqual([[1, 2, 3]]);
  expect(await db.orm.select().from(jobs)).toEqual([]);
});

test('a request arriving while its row runs is not lost: the row runs once more', async () => {
  let runs = 0;
  let release!: () => void;
  queue.register('decide', {
    lane: 'reads',
    run: async () => {
      runs++;
      if (runs === 1) await new Promise<void>((r) => (release = r));
    },
  });
  queue.start();
  await queue.enqueue('decide', 'pr:1#1', {});
  while (!release) await new Promise((r) => setTimeout(r, 5));
  await queue.enqueue('decide', 'pr:1#1', {});
  release();
  await queue.settled();
  expect(runs).toBe(2);
});

test('a failure is kept with its error and retried after a backoff; a 4xx sentence is dropped', async () => {
  queue.register('decide', { lane: 'reads', run: async () => Promise.reject(Object.assign(new Error('GitHub is down'), { status: 502 })) });
  queue.register('gone', { lane: 'reads', run: async () => Promise.reject(forbidden('Pull request #9 does not exist.')) });
  queue.start();
  await queue.enqueue('decide', 'pr:1#1', {});
  await queue.enqueue('gone', 'pr:1#9', {});
  await queue.settled();
  const rows = await db.orm.select().from(jobs);
  expect(rows).toEqual([expect.objectContaining({ kind: 'decide', attempts: 1, lastError: 'GitHub is down' })]);
  expect(rows[0]!.dueAt.getTime()).toBeGreaterThan(Date.now() + 500);
});

test('rows survive a restart and run at the next start', async () => {
  await queue.enqueue('decide', 'pr:1#1', { n: 1 });
  await queue.stop();
  const again = new WorkQueue(db, log);
  const seen: unknown[] = [];
  again.register('decide', { lane: 'reads', run: async (data) => void seen.push(data.n) });
  again.start();
  await again.settled();
  await again.stop();
  expect(seen).toEqual([1]);
});

test('one key runs in order; a slow write of one PR does not hold the decision of another', async () => {
  const order: string[] = [];
  let releaseWrite!: () => void;
  queue.register('feedback', { lane: 'writes', run: async (d) => { order.push(`write ${d.pr}`); await new Promise<void>((r) => (releaseWrite = r)); } });
  queue.register('decide', { lane: 'reads', run: async (d) => void order.push(`decide ${d.pr}`) });
  await queue.enqueue('feedback', 'pr:1#1', { pr: 1 });
  await queue.enqueue('decide', 'pr:1#1', { pr: 1 });
  await queue.enqueue('decide', 'pr:1#2', { pr: 2 });
  queue.start();
  while (order.length < 2) await new Promise((r) => setTimeout(r, 5));
  expect(order).toEqual(['write 1', 'decide 2']); // PR 1's decision waits for PR 1's write, PR 2's does not
  releaseWrite();
  await queue.settled();
  expect(order).toEqual(['write 1', 'decide 2', 'decide 1']);
});

test("backoff doubles from 1 s to 10 min; GitHub's retry-after and rate-limit reset are honoured", () => {
  expect(backoffMs(1)).toBeGreaterThanOrEqual(800);
  expect(backoffMs(1)).toBeLessThanOrEqual(1200);
  expect(backoffMs(4)).toBeGreaterThanOrEqual(6400);
  expect(backoffMs(30)).toBeLessThanOrEqual(12 * 60_000);
  expect(backoffMs(30)).toBeGreaterThanOrEqual(8 * 60_000);
  expect(retryAfterMs({ response: { headers: { 'retry-after': '30' } } })).toBe(30_000);
  expect(retryAfterMs({ response: { headers: { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': '1100' } } }, 1_000_000)).toBe(100_000);
  expect(retryAfterMs(new Error('x'))).toBeUndefined();
});

test('a shared lock: shared holders together, an exclusive one alone, and not starved by later shared ones', async () => {
  const lock = new SharedLock();
  const events: string[] = [];
  let releaseFirst!: () => void;
  const first = lock.shared('repo:1', async () => {
    events.push('shared 1 in');
    await new Promise<void>((r) => (releaseFirst = r));
    events.push('shared 1 out');
  });
  const second = lock.shared('repo:1', async () => void events.push('shared 2 in'));
  await second;
  const exclusive = lock.exclusive('repo:1', async () => void events.push('exclusive'));
  const third = lock.shared('repo:1', async () => void events.push('shared 3 in'));
  await new Promise((r) => setTimeout(r, 10));
  expect(events).toEqual(['shared 1 in', 'shared 2 in']);
  releaseFirst();
  await Promise.all([first, exclusive, third]);
  expect(events).toEqual(['shared 1 in', 'shared 2 in', 'shared 1 out', 'exclusive', 'shared 3 in']);
});

describe('two replicas on one database file', () => {
  const running = new Map<string, number>();
  let overlaps: string[];
  let runsBy: Record<string, number>;
  let runsOf: Record<string, number>;
  const replicaQueue = async (name: string, leaseMs = 30_000) => {
    const q = new WorkQueue(await connect(), log, Date.now, name, leaseMs);
    for (const kind of ['decide', 'feedback']) {
      q.register(kind, {
        lane: kind === 'decide' ? 'reads' : 'writes',
        run: async (_data, job) => {
          if (running.get(job.key)) overlaps.push(job.key);
          running.set(job.key, (running.get(job.key) ?? 0) + 1);
          runsBy[name] = (runsBy[name] ?? 0) + 1;
          runsOf[`${job.kind} ${job.key}`] = (runsOf[`${job.kind} ${job.key}`] ?? 0) + 1;
          await new Promise((r) => setTimeout(r, 2)); // a GitHub call: other work interleaves
          running.set(job.key, running.get(job.key)! - 1);
        },
      });
    }
    return q;
  };
  beforeEach(() => {
    running.clear();
    overlaps = [];
    runsBy = {};
    runsOf = {};
  });

  test('draining one queue together, they never run two jobs of one key at once, and every job runs', async () => {
    const a = await replicaQueue('replica-a');
    const b = await replicaQueue('replica-b');
    for (let pr = 1; pr <= 6; pr++) {
      await a.enqueue('decide', `pr:1#${pr}`, {});
      await b.enqueue('feedback', `pr:1#${pr}`, {});
    }
    a.start();
    b.start();
    // Asked again while they run: each such row runs once more, still one at a time per key.
    for (let pr = 1; pr <= 6; pr++) await b.enqueue('decide', `pr:1#${pr}`, { again: true });
    while ((await db.orm.select().from(jobs)).length) await new Promise((r) => setTimeout(r, 5));
    await Promise.all([a.stop(), b.stop()]);
    expect(overlaps).toEqual([]);
    expect((runsBy['replica-a'] ?? 0) + (runsBy['replica-b'] ?? 0)).toBeGreaterThanOrEqual(12);
  });

  test('each of many jobs on shared keys runs exactly once, never two of one key at a time', async () => {
    const [a, b] = [await replicaQueue('replica-a'), await replicaQueue('replica-b')];
    const enqueued: string[] = [];
    for (let pr = 1; pr <= 15; pr++) {
      for (const kind of ['decide', 'feedback']) {
        await (pr % 2 ? a : b).enqueue(kind, `pr:1#${pr}`, {});
        enqueued.push(`${kind} pr:1#${pr}`);
      }
    }
    a.start();
    b.start();
    await eventually(async () => (await db.orm.select().from(jobs)).length === 0);
    await Promise.all([a.stop(), b.stop()]);
    expect(overlaps).toEqual([]);
    expect(runsOf).toEqual(Object.fromEntries(enqueued.map((job) => [job, 1])));
  });

  // SQLite's wake-ups are in-process (one process serves a file); replicas on PostgreSQL wake each other by NOTIFY.
  const title = 'an enqueue on one replica wakes the other at once (LISTEN/NOTIFY), not at its next poll';
  (postgresUrl ? test : test.skip)(postgresUrl ? title : `${title} (skipped on SQLite: one process serves a file, its wake-ups are in-process)`, async () => {
    const ranAt: number[] = [];
    // Its poll would come only after jest's timeout: only the notice can make it run the job.
    const sleeper = new WorkQueue(await connect(), log, Date.now, 'sleeper', 30_000, 600_000);
    sleeper.register('decide', { lane: 'reads', run: async () => void ranAt.push(performance.now()) });
    sleeper.start();
    expect(await sleeper.listening()).toBe(true);
    await sleeper.settled();
    const other = new WorkQueue(await connect(), log, Date.now, 'other'); // never started: it only enqueues
    const sentAt = performance.now();
    await other.enqueue('decide', 'pr:1#1', {});
    await eventually(() => ranAt.length === 1);
    await sleeper.stop();
    const latencyMs = ranAt[0]! - sentAt;
    console.log(`queue wake-up by NOTIFY: the other replica ran the job ${latencyMs.toFixed(1)} ms after the enqueue began`);
    expect(latencyMs).toBeLessThan(1000);
  });

  const raceTitle = 'a claim of a key whose other row another replica is claiming waits for that claim, then leaves the key alone';
  (postgresUrl ? test : test.skip)(postgresUrl ? raceTitle : `${raceTitle} (skipped on SQLite: its write lock serialises every claim)`, async () => {
    const [a, b] = [await replicaQueue('replica-a'), await replicaQueue('replica-b')];
    await a.enqueue('decide', 'pr:1#1', {});
    await a.enqueue('feedback', 'pr:1#1', {});
    const [decide, feedback] = await db.orm.select().from(jobs).orderBy(jobs.id);
    const claim = (q: WorkQueue, job: Job) => (q as unknown as { claim(job: Job): Promise<Job | undefined> }).claim(job);
    const aDb = (a as unknown as { db: Database }).db;
    let second: Promise<Job | undefined> | undefined;
    // A's claim of one row is held uncommitted (it joins the transaction around it) while B claims the other row.
    const first = await aDb.transaction(async () => {
      const claimed = await claim(a, decide!);
      second = claim(b, feedback!);
      // Until B's claim has either ended (it did not wait) or waits for A's advisory lock.
      const admin = new pg.Client({ connectionString: pgDatabase!.url });
      await admin.connect();
      try {
        let settled = false;
        void second.finally(() => (settled = true));
        await eventually(async () => settled || (await admin.query("select 1 from pg_locks where locktype = 'advisory' and not granted")).rowCount! > 0);
      } finally {
        await admin.end();
      }
      return claimed;
    });
    expect(first?.id).toBe(decide!.id);
    // Two runs of one key at once, had B's claim not seen A's lease.
    expect(await second).toBeUndefined();
  });

  test("a job whose replica died is taken over by another once its lease expires, not before", async () => {
    const seen: string[] = [];
    const dead = new WorkQueue(await connect(), log, Date.now, 'dead', 200);
    dead.register('decide', { lane: 'reads', run: () => new Promise<void>(() => seen.push('dead started')) }); // never ends
    await dead.enqueue('decide', 'pr:1#1', {});
    dead.start();
    while (!seen.length) await new Promise((r) => setTimeout(r, 5));
    void dead.stop(0); // stops renewing only once its job ends: never; what a SIGKILL leaves is a lease not renewed
    (dead as unknown as { renewTimer: NodeJS.Timeout }).renewTimer.close();
    const other = new WorkQueue(await connect(), log, Date.now, 'alive', 200);
    other.register('decide', { lane: 'reads', run: async () => void seen.push('taken over') });
    other.start();
    expect((await db.orm.select().from(jobs))[0]!.leaseOwner).toBe('dead');
    while (seen.length < 2) await new Promise((r) => setTimeout(r, 5));
    expect(Date.now()).toBeGreaterThanOrEqual((await db.orm.select().from(jobs))[0]?.leaseUntil?.getTime() ?? 0);
    await other.stop();
    expect(seen).toEqual(['dead started', 'taken over']);
    expect(await db.orm.select().from(jobs)).toEqual([]);
  });
});
