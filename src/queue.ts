import { and, asc, eq, isNull, lt, lte, min, count, or, sql } from './db/orm.js';
import crypto from 'node:crypto';
import type { Logger } from 'pino';
import type { Database } from './db/database.js';
import { first } from './db/query.js';
import { jobs } from './db/tables.js';
import { HttpError } from './errors.js';

export type Job = typeof jobs.$inferSelect;

/**
 * How a kind of job is run. `lane` separates GitHub reads (decisions) from GitHub writes (feedback): writes
 * are paced one at a time, and a slow write never holds a decision of another PR behind it. CDN purges
 * (src/cdn.ts) have a lane of their own: a slow CDN holds neither.
 * `merge` coalesces a new request into a row still waiting (default: the newer data wins).
 */
export interface JobKind {
  lane: 'reads' | 'writes' | 'purges';
  run(data: Record<string, unknown>, job: Job): Promise<void>;
  merge?(older: Record<string, unknown>, newer: Record<string, unknown>): Record<string, unknown>;
}

/** Thrown by a job to be retried no sooner than `afterMs` (GitHub's `retry-after`). */
export class RetryLater extends Error {
  constructor(
    message: string,
    readonly afterMs: number,
  ) {
    super(message);
  }
}

const MAX_BACKOFF_MS = 10 * 60_000;
/** The channel every enqueue notifies: the replicas' queues listen to it instead of waiting for their poll. */
const JOBS_CHANNEL = 'jobs';
/**
 * How often a queue looks at its table unasked: for jobs that become due later (backoff, delays) and, on
 * PostgreSQL, as the safety net of a wake-up lost while the LISTEN connection was down.
 */
export const POLL_MS = { sqlite: 500, postgres: 1000 } as const;
const LANE_SIZE = { reads: 4, writes: 1, purges: 2 } as const;

/** 1 s, 2 s, 4 s … 10 min, with ±20 % jitter so a recovering GitHub is not hit by every job in one second. */
export function backoffMs(attempts: number): number {
  const base = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** Math.max(0, attempts - 1));
  return Math.round(base * (0.8 + Math.random() * 0.4));
}

/** The wait GitHub asked for (403/429 with `retry-after` or an exhausted `x-ratelimit-remaining`), in ms. */
export function retryAfterMs(err: unknown, now = Date.now()): number | undefined {
  const headers = (err as { response?: { headers?: Record<string, string | undefined> } }).response?.headers ?? {};
  const retryAfter = headers['retry-after'];
  if (retryAfter !== undefined && /^[0-9]+$/.test(retryAfter)) return Number(retryAfter) * 1000;
  if (headers['x-ratelimit-remaining'] === '0' && headers['x-ratelimit-reset']) {
    return Math.max(1000, Number(headers['x-ratelimit-reset']) * 1000 - now);
  }
  return undefined;
}

/**
 * A durable work queue in the database (SQLite or PostgreSQL): decisions and GitHub feedback are rows before they are promises. Rows are
 * run when due, one at a time per key (so one PR's work is done in order), retried with backoff up to 10 min
 * apart, and survive restarts. A job whose error is a 4xx HttpError (the PR does not exist, the app is not
 * installed) is dropped with a warning: retrying cannot change GitHub's answer.
 */
export class WorkQueue {
  private readonly running = new Map<number, Promise<void>>();
  private readonly busyKeys = new Set<string>();
  private readonly busyLanes = { reads: 0, writes: 0, purges: 0 };
  private timer?: NodeJS.Timeout;
  private stopped = true;
  private idleWaiters: (() => void)[] = [];
  /** The pump under way, if any, and whether another was asked for meanwhile (pumps run one at a time). */
  private pumping?: Promise<void>;
  private pumpAgain = false;

  private readonly kinds: Record<string, JobKind> = {};
  private renewTimer?: NodeJS.Timeout;
  private unlisten?: Promise<(() => Promise<void>) | undefined>;

