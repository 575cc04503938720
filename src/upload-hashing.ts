import crypto from 'node:crypto';
import fs from 'node:fs';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';

/**
 * The sha256 of every file of a build, for the digest upload's manifest. Reading and hashing 3,000 files
 * (79 MB) takes one core ~150 ms, most of a digest upload's time on the client: a second thread takes files
 * from the same list (a shared counter hands out the next one), so both cores hash.
 */
export interface Hashed {
  sha256: string;
  size: number;
}

/**
 * Starts the helper thread at once, so that it boots (~30 ms) while the caller walks the folder; `hash` then
 * hashes on both threads. A build of a few files is hashed before the helper has booted; it is stopped then.
 */
export interface Hashing {
  /** Settles once the helper thread has booted (for the tests: a run where both threads surely hash). */
  ready: Promise<void>;
  /** Every file's hash in the order given, and how many of them the helper thread hashed. */
  hash(files: string[]): Promise<{ hashed: Hashed[]; byHelper: number }>;
  /** Ends the helper thread when `hash` will not be called (the folder could not be walked). */
  stop(): Promise<void>;
}

export function startHashing(): Hashing {
  const helper = startHelper();
  return {
    ready: helper.ready,
    stop: async () => void (await helper.worker.terminate()),
    async hash(files) {
      const results = new Array<Hashed>(files.length);
      const next = new Int32Array(new SharedArrayBuffer(4));
      helper.worker.ref(); // awaited below: the process must not end meanwhile
      helper.worker.postMessage({ files, next });
      let mine = 0;
      try {
        hashShare(files, next, (i, hashed) => {
          results[i] = hashed;
          mine++;
        });
      } catch (err) {
        await helper.worker.terminate();
        throw err;
      }
      if (mine === files.length) {
        void helper.worker.terminate(); // it took none: not waited for
        return { hashed: results, byHelper: 0 };
      }
      const theirs = await helper.done;
      for (const [i, sha256, size] of theirs) results[i] = { sha256, size };
      return { hashed: results, byHelper: theirs.length };
    },
  };
}

/** Hashes `files[i]` for every `i` taken from the shared counter, until none is left. */
function hashShare(files: string[], next: Int32Array, done: (i: number, hashed: Hashed) => void): void {
  const buffer = Buffer.allocUnsafe(1024 * 1024);
  for (let i = Atomics.add(next, 0, 1); i < files.length; i = Atomics.add(next, 0, 1)) done(i, hashFile(files[i]!, buffer));
}

/** Read in 1 MiB chunks with synchronous reads: a CLI has nothing else to do meanwhile. */
function hashFile(file: string, buffer: Buffer): Hashed {
  const fd = fs.openSync(file, 'r');
  try {
    const { size } = fs.fstatSync(fd);
    const hash = crypto.createHash('sha256');
    let read = 0;
    for (let n = 0; read < size && (n = fs.readSync(fd, buffer, 0, buffer.length, null)) > 0; read += n) hash.update(buffer.subarray(0, n));
    return { sha256: hash.digest('hex'), size: read };
  } finally {
    fs.closeSync(fd);
  }
}

/** This module, compiled (under the tests, this file is the TypeScript source: the thread runs dist's copy). */
function helperUrl(): URL {
  if (import.meta.url.endsWith('.js')) return new URL(import.meta.url);
  return new URL('../dist/src/upload-hashing.js', import.meta.url);
}

const HELPER_MARK = 'preview-gate upload hashing';
type HelperResult = [index: number, sha256: string, size: number][];

function startHelper() {
  // execArgv: none of the CLI's flags (e.g. a test runner's) apply to this thread. Unref'd until `hash` waits
  // for it: a CLI that fails before hashing does not wait for the thread.
  const worker = new Worker(helperUrl(), { execArgv: [], workerData: HELPER_MARK });
  worker.unref();
  const ready = new Promise<void>((resolve) => worker.once('online', () => resolve()));
  const done = new Promise<HelperResult>((resolve, reject) => {
    worker.once('message', (message: { hashed?: HelperResult; error?: string }) => (message.error ? reject(new Error(message.error)) : resolve(message.hashed!)));
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`the hashing thread stopped (exit code ${code}).`)));
  });
  done.catch(() => undefined); // awaited only by `hash`
  return { worker, ready, done };
}

if (!isMainThread && parentPort && workerData === HELPER_MARK) {
  const port = parentPort;
  port.once('message', ({ files, next }: { files: string[]; next: Int32Array }) => {
    const hashed: HelperResult = [];
    try {
      hashShare(files, next, (i, { sha256, size }) => hashed.push([i, sha256, size]));
      port.postMessage({ hashed });
    } catch (err) {
      port.postMessage({ error: (err as Error).message });
    }
  });
}
