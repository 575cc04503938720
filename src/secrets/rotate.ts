import { and, count, eq, ne } from 'drizzle-orm';
import type { Db } from '../db/client.js';
import { accounts } from '../db/schema.js';
import { LocalKeyService, type KeyRing } from './key-service.js';

export interface RotationResult {
  keyId: string;
  rewrapped: number;
  alreadyCurrent: number;
  /** Retired local master keys deleted because nothing is wrapped by them any more. */
  removedKeys: string[];
  /** True when a new local master key was made by this run. */
  newLocalKey: boolean;
}

/**
 * Re-wraps every account DEK under the current key; the DEKs themselves, and so every secret's ciphertext,
 * are untouched. Each account is one compare-and-set update, so an interrupted run loses nothing and the
 * next run carries on. With the local provider and nothing left to move, a new master key is made first
 * (the old one kept as `master.key.retired-…` until every account has moved). Moving from local to Azure is
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
    const dek = await keys.unwrapKey(account.wrappedDek, account.dekKeyId);
    try {
      const { wrapped, keyId: usedKeyId } = await keys.wrapKey(dek);
      // Compare-and-set: a row changed meanwhile (another rotation) is left to that one.
      db.update(accounts)
        .set({ wrappedDek: wrapped, dekKeyId: usedKeyId })
        .where(and(eq(accounts.id, account.id), eq(accounts.dekKeyId, account.dekKeyId)))
        .run();
    } finally {
      dek.fill(0);
    }
    rewrapped++;
  }
  const removedKeys: string[] = [];
  if (local && behind(db, keyId) === 0) {
    for (const retired of local.retiredKeyIds()) {
      local.removeRetired(retired);
      removedKeys.push(retired);
    }
  }
  return { keyId, rewrapped, alreadyCurrent: total - rewrapped, removedKeys, newLocalKey };
}

/** Accounts whose DEK is not yet wrapped by `keyId`. */
const behind = (db: Db, keyId: string) => db.select({ n: count() }).from(accounts).where(ne(accounts.dekKeyId, keyId)).get()!.n;
