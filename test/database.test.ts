import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { movedToPostgresMarker, openDatabase } from '../src/db/open.js';
import type { Database } from '../src/db/database.js';
import { eq } from '../src/db/orm.js';
import { accounts } from '../src/db/tables.js';

// The async data layer on SQLite: whole transactions on one shared connection.
let dir: string;
let db: Database;

beforeEach(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pg-database-'));
  db = await openDatabase({ databaseFile: path.join(dir, 'db.sqlite') });
});

afterEach(async () => {
  await db.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

const account = (login: string) => ({ login, wrappedDek: Buffer.from([1, 2, 3]), dekKeyId: 'k1' });
const logins = async () => (await db.orm.select({ login: accounts.login }).from(accounts).orderBy(accounts.id)).map((a) => a.login);

test('a read outside a transaction never sees its uncommitted writes, and sees them once committed', async () => {
  let inserted!: () => void;
  const wasInserted = new Promise<void>((resolve) => (inserted = resolve));
  let finish!: () => void;
  const finishing = new Promise<void>((resolve) => (finish = resolve));
  const tx = db.transaction(async (t) => {
    await t.insert(accounts).values(account('octo'));
    inserted();
    await finishing; // the body still runs: a test stand-in for more statements to come
  });
  await wasInserted;
  let seen: string[] | undefined;
  const read = logins().then((l) => (seen = l));
  await new Promise((resolve) => setImmediate(resolve));
  const seenDuringTransaction = seen;
  finish();
  await tx;
  expect(seenDuringTransaction).toBeUndefined(); // it waited for the commit, not read through the open transaction
  await read;
  expect(seen).toEqual(['octo']);
});

test('a throw rolls the whole transaction back, nested ones included', async () => {
  await expect(
    db.transaction(async (t) => {
      await t.insert(accounts).values(account('a'));
      await db.transaction(async (inner) => inner.insert(accounts).values(account('b')));
      throw new Error('no');
    }),
  ).rejects.toThrow('no');
  expect(await logins()).toEqual([]);
});

test('a transaction started inside another joins it instead of waiting for it', async () => {
  const result = await db.transaction(async (t) => {
    await t.insert(accounts).values(account('a'));
    return db.transaction(async (inner) => (await inner.select().from(accounts)).length);
  });
  expect(result).toBe(1);
});

test('returning gives back the rows with their JavaScript values', async () => {
  const [row] = await db.orm.insert(accounts).values(account('octo')).returning();
  expect(row!.wrappedDek).toEqual(Buffer.from([1, 2, 3]));
  expect(row!.createdAt).toBeInstanceOf(Date);
  const gone = await db.orm.delete(accounts).where(eq(accounts.login, 'nobody')).returning({ id: accounts.id });
  expect(gone).toEqual([]);
  expect((await db.orm.select().from(accounts).where(eq(accounts.id, row!.id)).limit(1))[0]?.login).toBe('octo');
  await db.ping();
});

test('work started with detached() inside a transaction is not part of it: a rollback does not take its rows', async () => {
  let detachedDone!: Promise<void>;
  let started!: () => void;
  const detachedStarted = new Promise<void>((resolve) => (started = resolve));
  await expect(
    db.transaction(async (tx) => {
      await tx.insert(accounts).values(account('rolled-back'));
      // As the queue's runner is woken by an enqueue made inside a transaction.
      detachedDone = db.detached(
        () =>
          new Promise<void>((resolve, reject) =>
            setImmediate(() => {
              started();
              db.orm.insert(accounts).values(account('detached')).then(() => resolve(), reject);
            }),
          ),
      );
      await detachedStarted; // the detached work runs while this transaction is still open
      throw new Error('rolled back');
    }),
  ).rejects.toThrow('rolled back');
  await detachedDone;
  expect(await logins()).toEqual(['detached']);
});

test('a DATA_DIR whose database was moved to PostgreSQL is refused without DATABASE_URL, in one sentence', async () => {
  const file = path.join(dir, 'db.sqlite');
  fs.writeFileSync(movedToPostgresMarker(file), 'moved to PostgreSQL at 2026-12-04T00:00:00.000Z\n');
  await expect(openDatabase({ databaseFile: file })).rejects.toThrow(
    `this DATA_DIR's database was moved to PostgreSQL by migrate-to-postgres: set DATABASE_URL for every server and command (delete ${movedToPostgresMarker(file)} only to go back to the SQLite file).`,
  );
});
