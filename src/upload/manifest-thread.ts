/**
 * The worker thread of `ManifestReader` (manifest-reader.ts): inflates, parses and checks a digest upload's
 * manifest, and finds which of its contents the repository lacks. All of this grows with the manifest (up to
 * 16 MiB of JSON, 50,000 files), so none of it runs on the main thread, which keeps answering webhooks.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { parentPort } from 'node:worker_threads';
import { RepositoryObjects, sha256 } from '../builds/objects.js';
import { HttpError } from '../errors.js';
import { ManifestList } from './manifest-list.js';
import { parseManifest } from './manifest-parse.js';
import type { ManifestJob, ManifestJobAnswer } from './manifest-reader.js';

function read(job: ManifestJob): ManifestJobAnswer {
  let body = Buffer.from(job.body.buffer, job.body.byteOffset, job.body.byteLength);
  if (job.gzip) {
    try {
      body = zlib.gunzipSync(body, { maxOutputLength: job.maxBytes });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') return { id: job.id, status: 413, error: `The manifest is larger than ${job.maxBytes} bytes.` };
      return { id: job.id, status: 400, error: 'The manifest says Content-Encoding: gzip but is not valid gzip data.' };
    }
  }
  const files = parseManifest(body, job.limits);
  const objects = job.storedHashes ? new Set(job.storedHashes) : new RepositoryObjects(job.objectsDir);
  const missing = [...new Set([...files.values()].map((f) => f.sha256))].filter((hash) => !objects.has(hash));
  // The parsed list goes to a file of its own (a row of megabytes cost the main thread a second to write).
  fs.mkdirSync(job.listsDir, { recursive: true, mode: 0o700 });
  // Binary, paths sorted: the main thread looks paths up in it as it is, with nothing to parse.
  const list = `${crypto.randomUUID()}.list`;
  fs.writeFileSync(path.join(job.listsDir, list), ManifestList.encode(files, missing), { flag: 'wx', mode: 0o600 });
  return { id: job.id, digest: sha256(body), list, allStored: missing.length === 0, answer: new TextEncoder().encode(JSON.stringify({ missing })) };
}

parentPort!.on('message', (job: ManifestJob) => {
  let answer: ManifestJobAnswer;
  try {
    answer = read(job);
  } catch (err) {
    answer = err instanceof HttpError ? { id: job.id, status: err.status, error: err.message } : { id: job.id, status: 500, error: (err as Error).message };
  }
  // The answer's bytes are moved to the main thread, not copied (TextEncoder's array owns its buffer).
  parentPort!.postMessage(answer, 'answer' in answer ? [answer.answer.buffer as ArrayBuffer] : []);
});
