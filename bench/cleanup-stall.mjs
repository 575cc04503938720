// How long a cleanup pass holds the event loop (every request waits meanwhile) with OBJECTS objects stored in one
// repository (200,000 by default), all still linked, so none is removed: the longest gap between two 1 ms timer
// ticks during the pass, and the pass's time; three passes. Usage: npm run build && node bench/cleanup-stall.mjs
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { createPreviews, openCore } from '../dist/src/app.js';
import { loadConfig } from '../dist/src/config.js';
import { createMetrics } from '../dist/src/metrics.js';

const OBJECTS = Number(process.env.OBJECTS ?? 200_000);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-cleanup-'));
const core = await openCore(loadConfig({ DATA_DIR: tmp }));
core.store.init();
const repo = await core.registry.ensureRepository('bench-org/docs');
const objectsDir = core.store.objects.forRepository(repo.id).dir;
const hashes = Array.from({ length: OBJECTS }, () => crypto.randomBytes(32).toString('hex'));
// Rows recorded long ago (a cleanup leaves the last minute's), and each object a hard link to a file standing in
// for a build's (a new one every 60,000 links: ext4's limit is 65,000), so each is still referenced.
const insert = core.db.sqliteClient().prepare('INSERT INTO objects (repository_id, sha256, size, created_at) VALUES (?, ?, 1, 0)');
core.db.sqliteClient().transaction(() => {
  for (const hash of hashes) insert.run(repo.id, hash);
})();
let build = '';
for (const [i, hash] of hashes.entries()) {
  if (i % 60_000 === 0) fs.writeFileSync((build = path.join(tmp, `build-file-${i}`)), 'x');
  fs.mkdirSync(path.join(objectsDir, hash.slice(0, 2)), { recursive: true });
  fs.linkSync(build, path.join(objectsDir, hash.slice(0, 2), hash));
}

const { previews } = createPreviews(core, createMetrics(), pino({ level: 'warn' }));
const passes = [];
for (let pass = 0; pass < 3; pass++) {
  let last = performance.now();
  let longest = 0;
  const ticks = setInterval(() => {
    const now = performance.now();
    longest = Math.max(longest, now - last);
    last = now;
  }, 1);
  const start = performance.now();
  const { freed } = await previews.cleanup();
  const seconds = (performance.now() - start) / 1000;
  await new Promise((resolve) => setTimeout(resolve, 10)); // the tick after the pass's last stretch
  clearInterval(ticks);
  if (freed.objects !== 0) throw new Error(`the pass removed ${freed.objects} objects`);
  passes.push(`${seconds.toFixed(2)} s, longest stall ${longest.toFixed(0)} ms`);
}
console.log(`cleanup over ${OBJECTS} stored objects: ${passes.join('; ')}`);
await core.db.close();
fs.rmSync(tmp, { recursive: true, force: true });
