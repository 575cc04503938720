import { and, count, eq, isNotNull, ne } from '../db/orm.js';
import type { Database } from '../db/database.js';
import { only } from '../db/query.js';
import { accounts, users } from '../db/tables.js';
import { LocalKeyService, type KeyRing } from './key-service.js';

export interface RotationResult {
  keyId: string;
  rewrapped: number;
  alreadyCurrent: number;
  /** Users' DEKs (their GitHub tokens, for the dashboard) re-wrapped. */
  rewrappedUsers: number;
  /** Retired local master keys deleted because nothing is wrapped by them any more. */
  removedKeys: string[];
  /** True when a new local master key was made by this run. */
  newLocalKey: boolean;
}

/**
 * Re-wraps every account DEK, and every user's DEK (their GitHub tokens), under the current key; the DEKs
 * themselves, and so every secret's ciphertext, are untouched. Each row is one compare-and-set update, so an
 * interrupted run loses nothing and the next run carries on. With the local provider and nothing left to move, a
 * new master key is made first (the old one kept as `master.key.retired-…` until every account and user has moved). Moving from local to Azure is
 * the same command with KEY_PROVIDER=azure.
 */
export async function rotateKeys(database: Database, keys: KeyRing): Promise<RotationResult> {
  const db = database.orm;
  const local = keys.current instanceof LocalKeyService ? keys.current : undefined;
  let newLocalKey = false;
  if (local && local.retiredKeyIds().length === 0 && (await behind(database, keys.currentKeyId)) === 0) {
    local.startRotation();
    newLocalKey = true;
  }
  const keyId = keys.currentKeyId;
  const { n: total } = await only(db.select({ n: count() }).from(accounts));
  let rewrapped = 0;
  for (const account of await db.select().from(accounts).where(ne(accounts.dekKeyId, keyId))) {
    const moved = await rewrap(keys, account.wrappedDek, account.dekKeyId);
    // Compare-and-set: a row changed meanwhile (another rotation) is left to that one.
    await db
      .update(accounts)
      .set(moved)
      .where(and(eq(accounts.id, account.id), eq(accounts.dekKeyId, account.dekKeyId)));
    rewrapped++;
  }
  let rewrappedUsers = 0;
  for (const user of await db.select().from(users).where(and(isNotNull(users.dekKeyId), ne(users.dekKeyId, keyId)))) {
    const moved = await rewrap(keys, user.wrappedDek!, user.dekKeyId!);
    await db
      .update(users)
      .set(moved)
      .where(and(eq(users.id, user.id), eq(users.dekKeyId, user.dekKeyId!)));
    rewrappedUsers++;
  }
  const removedKeys: string[] = [];
  if (local && (await behind(database, keyId)) === 0) {
    for (const retired of local.retiredKeyIds()) {
      local.removeRetired(retired);
      removedKeys.push(retired);
    }
  }
  return { keyId, rewrapped, alreadyCurrent: total - rewrapped, rewrappedUsers, removedKeys, newLocalKey };
}

/** The same DEK wrapped by the current key (the DEK itself never leaves this function). */
async function rewrap(keys: KeyRing, wrapped: Buffer, keyId: string): Promise<{ wrappedDek: Buffer; dekKeyId: string }> {
  const dek = await keys.unwrapKey(wrapped, keyId);
  try {
    const moved = await keys.wrapKey(dek);
    return { wrappedDek: moved.wrapped, dekKeyId: moved.keyId };
  } finally {
    dek.fill(0);
  }
}

/** Accounts and users whose DEK is not yet wrapped by `keyId`: a retired key is deleted only at 0. */
async function behind(db: Database, keyId: string): Promise<number> {
  // One transaction: both counts from the same moment.
  return db.transaction(async (tx) => {
    const inAccounts = await only(tx.select({ n: count() }).from(accounts).where(ne(accounts.dekKeyId, keyId)));
    const inUsers = await only(tx.select({ n: count() }).from(users).where(and(isNotNull(users.dekKeyId), ne(users.dekKeyId, keyId))));
    return inAccounts.n + inUsers.n;
  });
}
