/**
 * Object storage on S3 (issue 29): the configuration, the object store against a real engine (Ceph RGW, started
 * by `npm run test:engines`, which runs `bash test/engines/rgw.sh npx jest test/s3.test.ts`), and `migrate-storage` from a filesystem deployment.
 * Without S3_ENDPOINT the engine's tests are skipped, and the skipped block's name says why.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { ObjectStore } from '../src/builds/objects.js';
import { runCli } from '../src/cli.js';
import { ConfigError, loadConfig, type S3Settings } from '../src/config.js';
import { migrateStorage } from '../src/storage/migrate.js';
import { objectKey, S3Objects } from '../src/storage/s3-objects.js';

const sha256 = (content: Buffer | string) => crypto.createHash('sha256').update(content).digest('hex');

let tmp: string;
beforeEach(() => (tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-s3-'))));
afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('configuration', () => {
  const load = (env: Record<string, string>) => loadConfig({ DATA_DIR: tmp, ...env });
  const refusal = (env: Record<string, string>) => {
    try {
      load(env);
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      return (err as Error).message;
    }
    throw new Error('accepted');
  };

  test('filesystem by default; S3_* make the bucket settings, path-style, region us-east-1 unless set', () => {
    expect(load({}).storage).toBe('filesystem');
    expect(load({}).s3).toBeUndefined();
    const config = load({ STORAGE: 's3', S3_BUCKET: 'previews', S3_ENDPOINT: 'http://127.0.0.1:7480/', AWS_ACCESS_KEY_ID: 'AKIA1', AWS_SECRET_ACCESS_KEY: 's3cr3t' });
    expect(config.storage).toBe('s3');
    expect(config.s3).toEqual({ endpoint: 'http://127.0.0.1:7480', bucket: 'previews', region: 'us-east-1', credentials: { accessKeyId: 'AKIA1', secretAccessKey: 's3cr3t' } });
    expect(load({ S3_BUCKET: 'previews', S3_REGION: 'eu-west-1' }).s3).toEqual({ endpoint: undefined, bucket: 'previews', region: 'eu-west-1', credentials: undefined });
    expect(load({ S3_BUCKET: 'previews', AWS_ACCESS_KEY_ID: 'ASIA1', AWS_SECRET_ACCESS_KEY: 's', AWS_SESSION_TOKEN: 'token' }).s3?.credentials).toEqual({
      accessKeyId: 'ASIA1',
      secretAccessKey: 's',
      sessionToken: 'token',
    });
    // Without a bucket, AWS variables set on the host for other programs are not this deployment's business.
    expect(load({ AWS_ACCESS_KEY_ID: 'AKIA1' }).s3).toBeUndefined();
    expect(load({ AWS_ACCESS_KEY_ID: 'odd/value from elsewhere', AWS_SESSION_TOKEN: 't' }).storage).toBe('filesystem');
  });

  test('each bad setting is one sentence naming the variable, never echoing a secret', () => {
    expect(refusal({ STORAGE: 's3' })).toBe('S3_BUCKET must be set when STORAGE is "s3"');
    expect(refusal({ STORAGE: 'gcs' })).toBe('STORAGE must be "filesystem" or "s3" (got "gcs")');
    expect(refusal({ S3_BUCKET: 'My_Bucket' })).toMatch(/^S3_BUCKET must be an S3 bucket name/);
    expect(refusal({ S3_BUCKET: 'b', S3_ENDPOINT: 'ftp://x' })).toMatch(/^S3_BUCKET must be an S3 bucket name|^S3_ENDPOINT must be an absolute http\(s\) URL/);
    expect(refusal({ S3_BUCKET: 'bucket', S3_ENDPOINT: 'ftp://x' })).toBe('S3_ENDPOINT must be an absolute http(s) URL (got "ftp://x")');
    expect(refusal({ S3_BUCKET: 'bucket', AWS_SECRET_ACCESS_KEY: 'hunter2-secret' })).toBe(
      "AWS_ACCESS_KEY_ID must be set too: the bucket's credentials are an access key id and its secret",
    );
    expect(refusal({ S3_BUCKET: 'bucket', AWS_ACCESS_KEY_ID: 'AKIA1' })).toMatch(/^AWS_SECRET_ACCESS_KEY must be set too/);
  });

  test('migrate-storage against an engine that does not answer: one line, exit 1, no secret', async () => {
    const closed = await new Promise<number>((resolve) => {
      const server = net.createServer().listen(0, '127.0.0.1', () => {
        const { port } = server.address() as net.AddressInfo;
        server.close(() => resolve(port));
      });
    });
    let stderr = '';
    const code = await runCli(['migrate-storage'], {
      stdin: new PassThrough(),
      stdout: new PassThrough(),
      stderr: new PassThrough().on('data', (d: Buffer) => (stderr += d.toString())),
      env: { DATA_DIR: tmp, S3_BUCKET: 'previews', S3_ENDPOINT: `http://127.0.0.1:${closed}`, AWS_ACCESS_KEY_ID: 'AKIA1', AWS_SECRET_ACCESS_KEY: 'secret-value-123' },
    });
    expect(code).toBe(1);
    expect(stderr).toMatch(new RegExp(`^preview-gate: s3://previews at http://127\\.0\\.0\\.1:${closed} cannot be used: no answer \\(.*ECONNREFUSED.*\\)\\.\n$`));
    expect(stderr).not.toContain('secret-value-123');
  });

  test('an object key is objects/<repository id>/<sha256>; anything else is refused before a request is made', () => {
    const hash = sha256('x');
    expect(objectKey(42, hash)).toBe(`objects/42/${hash}`);
    expect(() => objectKey(42, '../../other/key')).toThrow(/not a sha256/);
    expect(() => objectKey(42, hash.toUpperCase())).toThrow(/not a sha256/);
    expect(() => objectKey(0, hash)).toThrow(/not a repository id/);
    expect(() => objectKey(-1, hash)).toThrow(/not a repository id/);
  });
});

const engine: S3Settings | undefined = process.env.S3_ENDPOINT
  ? {
      endpoint: process.env.S3_ENDPOINT,
      bucket: process.env.S3_BUCKET ?? 'preview-gate-test',
      region: process.env.S3_REGION ?? 'us-east-1',
      credentials: { accessKeyId: process.env.AWS_ACCESS_KEY_ID ?? '', secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY ?? '' },
    }
  : undefined;
const describeEngine = engine ? describe : describe.skip;
const engineName = engine
  ? `against the S3 engine at ${engine.endpoint}`
  : 'against a real S3 engine (skipped: S3_ENDPOINT is unset; run `npm run test:engines`)';

describeEngine(engineName, () => {
  let bucket: S3Objects;
  beforeAll(() => (bucket = S3Objects.fromSettings(engine!)));
  afterAll(() => bucket.close());

  /** A repository id no other test (or earlier run against the same bucket) uses. */
  const freshRepository = () => 1_000_000 + crypto.randomInt(1_000_000_000);
  const read = async (stream: Readable | undefined) => (stream ? Buffer.concat(await stream.toArray()) : undefined);

  test('putOnce writes an object once: the second put of the same name is "already stored", and get returns the bytes', async () => {
    const repo = freshRepository();
    const content = Buffer.from(`<h1>hello ${repo}</h1>`);
    const hash = sha256(content);
    expect(await bucket.head(repo, hash)).toBeUndefined();
    expect(await bucket.putOnce(repo, hash, content, content.length)).toBe('stored');
    expect(await bucket.putOnce(repo, hash, Readable.from([content]), content.length)).toBe('already stored');
    expect(await read(await bucket.get(repo, hash))).toEqual(content);
    expect(await bucket.head(repo, hash)).toEqual({ size: content.length });
    // Per repository: the same content in another repository is another object.
    expect(await bucket.head(repo + 1, hash)).toBeUndefined();
  });

  test('a body that is not what its name says is refused by the engine, from a buffer or a stream, and nothing is stored', async () => {
    const repo = freshRepository();
    const named = sha256('the real content');
    for (const body of [Buffer.from('other content!!!'), Readable.from([Buffer.from('other content!!!')])]) {
      await expect(bucket.putOnce(repo, named, body, 16)).rejects.toMatchObject({ name: 'XAmzContentSHA256Mismatch', $metadata: { httpStatusCode: 400 } });
    }
    expect(await bucket.head(repo, named)).toBeUndefined();
    expect(await bucket.get(repo, named)).toBeUndefined();
  });

  test('a 5 MiB file streams in and out unchanged', async () => {
    const repo = freshRepository();
    const content = crypto.randomBytes(5 * 1024 * 1024);
    const file = path.join(tmp, 'big.bin');
    fs.writeFileSync(file, content);
    const hash = sha256(content);
    expect(await bucket.putOnce(repo, hash, fs.createReadStream(file), content.length)).toBe('stored');
    expect(sha256((await read(await bucket.get(repo, hash)))!)).toBe(hash);
  });

  test('delete removes an object, and deleting a missing one is no error', async () => {
    const repo = freshRepository();
    const content = Buffer.from('to be deleted');
    const hash = sha256(content);
    await bucket.putOnce(repo, hash, content, content.length);
    await bucket.delete(repo, hash);
    expect(await bucket.head(repo, hash)).toBeUndefined();
    await expect(bucket.delete(repo, hash)).resolves.toBeUndefined();
  });

  test('list pages through a repository (2 keys a page here), only its own objects, and passes over keys of another shape', async () => {
    const repo = freshRepository();
    const contents = Array.from({ length: 5 }, (_, i) => Buffer.from(`file ${i} of ${repo}`));
    for (const content of contents) await bucket.putOnce(repo, sha256(content), content, content.length);
    const other = Buffer.from(`another repository ${repo}`);
    await bucket.putOnce(repo + 1, sha256(other), other, other.length);
    await bucket.client.send(new PutObjectCommand({ Bucket: engine!.bucket, Key: `objects/${repo}/not-a-hash`, Body: 'x' }));
    const listed = [];
    for await (const object of bucket.list(repo, 2)) listed.push(object);
    const expected = contents.map((c) => ({ repositoryId: repo, sha256: sha256(c), size: c.length, lastModified: expect.any(Date) })).sort((a, b) => a.sha256.localeCompare(b.sha256));
    expect(listed).toEqual(expected);
  });

  test('wrong credentials: check() fails with the status, and the secret appears in no message', async () => {
    const wrong = S3Objects.fromSettings({ ...engine!, credentials: { accessKeyId: engine!.credentials!.accessKeyId, secretAccessKey: 'wrong-secret-value' } });
    try {
      const err = await wrong.check().then(() => undefined, (e: unknown) => e);
      expect(err).toMatchObject({ $metadata: { httpStatusCode: 403 } });
      expect(JSON.stringify(err) + String((err as Error).message)).not.toContain('wrong-secret-value');
    } finally {
      wrong.close();
    }
  });

  describe('migrate-storage', () => {
    /** A filesystem deployment's content store, laid out as the server adopts a build's files. */
    function filesystemStore(files: Record<number, Buffer[]>): { store: ObjectStore; dataDir: string } {
      const dataDir = path.join(tmp, 'data');
      const store = new ObjectStore(path.join(dataDir, 'objects'));
      for (const [repo, contents] of Object.entries(files)) {
        const staged = contents.map((content, i) => {
          const file = path.join(tmp, `staged-${repo}-${i}`);
          fs.writeFileSync(file, content);
          return { path: file, hash: sha256(content) };
        });
        store.forRepository(Number(repo)).adoptAll(staged);
      }
      return { store, dataDir };
    }

    async function listed(repo: number): Promise<string[]> {
      const hashes = [];
      for await (const object of bucket.list(repo)) hashes.push(object.sha256);
      return hashes.sort();
    }

    test('copies every object of every repository, verified; a second run sends nothing (resumable)', async () => {
      const [a, b] = [freshRepository(), freshRepository()];
      const filesA = Array.from({ length: 40 }, (_, i) => crypto.randomBytes(100 + i * 50));
      const filesB = [Buffer.from('b one'), Buffer.from('b two')];
      const { store } = filesystemStore({ [a]: filesA, [b]: filesB });
      // An earlier run that was interrupted had put 3 of a's objects.
      for (const content of filesA.slice(0, 3)) await bucket.putOnce(a, sha256(content), content, content.length);

      const first = await migrateStorage(store, bucket, { concurrency: 4 });
      expect(first).toEqual({
        copied: 39,
        copiedBytes: [...filesA.slice(3), ...filesB].reduce((n, c) => n + c.length, 0),
        alreadyThere: 3,
        verified: 39,
        gone: 0,
        failed: [],
      });
      expect(await listed(a)).toEqual(filesA.map((c) => sha256(c)).sort());
      expect(await listed(b)).toEqual(filesB.map((c) => sha256(c)).sort());

      const again = await migrateStorage(store, bucket);
      expect(again).toEqual({ copied: 0, copiedBytes: 0, alreadyThere: 42, verified: 0, gone: 0, failed: [] });
    });

    test('a file that does not hold what its name says is reported and not copied; the others are', async () => {
      const repo = freshRepository();
      const good = Buffer.from('good content');
      const { store } = filesystemStore({ [repo]: [good, Buffer.from('damaged later')] });
      const damaged = store.forRepository(repo).pathOf(sha256('damaged later'));
      fs.chmodSync(damaged, 0o644);
      fs.writeFileSync(damaged, 'damaged: other bytes');

      const counts = await migrateStorage(store, bucket);
      expect(counts).toMatchObject({ copied: 1, verified: 1 });
      expect(counts.failed).toEqual([`objects/${repo}/${sha256('damaged later')}: ${damaged} does not hold what its name says (its sha256 differs); not copied`]);
      expect(await listed(repo)).toEqual([sha256(good)]);
    });

    test('an object of another size under the name (not written by preview-gate) is replaced by the file', async () => {
      const repo = freshRepository();
      const content = Buffer.from('the right bytes');
      const { store } = filesystemStore({ [repo]: [content] });
      await bucket.client.send(new PutObjectCommand({ Bucket: engine!.bucket, Key: objectKey(repo, sha256(content)), Body: 'wrong' }));

      expect(await migrateStorage(store, bucket)).toMatchObject({ copied: 1, verified: 1, alreadyThere: 0, failed: [] });
      expect(await read(await bucket.get(repo, sha256(content)))).toEqual(content);
    });

    test('a file removed from DATA_DIR while the copy runs (the server cleaned it up) is counted as gone, not as a failure', async () => {
      const repo = freshRepository();
      const content = Buffer.from('removed meanwhile');
      const { store } = filesystemStore({ [repo]: [content] });
      const file = store.forRepository(repo).pathOf(sha256(content));
      // The file goes between the look at the bucket and the read: the moment the cleanup could take it.
      const racing = Object.assign(Object.create(bucket) as S3Objects, {
        head: async (id: number, hash: string) => {
          fs.rmSync(file);
          return bucket.head(id, hash);
        },
      });

      expect(await migrateStorage(store, racing)).toEqual({ copied: 0, copiedBytes: 0, alreadyThere: 0, verified: 0, gone: 1, failed: [] });
      expect(await bucket.head(repo, sha256(content))).toBeUndefined();
    });

    test('an object that reads back as other bytes is removed from the bucket again and reported', async () => {
      const repo = freshRepository();
      const content = Buffer.from('read back wrong');
      const { store } = filesystemStore({ [repo]: [content] });
      // A bucket whose reads go wrong (a faulty proxy or engine): what the check after each put is for.
      const faulty = Object.assign(Object.create(bucket) as S3Objects, {
        get: async () => Readable.from([Buffer.from('something else')]),
      });

      const counts = await migrateStorage(store, faulty);
      expect(counts).toMatchObject({ copied: 1, verified: 0 });
      expect(counts.failed).toEqual([
        `objects/${repo}/${sha256(content)}: read back from the bucket, it hashes to ${sha256('something else')}; removed from the bucket again`,
      ]);
      expect(await bucket.head(repo, sha256(content))).toBeUndefined();
    });

    test('the command prints its counts, exits 1 when an object failed, and names no secret; without S3_BUCKET it says so', async () => {
      const repo = freshRepository();
      const { dataDir } = filesystemStore({ [repo]: [Buffer.from('cli one'), Buffer.from('cli two')] });
      const run = async (env: Record<string, string>, args: string[] = []) => {
        let stdout = '';
        let stderr = '';
        const out = new PassThrough().on('data', (d: Buffer) => (stdout += d.toString()));
        const err = new PassThrough().on('data', (d: Buffer) => (stderr += d.toString()));
        const code = await runCli(['migrate-storage', ...args], { stdin: new PassThrough(), stdout: out, stderr: err, env: { DATA_DIR: dataDir, ...env } });
        return { code, stdout, stderr };
      };
      const s3Env = {
        S3_ENDPOINT: engine!.endpoint!,
        S3_BUCKET: engine!.bucket,
        S3_REGION: engine!.region,
        AWS_ACCESS_KEY_ID: engine!.credentials!.accessKeyId,
        AWS_SECRET_ACCESS_KEY: engine!.credentials!.secretAccessKey,
      };

      expect(await run({})).toEqual({ code: 1, stdout: '', stderr: 'preview-gate: configuration error: S3_BUCKET must be set: migrate-storage copies the stored files into that bucket\n' });
      expect(await run(s3Env, ['--concurrency', '0'])).toMatchObject({ code: 2, stderr: expect.stringMatching(/--concurrency must be a whole number from 1 to 256/) });

      const denied = await run({ ...s3Env, AWS_SECRET_ACCESS_KEY: 'not-the-secret-xyz' });
      expect(denied.code).toBe(1);
      expect(denied.stderr).toBe(`preview-gate: s3://${engine!.bucket} at ${engine!.endpoint} cannot be used: the credentials are refused (403).\n`);

      const copied = await run(s3Env);
      expect(copied.stderr).toBe('');
      expect(copied.stdout).toBe(
        `Copied 2 object(s) (14 bytes) into s3://${engine!.bucket} at ${engine!.endpoint}, each read back and verified by sha256 (2); 0 already there; 0 removed from DATA_DIR meanwhile; 0 failed.\n`,
      );
      expect(copied.code).toBe(0);
      expect((await run(s3Env)).stdout).toMatch(/^Copied 0 object\(s\) \(0 bytes\) .*; 2 already there; .* 0 failed\.\n$/);
      for (const res of [copied, denied]) expect(res.stdout + res.stderr).not.toMatch(new RegExp(`${s3Env.AWS_SECRET_ACCESS_KEY}|not-the-secret-xyz`));
    });
  });
});
