import { and, eq } from '../db/orm.js';
import type { Database } from '../db/database.js';
import { first } from '../db/query.js';
import { accounts, secrets } from '../db/tables.js';
import { newDataKey, open, seal } from './envelope.js';
import type { KeyService } from './key-service.js';

const CACHE_TTL_MS = 10 * 60_000;
const CACHE_MAX = 1000;

/**
 * Envelope encryption for stored secrets: key service → account DEK → secret DEK → value.
 * Unwrapped account DEKs are cached in memory (bounded in size and lifetime) so that an upload does not
 * cost a Key Vault round trip; they never leave this object.
 */
export class SecretStore {
  private readonly accountKeys = new Map<number, { key: Buffer; expires: number }>();

  constructor(
    private readonly db: Database,
    private readonly keys: KeyService,
  ) {}

  /** A fresh account DEK, wrapped by the key service, for a new accounts row. */
  async newWrappedAccountKey(): Promise<{ wrappedDek: Buffer; dekKeyId: string }> {
    const dek = newDataKey();
    const { wrapped, keyId } = await this.keys.wrapKey(dek);
    dek.fill(0);
    return { wrappedDek: wrapped, dekKeyId: keyId };
  }

  async set(accountId: number, repositoryId: number, name: string, value: Buffer): Promise<void> {
    const accountKey = await this.accountKey(accountId);
    const secretKey = newDataKey();
    const ciphertext = seal(secretKey, value, valueAad(accountId, repositoryId, name));
    const wrappedDek = seal(accountKey, secretKey, dekAad(accountId, repositoryId, name));
    secretKey.fill(0);
    await this.db.orm
      .insert(secrets)
      .values({ accountId, repositoryId, name, ciphertext, wrappedDek })
      .onConflictDoUpdate({
        target: [secrets.repositoryId, secrets.name],
        set: { accountId, ciphertext, wrappedDek, createdAt: new Date() },
      });
  }

  /** The decrypted value, or undefined when no such secret is stored. Throws DecryptError on tampering. */
  async get(repositoryId: number, name: string): Promise<Buffer | undefined> {
    const row = await first(
      this.db.orm
        .select()
        .from(secrets)
        .where(and(eq(secrets.repositoryId, repositoryId), eq(secrets.name, name)))
        .limit(1),
    );
    if (!row) return undefined;
    const accountKey = await this.accountKey(row.accountId);
    const secretKey = open(accountKey, row.wrappedDek, dekAad(row.accountId, repositoryId, name));
    try {
      return open(secretKey, row.ciphertext, valueAad(row.accountId, repositoryId, name));
    } finally {
      secretKey.fill(0);
    }
  }

  private async accountKey(accountId: number): Promise<Buffer> {
    const cached = this.accountKeys.get(accountId);
    if (cached && cached.expires > Date.now()) return cached.key;
    const account = await first(this.db.orm.select().from(accounts).where(eq(accounts.id, accountId)).limit(1));
    if (!account) throw new Error(`Account ${accountId} does not exist.`);
    const key = await this.keys.unwrapKey(account.wrappedDek, account.dekKeyId);
    if (this.accountKeys.size >= CACHE_MAX) {
      const oldest = this.accountKeys.keys().next().value!;
      this.accountKeys.get(oldest)?.key.fill(0);
      this.accountKeys.delete(oldest);
    }
    this.accountKeys.set(accountId, { key, expires: Date.now() + CACHE_TTL_MS });
    return key;
  }
}

// Associated data binds each ciphertext to its place: moved to another account or secret, it fails to open.
const valueAad = (accountId: number, repositoryId: number, name: string) =>
  `preview-gate:secret-value:v1|account=${accountId}|repository=${repositoryId}|name=${name}`;
export const dekAad = (accountId: number, repositoryId: number, name: string) =>
  `preview-gate:secret-dek:v1|account=${accountId}|repository=${repositoryId}|name=${name}`;
