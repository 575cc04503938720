import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';

/** One small file to write: its bytes (owned by the message), where, and the repository's objects folder. */
export interface WriteJob {
  id: number;
  build: number;
  target: string;
  data: Uint8Array;
  objectsDir: string;
  /** Remove what is at `target` first (a link made by a link job sent before this write). */
  replace?: boolean;
}

export type WriteResult =
  | { id: number; hash: string; linked: boolean }
  | { id: number; hash: string; error: { code?: string; syscall?: string; message: string } };

/**
 * Files of a digest upload to link from the repository's objects: [sha256, target], folders made as needed.
 * The thread links from the first file on, the caller from the last one back (in other folders: two links
 * into one folder wait for each other), each taking a ticket of the shared counter `tickets` per file until
 * all are taken; `outcome[i]` is set to LINKED or NOT_LINKED (no such object, or the target could not be made).
 */
export interface LinkJob {
  id: number;
  files: [hash: string, target: string][];
  objectsDir: string;
  tickets: Int32Array;
  outcome: Uint8Array;
}

export const LINKED = 1;
export const NOT_LINKED = 2;

export type WriterMessage = { kind: 'write'; jobs: WriteJob[] } | { kind: 'link'; job: LinkJob } | { kind: 'release'; build: number };
export type WriterAnswer = WriteResult[] | { linked: number };

/**
 * An idle thread is ended after this long: it holds ~10 MB of its own (its V8 heap; 42.5 → 53.1 MB of RSS, back to
 * 45.5 MB once ended), which a 1 GB upload of large files (never sent to it) must not carry; starting one again
 * takes a few tens of milliseconds.
 */
const IDLE_STOP_MS = 10_000;

interface Waiting {
  resolve: (written: { hash: string; linked: boolean }) => void;
  reject: (err: Error) => void;
}

/**
 * Hashes and writes the small files of uploads on one worker thread (writer-thread.ts). The main thread parsed
 * the archive and did this per-file work too — a sha256 and an open, write and close per file — so an upload used
 * one core while `tar -xzf` and its gzip use two (bench figure 1d). Files are sent in batches, one message per
 * turn of the event loop. Thread-pool `fs` calls were no alternative: three round trips per small file cost
 * more than the writes themselves. A second thread for concurrent uploads gained nothing (bench figure 4: 69.7
 * and 66.9 MB/s with two, 69.7 and 74.5 with one; two cores are busy either way).
 */
export class FileWriter {
  private worker: Worker | undefined;
  private nextId = 1;
  private nextBuild = 1;
  private batch: WriteJob[] = [];
  private readonly waiting = new Map<number, Waiting>();
  private readonly linking = new Map<number, { resolve: () => void; reject: (err: Error) => void }>();
  /** The ids each worker was sent and has not answered: a worker that dies fails exactly those. */
  private readonly sentTo = new Map<Worker, Set<number>>();
  private idleTimer: NodeJS.Timeout | undefined;

  constructor(private readonly idleStopMs = IDLE_STOP_MS) {}

  /** Whether the thread is running (it starts at the first write and ends when idle). */
  get running(): boolean {
    return this.worker !== undefined;
  }

  /** A number for one build's files: files of one build with the same content become links to one another. */
  newBuild(): number {
    return this.nextBuild++;
  }

  /**
   * Writes `data` as a new read-only file at `target` — or links it to the repository's object of that content, or
   * to a file of the same build with it — and resolves with its sha256 and whether it became a link. Rejects with
   * the filesystem's error (its `code` and `syscall` kept) when the file cannot be made.
   */
  write(build: number, target: string, data: Buffer, objectsDir: string, replace = false): Promise<{ hash: string; linked: boolean }> {
    // A copy the message can own: the parser's chunks are slices of larger buffers, and a sent slice would copy
    // the whole buffer under it.
    const copy = new Uint8Array(data.byteLength);
    copy.set(data);
    const id = this.nextId++;
    const written = new Promise<{ hash: string; linked: boolean }>((resolve, reject) => this.waiting.set(id, { resolve, reject }));
    this.batch.push({ id, build, target, data: copy, objectsDir, ...(replace ? { replace } : {}) });
    if (this.batch.length === 1) setImmediate(() => this.flush());
    return written;
  }

