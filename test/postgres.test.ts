/**
 * The PostgreSQL backend (src/db/postgres.ts) against a real server: run with
 * `bash test/engines/postgres.sh env NODE_OPTIONS=--experimental-vm-modules npx jest test/postgres.test.ts`.
 * Every test has a database of its own (test/helpers/postgres.ts). Waits are for conditions PostgreSQL reports
 * (a backend waiting on a lock, in pg_stat_activity), never for times.
 */
import { afterAll, afterEach, describe, expect, it } from '@jest/globals';
import net from 'node:net';
import pg from 'pg';
import type { Database } from '../src/db/database.js';
import { count, eq, sql } from '../src/db/orm.js';
import type { SQL } from 'drizzle-orm';
import { openPostgres, type PostgresDatabase } from '../src/db/postgres.js';
import { accounts, jobs, pullRequests, repositories, sessions, users } from '../src/db/tables.js';
import { pino } from 'pino';
import { WorkQueue } from '../src/queue.js';
import { describePostgres, emptyPostgresDatabase, freshPostgresDatabase, postgresUrl, type TestDatabase } from './helpers/postgres.js';

/** Polls an asynchronous condition until it holds (10 s at most). */
async function until(check: () => Promise<boolean> | boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`not reached in time: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A promise and the function that settles it: a transaction held open until the test says so. */
function gate(): { wait: Promise<void>; open: () => void } {
  let open!: () => void;
  const wait = new Promise<void>((resolve) => (open = resolve));
  return { wait, open };
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

let observer: pg.Client | undefined;
afterAll(async () => {
  await observer?.end();
});

async function database(): Promise<{ url: string; open(): Promise<PostgresDatabase> }> {
  const created: TestDatabase = await freshPostgresDatabase();
  cleanups.push(() => created.drop());
  return {
    url: created.url,
    async open() {
      const db = await openPostgres(created.url);
      cleanups.push(() => db.close());
      return db;
    },
  };
}

/** How many backends of `url`'s database wait on a lock of `type` (`relation`/`transactionid`/`advisory`…). */
async function waitingOnLocks(url: string, type: string): Promise<number> {
  if (!observer) {
    observer = new pg.Client({ connectionString: postgresUrl });
    await observer.connect();
  }
  const name = new URL(url).pathname.slice(1);
  const result = await observer.query(
    `select count(*)::int as n from pg_locks l join pg_stat_activity a on a.pid = l.pid
      where not l.granted and l.locktype = $1 and a.datname = $2`,
    [type, name],
  );
  return result.rows[0].n as number;
}

/** Raw SQL on PostgreSQL (drizzle's pg `execute`, which the SQLite-typed Orm does not declare). */
async function rows<T>(db: Database, query: SQL): Promise<T[]> {
  return ((await (db.orm as unknown as { execute(q: SQL): Promise<{ rows: T[] }> }).execute(query)).rows);
}

async function seedPullRequest(db: Database): Promise<number> {
  return db.transaction(async (tx) => {
    const [account] = await tx.insert(accounts).values({ login: 'octo-org', wrappedDek: Buffer.from('dek'), dekKeyId: 'k1' }).returning();
    const [repository] = await tx
      .insert(repositories)
      .values({ accountId: account!.id, fullName: 'octo-org/docs', site: 'docs' })
      .returning();
    const [pr] = await tx.insert(pullRequests).values({ repositoryId: repository!.id, number: 7, state: 'open' }).returning();
    return pr!.id;
  });
}

/** PostgreSQL's answer to a client while it starts: an ErrorResponse with SQLSTATE 57P03, then the socket closes. */
function startingUpResponse(): Buffer {
  const fields = Buffer.concat(
    [['S', 'FATAL'], ['V', 'FATAL'], ['C', '57P03'], ['M', 'the database system is starting up']].map(([type, value]) =>
      Buffer.concat([Buffer.from(type!), Buffer.from(`${value}\0`)]),
    ).concat([Buffer.from([0])]),
  );
  const length = Buffer.alloc(4);
  length.writeInt32BE(fields.length + 4);
  return Buffer.concat([Buffer.from('E'), length, fields]);
}

function listen(server: net.Server, port = 0): Promise<number> {
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port)));
}

/** A port that first answers like a PostgreSQL still starting, counting the connections it turned away. */
async function startingServer(): Promise<{ port: number; turnedAway: () => number; close: () => Promise<void> }> {
  let turnedAway = 0;
  const server = net.createServer((socket) => {
    socket.once('data', () => {
      turnedAway++;
      socket.end(startingUpResponse());
    });
  });
  const port = await listen(server);
  return { port, turnedAway: () => turnedAway, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

/** Forwards `port` to the test server: PostgreSQL "up" on the port that answered "starting" before. */
async function forward(port: number, to: URL): Promise<net.Server> {
  const proxy = net.createServer((socket) => {
    const upstream = net.connect(Number(to.port || 5432), to.hostname);
    socket.pipe(upstream).pipe(socket);
    const end = () => { socket.destroy(); upstream.destroy(); };
    socket.on('error', end);
    upstream.on('error', end);
  });
  await listen(proxy, port);
  return proxy;
}

describe('PostgreSQL not up yet at start', () => {
  it('gives up after the start wait with one line naming PostgreSQL and why', async () => {
    const starting = await startingServer();
    try {
      await expect(openPostgres(`postgres://preview_gate@127.0.0.1:${starting.port}/preview_gate`, { startWaitMs: 300, useTables: false }))
        .rejects.toThrow(/^PostgreSQL did not accept connections within 0.3 s: the database system is starting up$/);
      expect(starting.turnedAway()).toBeGreaterThan(1);
    } finally {
      await starting.close();
    }
  });
});

