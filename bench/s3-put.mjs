// Put throughput into S3 (issue 29): the reference build's 3,000 files (~75 MB: a third 37 KB incompressible
// binaries, the rest ~20 KB HTML) put as objects the way the S3 store writes them (streamed from their files,
// If-None-Match: *, the sha256 signed as payload hash), CONCURRENCY puts at a time; each level into a fresh
// repository, so every put is new. Then the same files again into the last repository: every answer a 412,
// "already stored" (what a re-upload of unchanged content costs). Objects/s and MB/s for each.
// Usage: npm run build && bash test/engines/rgw.sh node bench/s3-put.mjs      (CONCURRENCY=4,16,64 to compare)
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadConfig } from '../dist/src/config.js';
import { S3Objects } from '../dist/src/storage/s3-objects.js';
import { makeReferenceBuild } from './reference-build.mjs';

const levels = (process.env.CONCURRENCY ?? '16').split(',').map(Number);
const config = loadConfig({ ...process.env, DATA_DIR: os.tmpdir() });
if (!config.s3) throw new Error('set S3_BUCKET (and S3_ENDPOINT, credentials): bash test/engines/rgw.sh node bench/s3-put.mjs');
const bucket = S3Objects.fromSettings(config.s3);

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-s3-bench-'));
try {
  makeReferenceBuild(dir, { seed: String(Date.now()) });
  const files = fs
    .readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => {
      const file = path.join(entry.parentPath, entry.name);
      const content = fs.readFileSync(file);
      return { file, size: content.length, sha256: crypto.createHash('sha256').update(content).digest('hex') };
    });
  const bytes = files.reduce((n, f) => n + f.size, 0);
  console.log(`${files.length} files, ${(bytes / 1e6).toFixed(1)} MB, into ${config.s3.endpoint ?? 'AWS S3'} (${config.s3.bucket})`);

  let repositoryId = 0;
  for (const concurrency of levels) {
    repositoryId = 1_000_000_000 + crypto.randomInt(1_000_000_000);
    await measure(`first put, ${concurrency} at a time`, concurrency, repositoryId, 'stored');
  }
  await measure(`again (already stored), ${levels.at(-1)} at a time`, levels.at(-1), repositoryId, 'already stored');

  async function measure(label, concurrency, repositoryId, expected) {
    let next = 0;
    const start = performance.now();
    const worker = async () => {
      while (next < files.length) {
        const { file, size, sha256 } = files[next++];
        const outcome = await bucket.putOnce(repositoryId, sha256, fs.createReadStream(file), size);
        if (outcome !== expected && !(expected === 'stored' && outcome === 'already stored')) throw new Error(`${file}: ${outcome}`);
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
    const seconds = (performance.now() - start) / 1000;
    console.log(`${label}: ${seconds.toFixed(2)} s, ${(files.length / seconds).toFixed(0)} objects/s, ${(bytes / 1e6 / seconds).toFixed(1)} MB/s`);
  }
} finally {
  bucket.close();
  fs.rmSync(dir, { recursive: true, force: true });
}
