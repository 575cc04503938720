import type { Logger } from 'pino';
import { and, eq, lt } from './db/orm.js';
import type { Database } from './db/database.js';
import { prLocks } from './db/tables.js';

const CHANNEL = 'pr-lock';
/** The safety net under the wake-ups: a notice lost (a dropped listener connection) costs at most this much. */
const POLL_MS = 200;

/**
 * One PR's work on one replica at a time, across processes, on either database: a lease row per key. Taken by
 * one statement (insert, or update of a row whose lease ended), renewed while held, deleted at release; a waiter
 * wakes on the release's notice (PostgreSQL NOTIFY; in-process on SQLite) or its poll. A replica that dies holding
 * one leaves a row that expires with its lease. Callers serialise their own process's work per key first (the
 * in-process lock), so one owner never asks for a key it holds.
 */
export class PrLocks {
  private readonly wakers = new Set<() => void>();
  private listening?: Promise<unknown>;
  /** Keys this process is waiting for now (tests wait on it instead of on time). */
  waiting = 0;

  constructor(
    private readonly db: Database,
    private readonly owner: string,
    private readonly leaseMs: number,
    private readonly log: Logger,
  ) {}

  async run<T>(key: string, task: () => Promise<T>): Promise<T> {
    await this.acquire(key);
    const renew = setInterval(() => void this.renew(key), Math.max(50, Math.floor(this.leaseMs / 3))).unref();
    try {
      return await task();
    } finally {
      clearInterval(renew);
      await this.release(key);
    }
  }

  private async acquire(key: string): Promise<void> {
    if (await this.tryAcquire(key)) return;
    this.listening ??= this.db.listen(CHANNEL, () => this.wakers.forEach((wake) => wake())).catch(() => undefined);
    await this.listening;
    this.waiting++;
    try {
      while (!(await this.tryAcquire(key))) {
        await new Promise<void>((resolve) => {
          const wake = () => {
            clearTimeout(timer);
            this.wakers.delete(wake);
            resolve();
          };
          const timer = setTimeout(wake, POLL_MS);
          this.wakers.add(wake);
        });
      }
    } finally {
      this.waiting--;
    }
  }

  /** Inserts the row, or takes one whose lease ended (another replica died holding it). */
  private async tryAcquire(key: string): Promise<boolean> {
    const now = new Date();
    const leaseUntil = new Date(now.getTime() + this.leaseMs);
    const taken = await this.db.orm
      .insert(prLocks)
      .values({ key, owner: this.owner, leaseUntil })
      .onConflictDoUpdate({ target: prLocks.key, set: { owner: this.owner, leaseUntil }, setWhere: lt(prLocks.leaseUntil, now) })
      .returning({ key: prLocks.key });
    return taken.length > 0;
  }

  private async renew(key: string): Promise<void> {
    try {
      await this.db.orm
        .update(prLocks)
        .set({ leaseUntil: new Date(Date.now() + this.leaseMs) })
        .where(and(eq(prLocks.key, key), eq(prLocks.owner, this.owner)));
    } catch (err) {
      this.log.warn({ key, err: (err as Error).message }, 'the lease of a PR lock could not be renewed');
    }
  }

  private async release(key: string): Promise<void> {
    try {
      await this.db.orm.delete(prLocks).where(and(eq(prLocks.key, key), eq(prLocks.owner, this.owner)));
      await this.db.notify(CHANNEL);
    } catch (err) {
      // The database is closing; the row expires with its lease.
      this.log.warn({ key, err: (err as Error).message }, 'a PR lock could not be released; it expires with its lease');
    }
  }
}
