// How long `keys rotate` takes with the local key service: ACCOUNTS accounts, one secret each.
// Usage: npm run build && node bench/rotate.mjs   (ACCOUNTS=1000 by default)
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openCore } from '../dist/src/app.js';
import { loadConfig } from '../dist/src/config.js';
import { rotateKeys } from '../dist/src/secrets/rotate.js';

const ACCOUNTS = Number(process.env.ACCOUNTS ?? 1000);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-rotate-'));
const core = await openCore(loadConfig({ DATA_DIR: tmp }));
for (let i = 0; i < ACCOUNTS; i++) {
  const repo = await core.registry.ensureRepository(`org-${i}/site`);
  await core.secrets.set(repo.accountId, repo.id, 'upload-key', Buffer.from(`secret-of-org-${i}-0123456789abcdef0123`));
}
const start = process.hrtime.bigint();
const result = await rotateKeys(core.db, core.keys);
const ms = Number(process.hrtime.bigint() - start) / 1e6;
console.log(`keys rotate (local): ${result.rewrapped} account keys re-wrapped in ${ms.toFixed(0)} ms (${((ms * 1000) / result.rewrapped).toFixed(0)} µs each)`);
await core.db.close();
fs.rmSync(tmp, { recursive: true, force: true });
