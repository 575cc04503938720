// Scale-out figures (issue 28): webhook-to-flip latency and upload throughput with 1 and with 3 server processes on
// one store, requests spread round robin over them as a load balancer would. The store is SQLite on one shared
// DATA_DIR, or PostgreSQL when DATABASE_URL is set (`bash test/engines/postgres.sh node bench/replicas.mjs`).
// GitHub is the local fake (bench/fake-github.mjs). Needs `npm run build` first.
//   REPLICAS=1,3 (default)   FLIPS=20   UPLOADS=60   CONCURRENCY=6
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import pg from 'pg';
import { BENCH_SLUG, benchServerEnv, labelWebhook, postUpload, tarHeader, uploadToken } from './bench-server.mjs';
import { startFakeGitHub } from './fake-github.mjs';
import { startServerProcess, stopServerProcess } from './server-process.mjs';

const REPLICAS = (process.env.REPLICAS ?? '1,3').split(',').map(Number);
const FLIPS = Number(process.env.FLIPS ?? 20);
const UPLOADS = Number(process.env.UPLOADS ?? 60);
const CONCURRENCY = Number(process.env.CONCURRENCY ?? 6);
const SECRET = crypto.randomBytes(32).toString('base64url');
const store = process.env.DATABASE_URL ? 'PostgreSQL' : 'SQLite (shared DATA_DIR)';

const newSha = (seed) => crypto.createHash('sha1').update(`${seed}-${Math.random()}`).digest('hex');
const sorted = (xs) => [...xs].sort((a, b) => a - b);
const percentile = (xs, p) => sorted(xs)[Math.min(xs.length - 1, Math.floor(xs.length * p))];
const ms = (start) => Number(process.hrtime.bigint() - start) / 1e6;

/** A build of 20 small HTML files: the per-upload work, not the bytes, is what replicas share. */
function smallBuild(seed) {
  const parts = [];
  for (let i = 0; i < 20; i++) {
    const body = Buffer.from(`<!doctype html><title>${seed} ${i}</title><p>${'x'.repeat(2000)}</p>`);
    parts.push(tarHeader(`page-${i}.html`, body.length), body, Buffer.alloc((512 - (body.length % 512)) % 512));
  }
  return zlib.gzipSync(Buffer.concat([...parts, Buffer.alloc(1024)]));
}

function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** A new, empty database on DATABASE_URL's server for one run (each run starts from an empty store). */
async function freshDatabase() {
  if (!process.env.DATABASE_URL) return {};
  const name = `bench_${crypto.randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: process.env.DATABASE_URL });
  await admin.connect();
  await admin.query(`create database ${name}`);
  await admin.end();
  const url = new URL(process.env.DATABASE_URL);
  url.pathname = `/${name}`;
  return { DATABASE_URL: url.toString() };
}

async function run(replicas) {
  const database = await freshDatabase();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-replicas-bench-'));
  const github = await startFakeGitHub({ labels: [] });
  const ports = [];
  for (let i = 0; i < replicas; i++) ports.push(await freePort());
  const dataDir = path.join(tmp, 'data');
  const children = [];
  try {
    for (const port of ports) {
      // The first replica's env stores the upload secret; every replica shares DATA_DIR (and DATABASE_URL if set).
      const env = children.length === 0 ? benchServerEnv({ dataDir, github, port, secret: SECRET, extra: database }) : { ...children[0].env, PORT: String(port) };
      const child = await startServerProcess(process.env.BENCH_LOG ? { ...env, LOG_LEVEL: process.env.BENCH_LOG } : env, port, { stdio: ['ignore', process.env.BENCH_LOG ? 'inherit' : 'ignore', 'inherit'] });
      children.push({ child, env });
    }
    const nextPort = (() => {
      let i = 0;
      return () => ports[i++ % ports.length];
    })();

    // Webhook → flip: a labeled/unlabeled delivery to the next replica, timed until the public folder moved.
    const pr = 4000;
    const sha = newSha('flip');
    github.addCommit(pr, sha);
    if ((await postUpload(nextPort(), `/create-build/${pr}/${sha}`, await uploadToken(SECRET, pr), smallBuild('flip'))) !== 202) throw new Error('the hidden upload was not answered 202');
    const publicDir = path.join(dataDir, 'builds', 'docs', String(pr));
    const flips = [];
    for (let i = 0; i < FLIPS; i++) {
      const action = i % 2 === 0 ? 'labeled' : 'unlabeled';
      github.setLabels(pr, action === 'labeled' ? ['safe for preview'] : []);
      const start = process.hrtime.bigint();
      const status = await labelWebhook(nextPort(), pr, action);
      if (status !== 200) throw new Error(`webhook answered ${status}`);
      while (fs.existsSync(publicDir) !== (action === 'labeled')) await new Promise((r) => setTimeout(r, 1));
      flips.push(ms(start));
    }

    // Upload throughput: UPLOADS builds of distinct PRs, CONCURRENCY at a time, spread over the replicas.
    const jobs = Array.from({ length: UPLOADS }, (_, i) => ({ pr: 5000 + i, sha: newSha(`up-${i}`) }));
    for (const { pr: n, sha: s } of jobs) github.addCommit(n, s);
    const archives = jobs.map((_, i) => smallBuild(`up-${i}`));
    const tokens = await Promise.all(jobs.map(({ pr: n }) => uploadToken(SECRET, n)));
    let next = 0;
    const start = process.hrtime.bigint();
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < jobs.length) {
          const i = next++;
          const status = await postUpload(nextPort(), `/create-build/${jobs[i].pr}/${jobs[i].sha}`, tokens[i], archives[i]);
          if (status !== 202) throw new Error(`upload ${i} answered ${status}`);
        }
      }),
    );
    const seconds = ms(start) / 1000;
    console.log(
      `${store}, ${replicas} replica(s): webhook → flip median ${percentile(flips, 0.5).toFixed(1)} ms, p95 ${percentile(flips, 0.95).toFixed(1)} ms over ${flips.length}; ` +
        `uploads ${(UPLOADS / seconds).toFixed(1)}/s (${UPLOADS} builds of 20 files, ${CONCURRENCY} at a time, ${seconds.toFixed(2)} s)`,
    );
  } finally {
    for (const { child } of children) await stopServerProcess(child);
    await github.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

console.log(`bench/replicas.mjs on ${os.cpus().length} cores, Node ${process.version}, ${store}`);
for (const n of REPLICAS) await run(n);
