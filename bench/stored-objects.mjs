// Whether an upload slows down as the deployment stores more: one-page uploads (GitHub answering at once) to an
// account whose repository already has OBJECTS object rows (300,000 by default), median of 7 after one uncounted.
// The rows are written straight into the database while the server is stopped (their files need not exist: no
// cleanup runs meanwhile). Usage: npm run build && node bench/stored-objects.mjs   (OBJECTS=1000000 ...)
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { benchServerEnv, postUpload, uploadToken } from './bench-server.mjs';
import { startFakeGitHub } from './fake-github.mjs';
import { startServerProcess, stopServerProcess } from './server-process.mjs';

const OBJECTS = Number(process.env.OBJECTS ?? 300_000);
const SECRET = crypto.randomBytes(32).toString('base64url');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-objects-'));
const github = await startFakeGitHub();
const port = 20000 + Math.floor(Math.random() * 20000);
const env = benchServerEnv({ dataDir: path.join(tmp, 'data'), github, port, secret: SECRET });
fs.mkdirSync(path.join(tmp, 'page'));
fs.writeFileSync(path.join(tmp, 'page', 'index.html'), '<h1>one page</h1>');
const page = path.join(tmp, 'page.tgz');
execFileSync('tar', ['-czf', page, '-C', path.join(tmp, 'page'), '.']);

async function uploadOnePage(pr) {
  const sha = crypto.randomBytes(20).toString('hex');
  github.addCommit(pr, sha);
  const jwt = await uploadToken(SECRET, pr);
  const start = performance.now();
  const status = await postUpload(port, `/create-build/${pr}/${sha}`, jwt, page);
  if (status !== 201) throw new Error(`the upload answered ${status}`);
  return performance.now() - start;
}

// A first upload makes the account and repository rows; then the objects are added with the server stopped.
let server = await startServerProcess(env, port);
await uploadOnePage(1);
await stopServerProcess(server);
const db = new Database(path.join(env.DATA_DIR, 'preview-gate.sqlite'));
const repositoryId = db.prepare('SELECT id FROM repositories').get().id;
const insert = db.prepare('INSERT INTO objects (repository_id, sha256, size) VALUES (?, ?, 1000)');
db.transaction(() => {
  for (let i = 0; i < OBJECTS; i++) insert.run(repositoryId, crypto.randomBytes(32).toString('hex'));
})();
db.pragma('wal_checkpoint(TRUNCATE)');
db.close();

server = await startServerProcess(env, port);
await uploadOnePage(2); // not counted: the first upload of a process loads code
const times = [];
for (let pr = 3; pr < 10; pr++) times.push(await uploadOnePage(pr));
times.sort((a, b) => a - b);
console.log(`one-page upload with ${OBJECTS} objects stored: median ${times[3].toFixed(1)} ms over 7 (${times.map((t) => t.toFixed(0)).join(', ')} ms)`);
await stopServerProcess(server);
await github.close?.();
fs.rmSync(tmp, { recursive: true, force: true });
