import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { Config } from '../config.js';
import { HttpError } from '../errors.js';

export interface ManifestJob {
  id: number;
  /** The body as received (transferred to the thread). */
  body: Uint8Array;
  gzip: boolean;
  /** The most bytes the manifest may have once inflated. */
  maxBytes: number;
  limits: Pick<Config, 'maxBuildFiles' | 'maxBuildBytes'>;
  /** The repository's objects folder: which listed contents it lacks. */
  objectsDir: string;
  /** Where the parsed list is written. */
  listsDir: string;
}

export type ManifestJobAnswer =
  | ({ id: number } & ReadManifest)
  | { id: number; status: number; error: string };

/** A manifest as read by the thread. */
export interface ReadManifest {
  /** The sha256 of the JSON (inflated): what the upload names. */
  digest: string;
  /** The file (in `listsDir`) of its parsed list, as `ManifestList` reads it. */
  list: string;
  /** Whether the repository stores every listed content. */
  allStored: boolean;
  /** The answer that names the contents the repository lacks ({"missing": […]}, as JSON text). */
  answer: string;
}

/**
 * Reads manifests on one worker thread, one at a time (started at the first manifest, then kept, unref'd, as
 * starting it costs ~50 ms): the main thread only hands the body over and gets the compact list back.
 */
export class ManifestReader {
  private worker: Worker | undefined;
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (a: ReadManifest) => void; reject: (e: Error) => void }>();

  read(job: Omit<ManifestJob, 'id'>): Promise<ReadManifest> {
    const id = this.nextId++;
    const worker = this.ensureWorker();
    // Moved, not copied; a small Buffer lives in Node's shared pool, which must not move: it is copied first.
    const own = job.body.byteOffset === 0 && job.body.byteLength === job.body.buffer.byteLength;
    const body = own ? job.body : new Uint8Array(job.body);
    return new Promise<ReadManifest>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      worker.postMessage({ ...job, body, id }, [body.buffer as ArrayBuffer]);
    });
  }

  private ensureWorker(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(threadUrl(), { execArgv: [] });
    worker.on('message', (answer: ManifestJobAnswer) => {
      const waiting = this.waiting.get(answer.id);
      this.waiting.delete(answer.id);
      if ('error' in answer) waiting?.reject(new HttpError(answer.status, answer.error));
      else waiting?.resolve(answer);
    });
    const fail = (err: Error) => {
      for (const waiting of this.waiting.values()) waiting.reject(err);
      this.waiting.clear();
      if (this.worker === worker) this.worker = undefined;
    };
    worker.on('error', fail);
    worker.on('exit', () => fail(new Error('The manifest thread stopped.')));
    worker.unref();
    return (this.worker = worker);
  }
}

/** The process's one manifest reader. */
let shared: ManifestReader | undefined;
export const manifestReader = (): ManifestReader => (shared ??= new ManifestReader());

/** The compiled thread beside this module; under ts-jest, the copy in dist/ (as for the writer's thread). */
function threadUrl(): URL {
  const beside = new URL('./manifest-thread.js', import.meta.url);
  if (fs.existsSync(fileURLToPath(beside))) return beside;
  return new URL('../../dist/src/upload/manifest-thread.js', import.meta.url);
}