  /**
   * `owner` names this process among the replicas sharing the database: a job runs under its lease (`leaseMs`,
   * renewed while it runs), and no replica starts a job whose key another replica's live lease holds.
   */
  constructor(
    private readonly db: Database,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
    private readonly owner: string = crypto.randomUUID(),
    private readonly leaseMs = 30_000,
    private readonly pollMs: number = POLL_MS[db.kind],
  ) {}

  register(kind: string, handler: JobKind): void {
    this.kinds[kind] = handler;
  }

  /** Records work (coalesced with a waiting row of the same kind and key) and wakes the runner. */
  async enqueue(kind: string, key: string, data: Record<string, unknown>, delayMs = 0): Promise<void> {
    const dueAt = new Date(this.now() + delayMs);
    // Joins the caller's transaction when there is one: the work is recorded with the decision that asked for it.
    // Insert first, merge on conflict: another replica may insert the same row between a read and an insert
    // (PostgreSQL), and a UNIQUE violation here would be a 500 on a webhook that GitHub never delivers again.
    // The merge is in JS, so the update holds only if the row is still the generation read; otherwise read again.
    await this.db.transaction(async (tx) => {
      for (;;) {
        const inserted = await tx.insert(jobs).values({ kind, key, data, dueAt }).onConflictDoNothing().returning({ id: jobs.id });
        if (inserted.length) return;
        const existing = await first(tx.select().from(jobs).where(and(eq(jobs.kind, kind), eq(jobs.key, key))).limit(1));
        if (!existing) continue; // it ran and was removed in between: insert again
        const merged = this.kinds[kind]?.merge?.(existing.data, data) ?? { ...existing.data, ...data };
        const updated = await tx
          .update(jobs)
          .set({ data: merged, dueAt: existing.dueAt < dueAt ? existing.dueAt : dueAt, generation: sql`${jobs.generation} + 1` })
          .where(and(eq(jobs.id, existing.id), eq(jobs.generation, existing.generation)))
          .returning({ id: jobs.id });
        if (updated.length) return;
      }
    });
    this.wake();
    // Every replica's queue (this one's too): inside a caller's transaction the notice goes out at its commit.
    await this.db.notify(JOBS_CHANNEL);
  }

  start(): void {
    this.stopped = false;
    this.timer = setInterval(() => void this.pump(), this.pollMs).unref();
    // Until the LISTEN is in place (or if it cannot be), the poll alone finds the work.
    this.unlisten = this.db.listen(JOBS_CHANNEL, () => this.wake()).catch((err: unknown) => {
      this.log.warn({ err }, 'the work queue cannot listen for wake-ups; it polls its table only');
      return undefined;
    });
    this.renewTimer = setInterval(() => void this.renewLeases(), Math.max(50, Math.floor(this.leaseMs / 3))).unref();
    this.wake();
  }

  /** Whether wake-ups from other replicas reach this queue (its LISTEN is in place); false before start. */
  async listening(): Promise<boolean> {
    return Boolean(await this.unlisten);
  }

  /** Stops taking jobs; waits (at most `waitMs`) for those running. Waiting rows stay for the next start. */
  async stop(waitMs = 10_000): Promise<boolean> {
    this.stopped = true;
    clearInterval(this.timer);
    const unlisten = this.unlisten;
    this.unlisten = undefined;
    void unlisten?.then((stop) => stop?.()).catch(() => {});
    const done = Promise.all(this.running.values()).then(() => true);
    // The leases of jobs still running are renewed until they end (or the process does).
    void done.then(() => clearInterval(this.renewTimer));
    const finished = done;
    const timeout = new Promise<boolean>((resolve) => setTimeout(() => resolve(false), waitMs).unref());
    return Promise.race([finished, timeout]);
  }

  /** Resolves when no job is running and none is due now (jobs waiting for their backoff do not count). */
  async settled(): Promise<void> {
    for (;;) {
      await this.pump();
      if (this.running.size === 0 && !(await this.dueCount())) return;
      await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    }
  }

