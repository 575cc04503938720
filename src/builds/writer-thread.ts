/**
 * The worker thread of `FileWriter` (writer.ts): hashes and writes the small files of uploads, so that the main
 * thread only parses the archive. Each file becomes a link to the repository's object of its content, or to a
 * file of the same build with that content, or else a new read-only file (O_EXCL: nothing is written through).
 * It also links a digest upload's stored files while that upload's archive streams in (`LinkJob`).
 */
import fs from 'node:fs';
import path from 'node:path';
import { parentPort } from 'node:worker_threads';
import { RepositoryObjects, sha256 } from './objects.js';
import { LINKED, NOT_LINKED, type LinkJob, type WriteJob, type WriteResult, type WriterAnswer, type WriterMessage } from './writer.js';

/** Per build: sha256 → the first file of the build written with that content. */
const writtenByBuild = new Map<number, Map<string, string>>();
/** The repositories' object stores, by folder. */
const objectStores = new Map<string, RepositoryObjects>();

function objectsIn(dir: string): RepositoryObjects {
  let objects = objectStores.get(dir);
  if (!objects) objectStores.set(dir, (objects = new RepositoryObjects(dir)));
  return objects;
}

function writeOne(job: WriteJob): WriteResult {
  const data = Buffer.from(job.data.buffer, job.data.byteOffset, job.data.byteLength);
  const hash = sha256(data);
  try {
    if (job.replace) fs.rmSync(job.target, { force: true });
    if (objectsIn(job.objectsDir).linkTo(hash, job.target)) return { id: job.id, hash, linked: true };
    let written = writtenByBuild.get(job.build);
    if (!written) writtenByBuild.set(job.build, (written = new Map()));
    const sameContent = written.get(hash);
    if (sameContent) {
      fs.linkSync(sameContent, job.target);
      return { id: job.id, hash, linked: true };
    }
    // 'wx': never replace or write through anything already there; 0444: builds are immutable.
    fs.writeFileSync(job.target, data, { flag: 'wx', mode: 0o444 });
    written.set(hash, job.target);
    return { id: job.id, hash, linked: false };
  } catch (err) {
    const { code, syscall, message } = err as NodeJS.ErrnoException;
    return { id: job.id, hash, error: { code, syscall, message } };
  }
}

/** Links the job's files from the first on, one per ticket of the shared counter, until none is left. */
function linkShare(job: LinkJob): void {
  const objects = objectsIn(job.objectsDir);
  const madeDirs = new Set<string>();
  for (let i = 0; Atomics.add(job.tickets, 0, 1) < job.files.length; i++) {
    const [hash, target] = job.files[i]!;
    try {
      const dir = path.dirname(target);
      if (!madeDirs.has(dir)) {
        fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
        madeDirs.add(dir);
      }
      job.outcome[i] = objects.linkIfStored(hash, target) ? LINKED : NOT_LINKED;
    } catch {
      job.outcome[i] = NOT_LINKED; // the upload's `finish` links it again and says what went wrong
    }
  }
}

parentPort!.on('message', (message: WriterMessage) => {
  if (message.kind === 'release') {
    writtenByBuild.delete(message.build);
    return;
  }
  if (message.kind === 'link') {
    linkShare(message.job);
    parentPort!.postMessage({ linked: message.job.id } satisfies WriterAnswer);
    return;
  }
  parentPort!.postMessage(message.jobs.map(writeOne) satisfies WriterAnswer);
});
