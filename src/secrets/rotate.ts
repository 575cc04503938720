import { and, count, eq, isNotNull, ne } from '../db/orm.js';
import type { Db } from '../db/client.js';
import { accounts, users } from '../db/schema.js';
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
export async function rotateKeys(db: Db, keys: KeyRing): Promise<RotationResult> {
  const local = keys.current instanceof LocalKeyService ? keys.current : undefined;
  let newLocalKey = false;
  if (local && local.retiredKeyIds().length === 0 && behind(db, keys.currentKeyId) === 0) {
    local.startRotation();
    newLocalKey = true;
  }
  const keyId = keys.currentKeyId;
  const total = db.select({ n: count() }).from(accounts).get()!.n;
  let rewrapped = 0;
  for (const account of db.select().from(accounts).where(ne(accounts.dekKeyId, keyId)).all()) {
    const moved = await rewrap(keys, account.wrappedDek, account.dekKeyId);
    // Compare-and-set: a row changed meanwhile (another rotation) is left to that one.
    db.update(accounts)
      .set(moved)
      .where(and(eq(accounts.id, account.id), eq(accounts.dekKeyId, account.dekKeyId)))
      .run();
    rewrapped++;
  }
  let rewrappedUsers = 0;
  for (const user of db.select().from(users).where(and(isNotNull(users.dekKeyId), ne(users.dekKeyId, keyId))).all()) {
    const moved = await rewrap(keys, user.wrappedDek!, user.dekKeyId!);
    db.update(users)
      .set(moved)
      .where(and(eq(users.id, user.id), eq(users.dekKeyId, user.dekKeyId!)))
      .run();
    rewrappedUsers++;
  }
  const removedKeys: string[] = [];
  if (local && behind(db, keyId) === 0) {
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
const behind = (db: Db, keyId: string) =>
  db.select({ n: count() }).from(accounts).where(ne(accounts.dekKeyId, keyId)).get()!.n +
  db.select({ n: count() }).from(users).where(and(isNotNull(users.dekKeyId), ne(users.dekKeyId, keyId))).get()!.n;