  /** Rows waiting, and how long the oldest has waited (for /metrics). */
  async depth(): Promise<{ jobs: number; oldestSeconds: number }> {
    const row = await first(this.db.orm.select({ n: count(), oldest: min(jobs.createdAt) }).from(jobs));
    const oldest = row?.oldest ? (this.now() - new Date(row.oldest).getTime()) / 1000 : 0;
    return { jobs: row?.n ?? 0, oldestSeconds: Math.max(0, oldest) };
  }

  pendingOf(kind: string, key: string): Promise<Job | undefined> {
    return first(this.db.orm.select().from(jobs).where(and(eq(jobs.kind, kind), eq(jobs.key, key))).limit(1));
  }

  private async dueCount(): Promise<number> {
    const now = new Date(this.now());
    // A job another replica runs now is not waiting here.
    const row = await first(this.db.orm.select({ n: count() }).from(jobs).where(and(lte(jobs.dueAt, now), or(isNull(jobs.leaseUntil), lt(jobs.leaseUntil, now)))));
    return row?.n ?? 0;
  }

  private wake(): void {
    // Outside the caller's transaction (an enqueue is often made inside one): the runner's claims are its own.
    if (!this.stopped) this.db.detached(() => setImmediate(() => void this.pump()));
  }

  /**
   * Runs a pump, or, when one is under way, makes it go round once more: one at a time, so that two pumps never
   * both count a lane or a key as free while their claims are on their way to the database.
   */
  private pump(): Promise<void> {
    if (this.pumping) {
      this.pumpAgain = true;
      return this.pumping;
    }
    this.pumping = (async () => {
      do {
        this.pumpAgain = false;
        await this.pumpOnce().catch((err: unknown) => {
          // The database is closing at shutdown; otherwise the next timer tick tries again.
          if (!this.stopped) this.log.warn({ err }, 'the work queue could not read its table');
        });
      } while (this.pumpAgain);
    })().finally(() => (this.pumping = undefined));
    return this.pumping;
  }

