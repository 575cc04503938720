import crypto from 'node:crypto';
import { DefaultAzureCredential, type TokenCredential } from '@azure/identity';
import { CryptographyClient, type CryptographyClientOptions } from '@azure/keyvault-keys';
import { unavailable } from '../errors.js';
import type { KeyService } from './key-service.js';

export interface AzureKeyOptions {
  /** Defaults to DefaultAzureCredential (environment, workload identity, managed identity, Azure CLI…). */
  credential?: TokenCredential;
  /** Extra client options (tests: `tlsOptions` trusting a local fake vault, `disableChallengeResourceVerification`). */
  clientOptions?: CryptographyClientOptions;
  /** Time allowed for one wrap or unwrap, retries included. */
  timeoutMs?: number;
}

const ALGORITHM = 'RSA-OAEP-256';
const KEY_ID = /^https:\/\/[^/]+\/keys\/[^/]+\/[0-9a-zA-Z]+$/;

/**
 * KEY_PROVIDER=azure: account DEKs are wrapped and unwrapped by Key Vault (RSA-OAEP-256) with the versioned
 * key AZURE_KEY_ID; the private key never leaves the vault. Older versions of the key (after a rotation) are
 * used for unwrapping only, each through its own client.
 */
export class AzureKeyService implements KeyService {
  private readonly clients = new Map<string, CryptographyClient>();
  private readonly credential: TokenCredential;
  private readonly timeoutMs: number;

  private constructor(
    readonly currentKeyId: string,
    private readonly options: AzureKeyOptions,
  ) {
    this.credential = options.credential ?? new DefaultAzureCredential();
    this.timeoutMs = options.timeoutMs ?? 15_000;
  }

  /**
   * Opens the key service and proves it works: one wrap and unwrap of a random key, so that a vault that cannot
   * be reached, or an identity without the right role, stops the start with one sentence saying which.
   */
  static async open(keyId: string, options: AzureKeyOptions = {}): Promise<AzureKeyService> {
    const service = new AzureKeyService(keyId, options);
    const probe = crypto.randomBytes(32);
    try {
      const { wrapped } = await service.wrapKey(probe);
      const back = await service.unwrapKey(wrapped, keyId);
      if (!back.equals(probe)) throw new Error('the key did not unwrap what it wrapped');
    } catch (err) {
      throw new Error(`Azure Key Vault key ${keyId} cannot be used: ${describe((err as Error).cause ?? err)}.`);
    }
    return service;
  }

  async wrapKey(dek: Buffer): Promise<{ wrapped: Buffer; keyId: string }> {
    const result = await this.call('wrap', this.currentKeyId, (client, abortSignal) => client.wrapKey(ALGORITHM, dek, { abortSignal }));
    // The id Key Vault answers with is the exact version used; it is stored beside the wrapped DEK.
    return { wrapped: Buffer.from(result.result), keyId: result.keyID ?? this.currentKeyId };
  }

  async unwrapKey(wrapped: Buffer, keyId: string): Promise<Buffer> {
    const result = await this.call('unwrap', keyId, (client, abortSignal) => client.unwrapKey(ALGORITHM, wrapped, { abortSignal }));
    return Buffer.from(result.result);
  }

  canUnwrap(keyId: string): boolean {
    return KEY_ID.test(keyId);
  }

  private async call<T>(what: string, keyId: string, op: (client: CryptographyClient, signal: AbortSignal) => Promise<T>): Promise<T> {
    try {
      return await op(this.client(keyId), AbortSignal.timeout(this.timeoutMs));
    } catch (err) {
      // Callers (an upload, a webhook) answer 503: the vault may be back in a moment. The sentence names no secret.
      const error = unavailable(`The key service (Azure Key Vault) could not ${what} a data key: ${describe(err)}; retry later.`);
      error.cause = err;
      throw error;
    }
  }

  private client(keyId: string): CryptographyClient {
    let client = this.clients.get(keyId);
    if (!client) {
      client = new CryptographyClient(keyId, this.credential, {
        // Fail in seconds, not minutes: callers retry (CI on 503, GitHub by redelivery).
        retryOptions: { maxRetries: 2, retryDelayInMs: 200, maxRetryDelayInMs: 1000 },
        ...this.options.clientOptions,
      });
      this.clients.set(keyId, client);
    }
    return client;
  }
}

/** One clause saying what went wrong, from the SDK's errors (never a token or key material). */
function describe(err: unknown): string {
  const e = err as { statusCode?: number; code?: string; name?: string; message?: string };
  if (e.statusCode === 403) return 'the identity may not use this key (403; it needs get, wrapKey and unwrapKey on the key)';
  if (e.statusCode === 401) return 'the vault refused the credential (401)';
  if (e.statusCode === 404) return 'the key or key version does not exist (404)';
  if (e.statusCode) return `the vault answered ${e.statusCode}`;
  if (e.name === 'AbortError' || e.name === 'TimeoutError') return 'the vault did not answer in time';
  if (e.name === 'CredentialUnavailableError' || e.name === 'AuthenticationError' || e.name === 'AggregateAuthenticationError') {
    return 'no Azure credential could get a token (set the AZURE_* variables or use a managed identity)';
  }
  if (e.code && /^E[A-Z]+$/.test(e.code)) return `the vault could not be reached (${e.code})`;
  return (e.message ?? String(err)).split('\n')[0]!.replace(/\.$/, '');
}
