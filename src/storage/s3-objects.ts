import type { Readable } from 'node:stream';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import type { S3Settings } from '../config.js';
import { isSha256 } from '../builds/objects.js';

/** What `putOnce` did: wrote the object, or found it there already (content-addressed: the same bytes). */
export type PutOutcome = 'stored' | 'already stored';

export interface StoredObject {
  repositoryId: number;
  sha256: string;
  size: number;
  /** When the engine last wrote it (listings only). */
  lastModified?: Date;
}

/** `objects/<repository id>/<sha256>`: per repository, as on the filesystem, so no repository's answer reveals another's files. */
export function objectKey(repositoryId: number, sha256: string): string {
  if (!Number.isSafeInteger(repositoryId) || repositoryId < 1) throw new Error(`not a repository id: ${repositoryId}`);
  if (!isSha256(sha256)) throw new Error('not a sha256 (64 lower-case hex digits)');
  return `objects/${repositoryId}/${sha256}`;
}

const QUIET = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };

const KEY = /^objects\/([1-9][0-9]*)\/([0-9a-f]{64})$/;

/**
 * The repositories' content-addressed files in one S3 bucket. An object is written once and never replaced
 * (`If-None-Match: *`), and its bytes are what its name says: every put signs the object's sha256 as the
 * payload hash (`x-amz-content-sha256`), so the engine refuses a body that differs (400
 * XAmzContentSHA256Mismatch) and nothing is stored.
 */
export class S3Objects {
  constructor(
    readonly client: S3Client,
    readonly bucket: string,
  ) {}

  /** Path-style (`<endpoint>/<bucket>/<key>`): what S3-compatible engines answer without a DNS name per bucket. */
  static fromSettings(settings: S3Settings): S3Objects {
    const client = new S3Client({
      endpoint: settings.endpoint,
      region: settings.region,
      credentials: settings.credentials,
      forcePathStyle: true,
      // The SDK's default CRC32 trailers (aws-chunked bodies) are not understood by every engine (Ceph RGW 16
      // refuses them); the sha256 signed for each put is the check that matters here.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      // Without a logger the SDK writes to the console itself ("An error was encountered in a non-retryable
      // streaming request." on every 412 of a streamed put, the normal "already stored"); every failure that
      // matters reaches the caller as an exception.
      logger: QUIET,
    });
    return new S3Objects(client, settings.bucket);
  }

  /**
   * Writes the object unless it exists. `size` is the body's length (a stream is sent with it, not chunked).
   * A stream body is sent once: the SDK cannot retry it, the caller may (the put is idempotent).
   */
  async putOnce(repositoryId: number, sha256: string, body: Buffer | Readable, size: number): Promise<PutOutcome> {
    const command = new PutObjectCommand({
      Bucket: this.bucket,
      Key: objectKey(repositoryId, sha256),
      Body: body,
      ContentLength: size,
      ContentType: 'application/octet-stream', // a build's row says how a path is served; the object is bytes
      IfNoneMatch: '*',
    });
    // Set in the build step, before signing: the signer then signs this value instead of UNSIGNED-PAYLOAD (a
    // stream) or its own hash of a buffer, and the engine checks the body against it.
    command.middlewareStack.add(
      (next) => async (args) => {
        (args.request as { headers: Record<string, string> }).headers['x-amz-content-sha256'] = sha256;
        return next(args);
      },
      { step: 'build', name: 'signObjectSha256' },
    );
    try {
      await this.client.send(command);
      return 'stored';
    } catch (err) {
      if (statusOf(err) === 412) return 'already stored';
      throw err;
    }
  }

  /** The object's bytes as a stream; undefined when there is no such object. */
  async get(repositoryId: number, sha256: string): Promise<Readable | undefined> {
    try {
      const answer = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: objectKey(repositoryId, sha256) }));
      return answer.Body as Readable;
    } catch (err) {
      if (statusOf(err) === 404) return undefined;
      throw err;
    }
  }

  /** The object's size; undefined when there is no such object. */
  async head(repositoryId: number, sha256: string): Promise<{ size: number } | undefined> {
    try {
      const answer = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: objectKey(repositoryId, sha256) }));
      return { size: answer.ContentLength ?? 0 };
    } catch (err) {
      if (statusOf(err) === 404) return undefined;
      throw err;
    }
  }

  /** Removes the object (no error when it is not there: S3 answers a delete of a missing key with 204). */
  async delete(repositoryId: number, sha256: string): Promise<void> {
    await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: objectKey(repositoryId, sha256) }));
  }

  /**
   * The objects of one repository, or of all (no id), a page of up to `pageSize` keys per request, in key order.
   * Keys that are not `objects/<id>/<sha256>` (someone else's files in the bucket) are passed over.
   */
  async *list(repositoryId?: number, pageSize = 1000): AsyncGenerator<StoredObject> {
    const prefix = repositoryId === undefined ? 'objects/' : `objects/${repositoryId}/`;
    let token: string | undefined;
    do {
      const page = await this.client.send(
        new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, ContinuationToken: token, MaxKeys: pageSize }),
      );
      for (const item of page.Contents ?? []) {
        const match = KEY.exec(item.Key ?? '');
        if (match) yield { repositoryId: Number(match[1]), sha256: match[2]!, size: item.Size ?? 0, lastModified: item.LastModified };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  /** For /health: the bucket answers with these credentials. */
  async check(): Promise<void> {
    await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }));
  }

  close(): void {
    this.client.destroy();
  }
}

/** The HTTP status of an S3 error answer; undefined for a network error. */
export function statusOf(err: unknown): number | undefined {
  if (err instanceof S3ServiceException) return err.$metadata.httpStatusCode;
  return (err as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode;
}
