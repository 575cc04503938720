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
  /** Whether this service holds (or can reach) the key `keyId` names. */
  canUnwrap(keyId: string): boolean;
}

/**
 * The key service in use plus the ones kept for unwrapping only: during a rotation (an old local master key,
 * an older Key Vault key version) or a migration between providers. New wraps always use `current`.
 */
export class KeyRing implements KeyService {
  private readonly all: KeyService[];

  constructor(
    readonly current: KeyService,
    readers: KeyService[] = [],
  ) {
    this.all = [current, ...readers];
  }

  get currentKeyId(): string {
    return this.current.currentKeyId;
  }

  wrapKey(dek: Buffer) {
    return this.current.wrapKey(dek);
  }

  unwrapKey(wrapped: Buffer, keyId: string): Promise<Buffer> {
    const service = this.all.find((s) => s.canUnwrap(keyId));
    if (!service) {
      throw new Error(`No configured key service holds the key ${keyId} that wrapped this account's data key.`);
    }
    return service.unwrapKey(wrapped, keyId);
  }

  canUnwrap(keyId: string): boolean {
    return this.all.some((s) => s.canUnwrap(keyId));
  }
}

const WRAP_AAD = 'preview-gate:account-dek:v1';
const RETIRED_SUFFIX = '.retired-';

/**
 * KEY_PROVIDER=local: AES-256-GCM under a 32-byte master key file, created 0600 on first start. During a
 * rotation the previous master keys wait beside it as `master.key.retired-<fingerprint>`, for unwrapping only.
 * The files are read again when they change, so a running server follows a rotation made by the CLI.
 */
export class LocalKeyService implements KeyService {
  private keys = new Map<string, Buffer>();
  private current = '';
  private currentFileIno = -1;

  private constructor(
    readonly file: string,
    /** False for a key kept for unwrapping only: it is never created or replaced. */
    private readonly create: boolean,
  ) {}

  /** Opens (and, unless `create` is false, creates) the master key; undefined when absent and not created. */
  static open(file: string, options: { create?: boolean } = {}): LocalKeyService | undefined {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    if (options.create === false && !fs.existsSync(file)) return undefined;
    const service = new LocalKeyService(file, options.create !== false);
    service.load();
    return service;
  }

  get currentKeyId(): string {
    this.reloadIfReplaced();
    return this.current;
  }

  async wrapKey(dek: Buffer) {
    this.reloadIfReplaced();
    return { wrapped: seal(this.keys.get(this.current)!, dek, WRAP_AAD), keyId: this.current };
  }

  async unwrapKey(wrapped: Buffer, keyId: string) {
    if (!this.keys.has(keyId)) this.load();
    const key = this.keys.get(keyId);
    if (!key) throw new Error(`The local master key ${keyId} that wrapped this data key is not in ${path.dirname(this.file)}.`);
    return open(key, wrapped, WRAP_AAD);
  }

  canUnwrap(keyId: string): boolean {
    if (!keyId.startsWith('local:')) return false;
    if (!this.keys.has(keyId)) this.load();
    return this.keys.has(keyId);
  }

  /**
   * Starts a rotation: the current master key becomes a retired one and a new one is created. Crash-safe: the
   * old key is renamed first, so whatever happens next it is still there, and a missing master.key is created.
   */
  startRotation(): void {
    const retired = `${this.file}${RETIRED_SUFFIX}${this.currentKeyId.slice('local:'.length)}`;
    fs.renameSync(this.file, retired);
    this.load();
  }

  /** Retired master keys still on disk (a rotation has not finished). */
  retiredKeyIds(): string[] {
    return this.retiredFiles().map((f) => `local:${f.slice(f.lastIndexOf(RETIRED_SUFFIX) + RETIRED_SUFFIX.length)}`);
  }

  /** Deletes a retired master key once no data key is wrapped by it any more. */
  removeRetired(keyId: string): void {
    fs.rmSync(`${this.file}${RETIRED_SUFFIX}${keyId.slice('local:'.length)}`, { force: true });
    this.keys.get(keyId)?.fill(0);
    this.keys.delete(keyId);
  }

  private retiredFiles(): string[] {
    const base = path.basename(this.file) + RETIRED_SUFFIX;
    return fs
      .readdirSync(path.dirname(this.file))
      .filter((f) => f.startsWith(base))
      .map((f) => path.join(path.dirname(this.file), f));
  }

  private reloadIfReplaced(): void {
    const ino = fs.statSync(this.file, { throwIfNoEntry: false })?.ino;
    if (ino !== this.currentFileIno) this.load();
  }

  private load(): void {
    if (this.create) {
      try {
        fs.writeFileSync(this.file, crypto.randomBytes(KEY_BYTES), { flag: 'wx', mode: 0o600 });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
    } else if (!fs.existsSync(this.file)) {
      return; // removed after a migration: keep what was read
    }
    const keys = new Map<string, Buffer>();
    const current = readKeyFile(this.file);
    this.current = keyIdOf(current);
    this.currentFileIno = fs.statSync(this.file).ino;
    keys.set(this.current, current);
    for (const file of this.retiredFiles()) {
      const key = readKeyFile(file);
      keys.set(keyIdOf(key), key);
    }
    this.keys = keys;
  }
}

/** A fingerprint, not the key: tells which master key wrapped what. */
const keyIdOf = (key: Buffer) => `local:${crypto.createHash('sha256').update(key).digest('hex').slice(0, 16)}`;

function readKeyFile(file: string): Buffer {
  const key = fs.readFileSync(file);
  if (key.length !== KEY_BYTES) {
    throw new Error(`The master key file ${file} must hold exactly ${KEY_BYTES} bytes (it holds ${key.length}).`);
  }
  const mode = fs.statSync(file).mode & 0o777;
  if (mode & 0o077) {
    throw new Error(`The master key file ${file} must be readable by its owner only (mode 0600, it is 0${mode.toString(8)}).`);
  }
  return key;
}
