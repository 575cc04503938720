import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import type { Logger } from 'pino';
import { and, eq, gt, gte, isNull, lt, lte, ne, or } from './db/orm.js';
import type { Database } from './db/database.js';
import { first } from './db/query.js';
import { replicas, schedules } from './db/tables.js';

/** How long a replica, a claim or a lease stays valid without being renewed (renewed every third of it). */
export const LEASE_MS = 30_000;

/** Whether a process of this machine still exists (a signal 0 only asks). */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Where this process's pids mean something: the host name, the kernel's boot id and the pid namespace (Linux).
 * Containers that share a host name (host networking, a pod) but not their processes differ here, so one never
 * takes another's live pid for a dead one of its own.
 */
function processScope(): string {
  const read = (f: string, how: 'file' | 'link') => {
    try {
      return how === 'file' ? fs.readFileSync(f, 'utf8').trim() : fs.readlinkSync(f);
    } catch {
      return '';
    }
  };
  return [os.hostname(), read('/proc/sys/kernel/random/boot_id', 'file'), read('/proc/self/ns/pid', 'link')].filter(Boolean).join('/');
}

/**
 * This server process among the others sharing the database and DATA_DIR: a random id per start, a row
 * renewed while it runs (the per-replica clean-stop marker). A replica is dead when its row was not stopped
 * cleanly and its heartbeat expired, or, on this machine, when its process is gone (a restart right after a
 * SIGKILL need not wait for the lease).
 */
export class Replica {
  readonly id = crypto.randomUUID();
  readonly host = processScope();
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly db: Database,
    readonly leaseMs = LEASE_MS,
    private readonly now: () => number = Date.now,
  ) {}

  /** Until when a claim or lease taken now holds. */
  leaseUntil(): Date {
    return new Date(this.now() + this.leaseMs);
  }

  /** Records this replica as running. */
  async register(): Promise<void> {
    await this.db.orm.insert(replicas).values({ id: this.id, host: this.host, pid: process.pid, heartbeatAt: new Date(this.now()) });
  }

  /** Renews the heartbeat every third of the lease; `onBeat` runs after each (repairs after dead replicas). */
  startHeartbeat(onBeat?: () => Promise<void>): void {
    this.timer = setInterval(async () => {
      try {
        const beat = await this.db.orm.update(replicas).set({ heartbeatAt: new Date(this.now()) }).where(eq(replicas.id, this.id)).returning({ id: replicas.id });
        // No row: another replica took this one for dead while its heartbeat could not be written (a database
        // outage, a stall longer than the lease). It still serves requests, so it says so again; otherwise every
        // other replica would go on treating its claims and staging as abandoned.
        if (beat.length === 0) await this.register();
        await onBeat?.();
      } catch {
        // The database is closing (shutdown): the next start sees the row.
      }
    }, Math.max(50, Math.floor(this.leaseMs / 3))).unref();
  }

  /** The clean-stop marker: this replica's row says it stopped cleanly (nothing of it needs repair). */
  async stopCleanly(): Promise<void> {
    clearInterval(this.timer);
    await this.db.orm.update(replicas).set({ stoppedAt: new Date(this.now()) }).where(eq(replicas.id, this.id));
  }

  /** Stops the heartbeat without the marker (tests: what a crash leaves). */
  abandon(): void {
    clearInterval(this.timer);
  }

  /**
   * Takes over the rows of replicas that died without a clean stop (deleted here, so one replica alone repairs
   * after each) and forgets those that stopped cleanly. Returns the dead replicas' ids.
   */
  takeOverDead(): Promise<string[]> {
    const expired = new Date(this.now() - this.leaseMs);
    const dead: string[] = [];
    return this.db.transaction(async (tx) => {
      const others = await tx.select().from(replicas).where(ne(replicas.id, this.id));
      for (const r of others) {
        if (r.stoppedAt) {
          await tx.delete(replicas).where(eq(replicas.id, r.id));
          continue;
        }
        const gone = r.heartbeatAt < expired || (r.host === this.host && r.pid !== process.pid && !processAlive(r.pid));
        if (gone && (await tx.delete(replicas).where(eq(replicas.id, r.id)).returning({ id: replicas.id })).length) dead.push(r.id);
      }
      return dead;
    });
  }

  /** Whether any replica ever ran on this database (a row stays until the next start after it stopped). */
  async hasHistory(): Promise<boolean> {
    return (await first(this.db.orm.select({ id: replicas.id }).from(replicas).limit(1))) !== undefined;
  }

  /**
   * Whether replica `id` still runs: registered, not stopped, its heartbeat within the lease, and, on this machine,
   * its process there (a SIGKILLed replica is dead at once, not 30 s later). `orm` is the caller's transaction.
   */
  async isAlive(id: string, orm: Pick<Database['orm'], 'select'> = this.db.orm): Promise<boolean> {
    if (id === this.id) return true;
    const r = await first(orm.select().from(replicas).where(eq(replicas.id, id)).limit(1));
    if (!r || r.stoppedAt || r.heartbeatAt < new Date(this.now() - this.leaseMs)) return false;
    return !(r.host === this.host && r.pid !== process.pid && !processAlive(r.pid));
  }

  /** Ids of the replicas running now (this one included), for what may be removed of the others. */
  async liveIds(): Promise<Set<string>> {
    const expired = new Date(this.now() - this.leaseMs);
    const rows = await this.db.orm
      .select({ id: replicas.id })
      .from(replicas)
      .where(and(isNull(replicas.stoppedAt), or(eq(replicas.id, this.id), gte(replicas.heartbeatAt, expired))));
    return new Set(rows.map((r) => r.id));
  }
}