describePostgres('PostgreSQL backend', 'test/postgres.test.ts', () => {
  it('applies the migrations on an empty database, once, with two replicas starting together', async () => {
    const empty = await emptyPostgresDatabase();
    cleanups.push(() => empty.drop());
    const [a, b] = await Promise.all([openPostgres(empty.url), openPostgres(empty.url)]);
    cleanups.push(() => a.close(), () => b.close());
    const tables = await rows<{ n: number }>(a, sql`select count(*) as n from information_schema.tables where table_schema = 'public'`);
    const applied = await rows<{ n: number }>(a, sql`select count(*) as n from drizzle.__drizzle_migrations`);
    expect(tables[0]!.n).toBe(20); // build_files (issue 29) made 20
    expect(applied[0]!.n).toBe(1);
  });

  it('joins a transaction started inside another, and single statements inside it see its rows', async () => {
    const db = await (await database()).open();
    const seen = await db.transaction(async (outer) => {
      await outer.insert(users).values({ provider: 'github', providerId: '1', login: 'octocat' });
      const inner = await db.transaction(async (tx) => {
        expect(tx).toBe(outer);
        return (await tx.select().from(users)).length;
      });
      const single = (await db.orm.select({ n: count() }).from(users))[0]!.n;
      return { inner, single };
    });
    expect(seen).toEqual({ inner: 1, single: 1 });
  });

  it('work started inside a transaction and still running after its commit runs in a transaction of its own', async () => {
    const db = await (await database()).open();
    const later = gate();
    let straggler: Promise<unknown> | undefined;
    await db.transaction(async (tx) => {
      await tx.insert(users).values({ provider: 'github', providerId: '1' });
      // Not awaited: it outlives the transaction (a wake-up, a timer) and carries its async context along. Had it
      // joined the ended transaction, its statements would run on a connection back in the pool, one by one,
      // and its throw would undo nothing.
      straggler = later.wait.then(() =>
        db.transaction(async (own) => {
          await own.insert(users).values({ provider: 'github', providerId: '2' });
          throw new Error('undone');
        }),
      );
    });
    later.open();
    await expect(straggler).rejects.toThrow('undone');
    expect((await db.orm.select().from(users)).map((u) => u.providerId)).toEqual(['1']);
  });

  it('rolls back everything on a throw, also from a nested transaction', async () => {
    const db = await (await database()).open();
    await expect(
      db.transaction(async (tx) => {
        await tx.insert(users).values({ provider: 'github', providerId: '2' });
        await db.transaction(async (inner) => {
          await inner.insert(users).values({ provider: 'github', providerId: '3' });
          throw new Error('boom');
        });
      }),
    ).rejects.toThrow('boom');
    expect(await db.orm.select().from(users)).toEqual([]);
  });

  it('lockPullRequest makes a second transaction on another connection wait until the first commits', async () => {
    const target = await database();
    const a = await target.open();
    const b = await target.open();
    const prId = await seedPullRequest(a);
    const events: string[] = [];
    const hold = gate();
    const first = a.transaction(async (tx) => {
      await a.lockPullRequest(tx, prId);
      events.push('first locked');
      await hold.wait;
      await tx.update(pullRequests).set({ reason: 'first' }).where(eq(pullRequests.id, prId));
      events.push('first commits');
    });
    await until(() => events.includes('first locked'), 'the first lock');
    const second = b.transaction(async (tx) => {
      await b.lockPullRequest(tx, prId);
      events.push('second locked');
      return (await tx.select().from(pullRequests).where(eq(pullRequests.id, prId)))[0]!.reason;
    });
    await until(async () => (await waitingOnLocks(target.url, 'transactionid')) === 1, 'the second waiting on the row');
    expect(events).toEqual(['first locked']);
    hold.open();
    const [, reasonSeen] = await Promise.all([first, second]);
    expect(events).toEqual(['first locked', 'first commits', 'second locked']);
    expect(reasonSeen).toBe('first');
  });

  it('lockName: shared holders run together, an exclusive one waits for all of them, other names are free', async () => {
    const target = await database();
    const [a, b, c] = [await target.open(), await target.open(), await target.open()];
    const events: string[] = [];
    const hold = gate();
    const holdShared = (db: Database, who: string) =>
      db.transaction(async (tx) => {
        await db.lockName(tx, 'repository:1', 'shared');
        events.push(`${who} shared`);
        await hold.wait;
        events.push(`${who} done`);
      });
    const sharedA = holdShared(a, 'a');
    const sharedB = holdShared(b, 'b');
    await until(() => events.includes('a shared') && events.includes('b shared'), 'both shared locks held at once');
    const exclusive = c.transaction(async (tx) => {
      await c.lockName(tx, 'repository:1', 'exclusive');
      events.push('c exclusive');
    });
    await until(async () => (await waitingOnLocks(target.url, 'advisory')) === 1, 'the exclusive lock waiting');
    // Another name is not held by anyone.
    await c.transaction(async (tx) => c.lockName(tx, 'repository:2', 'exclusive'));
    expect(events).not.toContain('c exclusive');
    hold.open();
    await Promise.all([sharedA, sharedB, exclusive]);
    expect(events.indexOf('c exclusive')).toBeGreaterThan(Math.max(events.indexOf('a done'), events.indexOf('b done')));
  });

  it('refuses a lock outside a transaction (it would be released at once)', async () => {
    const db = await (await database()).open();
    await expect(db.lockName(db.orm, 'repository:1', 'exclusive')).rejects.toThrow(/open transaction/);
    await expect(db.lockPullRequest(db.orm, 1)).rejects.toThrow(/open transaction/);
  });

  it('notify wakes a listener of another Database; inside a transaction only at commit; the listener survives a lost connection', async () => {
    const target = await database();
    const sender = await target.open();
    const receiver = await target.open();
    let woken = 0;
    const stop = await receiver.listen('jobs', () => woken++);
    await sender.notify('jobs');
    await until(() => woken === 1, 'the first notice');

    await expect(
      sender.transaction(async () => {
        await sender.notify('jobs');
        throw new Error('rolled back');
      }),
    ).rejects.toThrow('rolled back');
    const hold = gate();
    const committing = sender.transaction(async () => {
      await sender.notify('jobs');
      await hold.wait;
    });
    // A notice round trip from a third connection: had the transaction's notices gone out early, they would be
    // delivered before it (one connection's notices arrive in order).
    const third = await target.open();
    let marker = 0;
    await receiver.listen('marker', () => marker++);
    await third.notify('marker');
    await until(() => marker === 1, 'the marker notice');
    expect(woken).toBe(1);
    hold.open();
    await committing;
    await until(() => woken === 2, 'the notice at commit');

    // The LISTEN connection is killed by the server: it comes back, listens again, and wakes everyone once.
    const pid = await receiver.listenerBackendPid();
    await rows(third, sql`select pg_terminate_backend(${pid})`);
    await until(() => woken === 3, 'the wake-up after reconnecting');
    expect(await receiver.listenerBackendPid()).not.toBe(pid);
    await sender.notify('jobs');
    await until(() => woken === 4, 'a notice after reconnecting');

    // Stopped: a notice sent before a marker's is not delivered (the reconnection woke the marker too, once).
    await stop();
    const markers = marker;
    await sender.notify('jobs');
    await third.notify('marker');
    await until(() => marker === markers + 1, 'the marker after stopping');
    expect(woken).toBe(4);
  });

  it('survives the server ending its pooled connections: told once, and the next query opens a new one', async () => {
    const target = await database();
    const errors: string[] = [];
    const db = await openPostgres(target.url, { onError: (_error, where) => errors.push(where) });
    cleanups.push(() => db.close());
    await db.ping();
    const other = await target.open();
    await rows(other, sql`select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()`);
    await until(() => errors.includes('pool'), 'the pool told of its lost connection');
    await db.ping();
    expect(await db.orm.select().from(users)).toEqual([]);
  });

  it('round-trips the values SQLite gives: Date, boolean, Buffer, JSON, a GitHub id past 2^31, counts as numbers', async () => {
    const db = await (await database()).open();
    const githubId = 2 ** 31 + 12345;
    const bigId = 2 ** 40 + 7;
    const expiresAt = new Date(Date.UTC(2030, 0, 2, 3, 4, 5, 678));
    const dek = Buffer.from([0, 1, 2, 250, 255]);
    const [account] = await db.orm
      .insert(accounts)
      .values({ login: 'octo-org', githubId, installationId: bigId, wrappedDek: dek, dekKeyId: 'k' })
      .returning();
    const [repository] = await db.orm
      .insert(repositories)
      .values({ accountId: account!.id, fullName: 'Octo-Org/Docs', githubId: bigId, private: false, site: 'docs', settings: { trust: { label: 'ok' }, n: [1, 2] } })
      .returning();
    const [user] = await db.orm.insert(users).values({ provider: 'github', providerId: '9' }).returning();
    await db.orm.insert(sessions).values({ tokenHash: 'h', userId: user!.id, csrf: 'c', accessToken: dek, expiresAt });

    const readAccount = (await db.orm.select().from(accounts).where(eq(accounts.githubId, githubId)))[0]!;
    expect(readAccount.githubId).toBe(githubId);
    expect(readAccount.installationId).toBe(bigId);
    expect(Buffer.isBuffer(readAccount.wrappedDek) && readAccount.wrappedDek.equals(dek)).toBe(true);
    expect(readAccount.createdAt).toBeInstanceOf(Date);
    expect(Math.abs(readAccount.createdAt.getTime() - Date.now())).toBeLessThan(60_000);

    const readRepository = (await db.orm.select().from(repositories).where(eq(repositories.id, repository!.id)))[0]!;
    expect(readRepository).toMatchObject({ private: false, installed: true, objectBytes: 0, settings: { trust: { label: 'ok' }, n: [1, 2] } });
    expect(readRepository.uninstalledAt).toBeNull();

    const readSession = (await db.orm.select().from(sessions))[0]!;
    expect(readSession.expiresAt).toEqual(expiresAt);
    expect(readSession.revokedAt).toBeNull();
    // Raw SQL compares timestamps with epoch-ms numbers, as on SQLite.
    const live = await db.orm.select({ n: count() }).from(sessions).where(sql`${sessions.expiresAt} > ${Date.now()}`);
    expect(live[0]!.n).toBe(1);
    const total = await db.orm.select({ bytes: sql<number>`coalesce(sum(${accounts.installationId}), 0)`, n: sql<number>`count(*)` }).from(accounts);
    expect(total[0]).toEqual({ bytes: bigId, n: 1 });
    // The unique index on lower(full_name): another spelling is the same repository.
    await expect(db.orm.insert(repositories).values({ accountId: account!.id, fullName: 'octo-org/docs', site: 'docs2' })).rejects.toThrow();
  });

  it('two replicas enqueueing one key at once: no UNIQUE error, one row, and the merge keeps both sides\' data', async () => {
    const created = await database();
    const [a, b] = [await created.open(), await created.open()];
    const merge = (older: Record<string, unknown>, newer: Record<string, unknown>) => ({ ids: [...(older.ids as number[]), ...(newer.ids as number[])] });
    const queues = [a, b].map((db, i) => {
      const q = new WorkQueue(db, pino({ level: 'silent' }), Date.now, `replica-${i}`);
      q.register('feedback', { lane: 'writes', run: async () => {}, merge });
      return q;
    });
    // A's row is inserted and not yet committed when B reads (nothing) and inserts: B waits on the unique index.
    const held = gate();
    const inserted = gate();
    const first = a.transaction(async () => {
      await queues[0]!.enqueue('feedback', 'pr:1#1', { ids: [1] });
      inserted.open();
      await held.wait;
    });
    await inserted.wait;
    const second = queues[1]!.enqueue('feedback', 'pr:1#1', { ids: [2] });
    await until(async () => (await waitingOnLocks(created.url, 'transactionid')) > 0, 'B waiting on A\'s row');
    held.open();
    await first;
    await second;
    const rows = await b.orm.select().from(jobs);
    expect(rows.map((r) => [r.key, r.data, r.generation])).toEqual([['pr:1#1', { ids: [1, 2] }, 2]]);
  });
  it('waits at start for a server that is still starting, then connects and migrates', async () => {
    const created = await database();
    const starting = await startingServer();
    const url = new URL(created.url);
    url.host = `127.0.0.1:${starting.port}`;
    const opening = openPostgres(url.toString(), { startWaitMs: 60_000, useTables: false });
    await until(() => starting.turnedAway() > 0, 'a connection turned away as "starting up"');
    await starting.close();
    const proxy = await forward(starting.port, new URL(created.url));
    // Closed after the database (cleanups run last first): a proxy closes once its connections have ended.
    cleanups.push(() => new Promise((resolve) => proxy.close(() => resolve())));
    const db = await opening;
    cleanups.push(() => db.close());
    expect(await rows<{ n: number }>(db, sql`select count(*)::int as n from accounts`)).toEqual([{ n: 0 }]);
  });

  it('does not wait for what waiting cannot mend: a database that does not exist fails at once', async () => {
    const created = await database();
    const url = new URL(created.url);
    url.pathname = '/no_such_database';
    await expect(openPostgres(url.toString(), { startWaitMs: 600_000, useTables: false })).rejects.toThrow(/database "no_such_database" does not exist/);
  });
});
