import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { KEY_BYTES, open, seal } from './envelope.js';

/** What wraps the account DEKs. Callers never see the key itself, only wrapped bytes and a key id. */
export interface KeyService {
  /** Id of the key that new wraps use (stored beside every wrapped DEK). */
  readonly currentKeyId: string;
  wrapKey(dek: Buffer): Promise<{ wrapped: Buffer; keyId: string }>;
  unwrapKey(wrapped: Buffer, keyId: string): Promise<Buffer>;
}

const WRAP_AAD = 'preview-gate:account-dek:v1';

/** KEY_PROVIDER=local: AES-256-GCM under a 32-byte master key file, created 0600 on first start. */
export class LocalKeyService implements KeyService {
  readonly currentKeyId: string;

  private constructor(private readonly masterKey: Buffer) {
    // A fingerprint, not the key: lets a later rotation tell which master key wrapped what.
    this.currentKeyId = `local:${crypto.createHash('sha256').update(masterKey).digest('hex').slice(0, 16)}`;
  }

  static open(file: string): LocalKeyService {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    try {
      fs.writeFileSync(file, crypto.randomBytes(KEY_BYTES), { flag: 'wx', mode: 0o600 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const key = fs.readFileSync(file);
    if (key.length !== KEY_BYTES) {
      throw new Error(`The master key file ${file} must hold exactly ${KEY_BYTES} bytes (it holds ${key.length}).`);
    }
    const mode = fs.statSync(file).mode & 0o777;
    if (mode & 0o077) {
      throw new Error(`The master key file ${file} must be readable by its owner only (mode 0600, it is 0${mode.toString(8)}).`);
    }
    return new LocalKeyService(key);
  }

  async wrapKey(dek: Buffer) {
    return { wrapped: seal(this.masterKey, dek, WRAP_AAD), keyId: this.currentKeyId };
  }

  async unwrapKey(wrapped: Buffer, keyId: string) {
    if (keyId !== this.currentKeyId) {
      throw new Error(`This DEK was wrapped by key ${keyId}, not by the current master key ${this.currentKeyId}.`);
    }
    return open(this.masterKey, wrapped, WRAP_AAD);
  }
}