/**
 * Periodic work done once per interval by all replicas together: a row per name with its next run and a lease.
 * Each replica checks often; the one whose UPDATE claims the due row (lease free) runs it, renews the lease
 * while it runs, and sets the next run when it is done. A replica that dies mid-run leaves a lease that expires,
 * and another takes the run over.
 */
export class Schedules {
  private readonly tasks = new Map<string, { everyMs: number; run: () => Promise<unknown>; firstAfterMs: number }>();
  private readonly running = new Set<Promise<unknown>>();
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly db: Database,
    private readonly replica: Replica,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  /** `name` runs every `everyMs` across all replicas; the first time `firstAfterMs` after its row is made. */
  async add(name: string, everyMs: number, run: () => Promise<unknown>, firstAfterMs = everyMs): Promise<void> {
    this.tasks.set(name, { everyMs, run, firstAfterMs });
    const latest = new Date(this.now() + everyMs);
    await this.db.transaction(async (tx) => {
      await tx
        .insert(schedules)
        .values({ name, nextRunAt: new Date(this.now() + firstAfterMs) })
        .onConflictDoNothing();
      // An interval made shorter takes effect now, not after the longer one.
      await tx.update(schedules).set({ nextRunAt: latest }).where(and(eq(schedules.name, name), gt(schedules.nextRunAt, latest)));
    });
  }

  /** Looks for due work every `checkMs`. */
  start(checkMs: number): void {
    this.timer = setInterval(() => void this.tick(), checkMs).unref();
  }

  /** Stops claiming; waits at most `waitMs` for a run going on (a longer one's lease expires and another replica runs it). */
  async stop(waitMs = 10_000): Promise<void> {
    clearInterval(this.timer);
    const timeout = new Promise<void>((resolve) => setTimeout(resolve, waitMs).unref());
    await Promise.race([Promise.allSettled([...this.running]), timeout]);
  }

  /** Claims and runs every due task this replica knows. */
  async tick(): Promise<void> {
    for (const [name, task] of this.tasks) {
      let claimed: boolean;
      try {
        claimed = await this.claim(name);
      } catch {
        continue; // the database is closing
      }
      if (!claimed) continue;
      const run = this.runClaimed(name, task).finally(() => this.running.delete(run));
      this.running.add(run);
    }
  }

  /** One atomic UPDATE: due, and no live lease (another replica's, or our own run still going). */
  private async claim(name: string): Promise<boolean> {
    const now = new Date(this.now());
    const row = await first(
      this.db.orm
        .update(schedules)
        .set({ leaseOwner: this.replica.id, leaseUntil: this.replica.leaseUntil() })
        .where(and(eq(schedules.name, name), lte(schedules.nextRunAt, now), or(isNull(schedules.leaseUntil), lt(schedules.leaseUntil, now))))
        .returning({ name: schedules.name }),
    );
    return row !== undefined;
  }

  private async runClaimed(name: string, task: { everyMs: number; run: () => Promise<unknown> }): Promise<void> {
    const mine = and(eq(schedules.name, name), eq(schedules.leaseOwner, this.replica.id));
    const renew = setInterval(() => {
      // A failure is the database closing: the lease expires.
      this.db.orm
        .update(schedules)
        .set({ leaseUntil: this.replica.leaseUntil() })
        .where(mine)
        .catch(() => undefined);
    }, Math.max(50, Math.floor(this.replica.leaseMs / 3))).unref();
    // Start and end of each run (the replica simulation checks that runs of all replicas never overlap).
    this.log.debug({ schedule: name, replica: this.replica.id }, 'schedule started');
    try {
      await task.run();
    } catch (err) {
      this.log.warn({ job: name, err: (err as Error).message }, `${name} failed; it runs again at the next interval`);
    } finally {
      clearInterval(renew);
      this.log.debug({ schedule: name, replica: this.replica.id }, 'schedule finished');
      try {
        const now = this.now();
        await this.db.orm
          .update(schedules)
          .set({ leaseOwner: null, leaseUntil: null, lastRunAt: new Date(now), nextRunAt: new Date(now + task.everyMs) })
          .where(mine);
      } catch {
        // closing: the lease expires and another replica (or the next start) runs it
      }
    }
  }
}
