/**
 * The worker thread of `FileWriter` (writer.ts): hashes and writes the small files of uploads, so that the main
 * thread only parses the archive. Each file becomes a link to the repository's object of its content, or to a
 * file of the same build with that content, or else a new read-only file (O_EXCL: nothing is written through).
 */
import fs from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { RepositoryObjects, sha256 } from './objects.js';
import type { WriteJob, WriteResult, WriterMessage } from './writer.js';

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

parentPort!.on('message', (message: WriterMessage) => {
  if (message.kind === 'release') {
    writtenByBuild.delete(message.build);
    return;
  }
  parentPort!.postMessage(message.jobs.map(writeOne));
});
