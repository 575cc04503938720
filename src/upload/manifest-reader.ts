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
  /** `STORAGE=s3`: the contents the repository has in the bucket (its objects rows), instead of the folder. */
  storedHashes?: string[];
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
  /**
   * The answer that names the contents the repository lacks ({"missing": […]}, as UTF-8 JSON): up to 3.3 MB,
   * made on the thread and transferred, so the main thread neither serializes, copies nor hashes it.
   */
  answer: Uint8Array;
}

/** A repository's manifests in the reader at once (their bodies being received, waiting, or read); more → 503. */
export const MANIFESTS_READ_PER_REPOSITORY = 2;

interface Queued {
  job: ManifestJob;
  resolve: (a: ReadManifest) => void;
  reject: (e: Error) => void;
}

/**
 * Reads manifests on one worker thread, one at a time (started at the first manifest, then kept, unref'd, as
 * starting it costs ~50 ms): the main thread only hands the body over and gets the compact list back.
 * Repositories take turns (round robin) and each has at most MANIFESTS_READ_PER_REPOSITORY manifests in, so
 * one repository's worst manifests delay another's by at most the one being read.
 */
export class ManifestReader {
  private worker: Worker | undefined;
  private nextId = 1;
  /** Manifests in per repository (from `enter` to `leave`). */
  private readonly entered = new Map<number, number>();
  /** Repositories with manifests waiting, in turn order (a Map keeps insertion order). */
  private readonly turns = new Map<number, Queued[]>();
  /** The manifest on the thread, and its repository's others that wait for their next turn. */
  private running: { repositoryId: number; queued: Queued; rest: Queued[] } | undefined;

  /**
   * A place for one of the repository's manifests, taken before its body is received; undefined when it has
   * MANIFESTS_READ_PER_REPOSITORY in already (the caller answers 503). The function returned gives it back.
   */
  enter(repositoryId: number): (() => void) | undefined {
    const inside = this.entered.get(repositoryId) ?? 0;
    if (inside >= MANIFESTS_READ_PER_REPOSITORY) return undefined;
    this.entered.set(repositoryId, inside + 1);
    let left = false;
    return () => {
      if (left) return;
      left = true;
      const now = (this.entered.get(repositoryId) ?? 1) - 1;
      if (now === 0) this.entered.delete(repositoryId);
      else this.entered.set(repositoryId, now);
    };
  }

  read(repositoryId: number, job: Omit<ManifestJob, 'id'>): Promise<ReadManifest> {
    // Moved, not copied; a small Buffer lives in Node's shared pool, which must not move: it is copied first.
    const own = job.body.byteOffset === 0 && job.body.byteLength === job.body.buffer.byteLength;
    const body = own ? job.body : new Uint8Array(job.body);
    return new Promise<ReadManifest>((resolve, reject) => {
      const queued = { job: { ...job, body, id: this.nextId++ }, resolve, reject };
      if (this.running?.repositoryId === repositoryId) this.running.rest.push(queued);
      else this.turns.set(repositoryId, [...(this.turns.get(repositoryId) ?? []), queued]);
      this.next();
    });
  }

  /** The repository's manifests waiting for the thread or on it. */
  queuedOf(repositoryId: number): number {
    const running = this.running?.repositoryId === repositoryId ? 1 + this.running.rest.length : 0;
    return running + (this.turns.get(repositoryId)?.length ?? 0);
  }

  /** Hands the thread the first waiting repository's next manifest; the repository's turn comes again after the others'. */
  private next(): void {
    if (this.running) return;
    const first = this.turns.entries().next();
    if (first.done) return;
    const [repositoryId, [queued, ...rest]] = first.value as [number, [Queued, ...Queued[]]];
    this.turns.delete(repositoryId);
    this.running = { repositoryId, queued, rest };
    this.ensureWorker().postMessage(queued.job, [queued.job.body.buffer as ArrayBuffer]);
  }

  private done(settle: (queued: Queued) => void): void {
    const running = this.running;
    if (!running) return;
    this.running = undefined;
    if (running.rest.length) this.turns.set(running.repositoryId, running.rest);
    settle(running.queued);
    this.next();
  }

  private ensureWorker(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(threadUrl(), { execArgv: [] });
    worker.on('message', (answer: ManifestJobAnswer) => {
      if (answer.id !== this.running?.queued.job.id) return;
      this.done((queued) => ('error' in answer ? queued.reject(new HttpError(answer.status, answer.error)) : queued.resolve(answer)));
    });
    const fail = (err: Error) => {
      if (this.worker !== worker) return;
      this.worker = undefined; // the next manifest starts another
      this.done((queued) => queued.reject(err));
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