  /** Starts every due job whose key is free and whose lane has room, oldest first. */
  private async pumpOnce(): Promise<void> {
    if (!this.stopped) {
      const now = new Date(this.now());
      const due = await this.db.orm
        .select()
        .from(jobs)
        .where(and(lte(jobs.dueAt, now), or(isNull(jobs.leaseUntil), lt(jobs.leaseUntil, now))))
        .orderBy(asc(jobs.id))
        .limit(200);
      for (const job of due) {
        const kind = this.kinds[job.kind];
        if (!kind || this.running.has(job.id) || this.busyKeys.has(job.key)) continue;
        if (this.busyLanes[kind.lane] >= LANE_SIZE[kind.lane]) continue;
        const claimed = await this.claim(job);
        if (claimed) this.launch(claimed, kind);
      }
    }
    if (this.running.size === 0 && (this.stopped || !(await this.dueCount()))) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      waiters.forEach((resolve) => resolve());
    }
  }

  /**
   * Takes the job's lease in one UPDATE: only when no live lease holds it, nor any other job of its key (one
   * PR's work never runs on two replicas at once). Returns the row as claimed (its data and generation now).
   *
   * On PostgreSQL (READ COMMITTED) two replicas claiming two rows of one key could each find no live lease of
   * that key before the other commits: the key's advisory lock makes the second claim wait for the first to
   * commit, and its UPDATE (a new snapshot) then sees that lease. `FOR UPDATE SKIP LOCKED` passes over a row
   * another replica is claiming instead of queueing behind it. On SQLite the write lock serialises claims already.
   */
  private async claim(job: Job): Promise<Job | undefined> {
    const now = this.now();
    return this.db.transaction(async (tx) => {
      await this.db.lockName(tx, `jobs:key:${job.key}`, 'exclusive');
      const notClaimedElsewhere =
        this.db.kind === 'postgres' ? sql`${jobs.id} in (select id from jobs where id = ${job.id} for update skip locked)` : undefined;
      return first(
        tx
          .update(jobs)
          .set({ leaseOwner: this.owner, leaseUntil: new Date(now + this.leaseMs) })
          .where(
            and(
              eq(jobs.id, job.id),
              or(isNull(jobs.leaseUntil), lt(jobs.leaseUntil, new Date(now))),
              // The time as the column stores it (sql.param maps it like a column value, on either backend).
              sql`not exists (select 1 from jobs as other where other.key = jobs.key and other.id <> jobs.id and other.lease_until >= ${sql.param(new Date(now), jobs.leaseUntil)})`,
              notClaimedElsewhere,
            ),
          )
          .returning(),
      );
    });
  }

  /** Keeps the leases of the jobs running here from expiring. */
  private async renewLeases(): Promise<void> {
    if (!this.running.size) return;
    try {
      await this.db.orm
        .update(jobs)
        .set({ leaseUntil: new Date(this.now() + this.leaseMs) })
        .where(eq(jobs.leaseOwner, this.owner));
    } catch {
      // The database is closing: the leases expire and another replica (or the next start) takes the jobs.
    }
  }

  /** Lets the row go for its next run (asked for again while it ran, or to be retried). */
  private async release(job: Job, set: Partial<Job> = {}): Promise<void> {
    await this.db.orm
      .update(jobs)
      .set({ ...set, leaseOwner: null, leaseUntil: null })
      .where(and(eq(jobs.id, job.id), eq(jobs.leaseOwner, this.owner)));
  }

  /** Deletes the row unless it was asked for again while it ran (then it stays, released, and runs once more). */
  private async finish(job: Job): Promise<void> {
    const done = await this.db.orm
      .delete(jobs)
      .where(and(eq(jobs.id, job.id), eq(jobs.generation, job.generation)))
      .returning({ id: jobs.id });
    if (!done.length) await this.release(job);
  }

  private launch(job: Job, kind: JobKind): void {
    this.busyKeys.add(job.key);
    this.busyLanes[kind.lane]++;
    // runOne records its own failures; a failure to record one (database closed at shutdown) is dropped here.
    const task = this.runOne(job, kind).catch(() => undefined).finally(() => {
      this.busyKeys.delete(job.key);
      this.busyLanes[kind.lane]--;
      this.running.delete(job.id);
      this.wake();
      if (this.stopped) void this.pump();
    });
    this.running.set(job.id, task);
  }

  private async runOne(job: Job, kind: JobKind): Promise<void> {
    // Start and end of every run, per replica: the replica simulation checks from them that no two runs of one
    // key overlapped. The end is logged before the row is let go, so it comes before any other replica's start.
    const run = { job: job.kind, key: job.key, id: job.id, generation: job.generation, replica: this.owner };
    this.log.debug(run, 'job started');
    try {
      await kind.run(job.data, job);
      this.log.debug({ ...run, outcome: 'done' }, 'job finished');
      // Done, unless it was asked for again while it ran: then the row stays and runs once more.
      await this.finish(job);
    } catch (err) {
      const message = (err as Error).message;
      this.log.debug({ ...run, outcome: isFinal(err) ? 'dropped' : 'retry' }, 'job finished');
      if (isFinal(err)) {
        this.log.warn({ job: job.kind, key: job.key }, `dropped: ${message}`);
        await this.finish(job);
        return;
      }
      const attempts = job.attempts + 1;
      const wait = err instanceof RetryLater ? err.afterMs : (retryAfterMs((err as { cause?: unknown }).cause ?? err) ?? backoffMs(attempts));
      this.log.warn({ job: job.kind, key: job.key, attempts, retryInSeconds: Math.round(wait / 1000) }, `will retry: ${message}`);
      await this.release(job, { attempts, lastError: message.slice(0, 500), dueAt: new Date(this.now() + wait) });
    }
  }
}

/**
 * Errors that retrying cannot change: our own 4xx sentences (the PR does not exist, the app is not installed)
 * and GitHub's 4xx answers other than its rate limits (403 with `retry-after` or "rate limit", and 429).
 */
function isFinal(err: unknown): boolean {
  if (err instanceof HttpError) return err.status < 500;
  const status = (err as { status?: number }).status;
  if (status === undefined || status < 400 || status >= 500 || status === 429) return false;
  if (status === 403 && (retryAfterMs(err) !== undefined || /rate limit/i.test((err as Error).message))) return false;
  return true;
}