  /**
   * Links files from the repository's objects on the thread (see `LinkJob`): a digest upload's stored files,
   * while its archive streams in. Writes sent after it run after it (`replace` removes such a link). Resolves
   * once the thread has taken its last file.
   */
  link(job: Omit<LinkJob, 'id'>): Promise<void> {
    this.flush(); // writes already asked for go first
    const id = this.nextId++;
    const done = new Promise<void>((resolve, reject) => this.linking.set(id, { resolve, reject }));
    this.send({ kind: 'link', job: { id, ...job } }, [id]);
    return done;
  }

  /** Forgets a build's contents; called once none of its writes is in flight. */
  release(build: number): void {
    this.worker?.postMessage({ kind: 'release', build } satisfies WriterMessage);
  }

  /** Ends the thread (the next write starts another); files sent to it and not yet written fail. */
  async stop(): Promise<void> {
    clearTimeout(this.idleTimer);
    const worker = this.worker;
    this.worker = undefined;
    await worker?.terminate();
  }

  private flush(): void {
    const jobs = this.batch;
    this.batch = [];
    if (jobs.length === 0) return;
    this.send({ kind: 'write', jobs }, jobs.map((job) => job.id), jobs.map((job) => job.data.buffer as ArrayBuffer));
  }

  /** Posts work to the thread (started if needed), which stays busy until the answers for `ids` come back. */
  private send(message: WriterMessage, ids: number[], transfer: ArrayBuffer[] = []): void {
    clearTimeout(this.idleTimer);
    const worker = this.ensureWorker();
    const sent = this.sentTo.get(worker)!;
    for (const id of ids) sent.add(id);
    worker.ref(); // until its answers come: a process waiting only for them must not exit
    worker.postMessage(message, transfer);
  }

  private ensureWorker(): Worker {
    if (this.worker) return this.worker;
    // No flags of the parent's: the thread needs none, and some (--input-type, -e) would stop it from starting.
    const worker = new Worker(writerThreadUrl(), { execArgv: [] });
    this.sentTo.set(worker, new Set());
    worker.on('message', (answer: WriterAnswer) => {
      const sent = this.sentTo.get(worker);
      if (!Array.isArray(answer)) {
        sent?.delete(answer.linked);
        this.linking.get(answer.linked)?.resolve();
        this.linking.delete(answer.linked);
      } else {
        for (const result of answer) {
          sent?.delete(result.id);
          const waiting = this.waiting.get(result.id);
          this.waiting.delete(result.id);
          if (!waiting) continue;
          if ('error' in result) waiting.reject(Object.assign(new Error(result.error.message), { code: result.error.code, syscall: result.error.syscall }));
          else waiting.resolve({ hash: result.hash, linked: result.linked });
        }
      }
      if (sent?.size === 0) {
        worker.unref();
        this.stopWhenIdle(worker);
      }
    });
    const failSent = (err: Error) => {
      if (this.worker === worker) this.worker = undefined; // the next write starts a new thread
      for (const id of this.sentTo.get(worker) ?? []) {
        this.waiting.get(id)?.reject(err);
        this.waiting.delete(id);
        this.linking.get(id)?.reject(err);
        this.linking.delete(id);
      }
      this.sentTo.delete(worker);
    };
    worker.on('error', failSent);
    worker.on('exit', (code) => failSent(new Error(`The file writer thread stopped (exit code ${code}).`)));
    // An idle thread does not keep the process alive (it is ref'd only while files sent to it are unanswered).
    // After the listeners: adding a 'message' listener refs it again.
    worker.unref();
    this.worker = worker;
    return worker;
  }

  private stopWhenIdle(worker: Worker): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      if (this.worker === worker && this.sentTo.get(worker)?.size === 0 && this.batch.length === 0) void this.stop();
    }, this.idleStopMs).unref();
  }
}

/**
 * The compiled worker beside this module; under ts-jest the source folder holds only .ts files, so the compiled
 * copy in dist/ is used (`npm test` builds first).
 */
function writerThreadUrl(): URL {
  const beside = new URL('./writer-thread.js', import.meta.url);
  if (fs.existsSync(fileURLToPath(beside))) return beside;
  return new URL('../../dist/src/builds/writer-thread.js', import.meta.url);
}

/** The process's one writer, started at its first write. */
let shared: FileWriter | undefined;
export const fileWriter = (): FileWriter => (shared ??= new FileWriter());
