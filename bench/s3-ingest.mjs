// Uploads on STORAGE=s3 beside the filesystem (issue 29), against the real server (node dist/src/main.js) with
// GitHub answered by the local fake: for each backend, a fresh server and data directory (on S3 a fresh bucket),
// one warm-up upload (not counted), then
//   a. first upload: the reference build (3,000 files, ~75 MB) with contents of its own, upload to answer;
//   b. digest upload: `preview-gate upload` (manifest, then only what changed) of the PR's next commit, 1% of the
//      files changed, as CI would run it.
// Medians of RUNS (default 3) each. On S3 the objects put per run are counted by the server's metric.
// Usage: npm run build && bash test/engines/rgw.sh node bench/s3-ingest.mjs   (without S3_BUCKET: filesystem only)
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { benchServerEnv, postUpload, uploadToken } from './bench-server.mjs';
import { startFakeGitHub } from './fake-github.mjs';
import { makeReferenceBuild, packReferenceBuild } from './reference-build.mjs';
import { startServerProcess, stopServerProcess } from './server-process.mjs';

const RUNS = Number(process.env.RUNS ?? 3);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-s3-ingest-'));
const SECRET = crypto.randomBytes(32).toString('base64url');
const newSha = (seed) => crypto.createHash('sha1').update(`${seed}-${Date.now()}-${Math.random()}`).digest('hex');
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const seconds = (start) => Number(process.hrtime.bigint() - start) / 1e9;

async function freshBucket() {
  const name = `preview-gate-bench-${crypto.randomBytes(5).toString('hex')}`;
  const client = new S3Client({ endpoint: process.env.S3_ENDPOINT, region: process.env.S3_REGION ?? 'us-east-1', forcePathStyle: true });
  await client.send(new CreateBucketCommand({ Bucket: name }));
  client.destroy();
  return name;
}

async function objectsPut(port) {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  return Number(/^preview_gate_s3_objects_put_total (\d+)/m.exec(text)?.[1] ?? 0);
}

async function measure(backend) {
  const github = await startFakeGitHub();
  const port = 20000 + Math.floor(Math.random() * 20000);
  const extra = { MAX_PR_BUILDS: '200', ...(backend === 's3' ? { STORAGE: 's3', S3_BUCKET: await freshBucket() } : { STORAGE: 'filesystem' }) };
  const env = benchServerEnv({ dataDir: path.join(tmp, backend, 'data'), github, port, secret: SECRET, extra });
  const server = await startServerProcess(env, port);
  try {
    const upload = async (pr, dir) => {
      const archive = path.join(tmp, `${backend}-${pr}.tgz`);
      packReferenceBuild(dir, archive);
      const sha = newSha(`${backend}-${pr}`);
      github.addCommit(pr, sha);
      const start = process.hrtime.bigint();
      const status = await postUpload(port, `/create-build/${pr}/${sha}`, await uploadToken(SECRET, pr), archive);
      if (status !== 201) throw new Error(`${backend}: upload answered ${status}`);
      return seconds(start);
    };
    makeReferenceBuild(path.join(tmp, 'warm-up'), { seed: `warm-${backend}-` });
    await upload(800, path.join(tmp, 'warm-up'));
    const first = [];
    const firstPuts = [];
    for (let i = 0; i < RUNS; i++) {
      const dir = path.join(tmp, `${backend}-first-${i}`);
      makeReferenceBuild(dir, { seed: `first-${backend}-${i}-` });
      const before = await objectsPut(port);
      first.push(await upload(810 + i, dir));
      firstPuts.push((await objectsPut(port)) - before);
    }
    // The PR's next commits: 1% of the files changed each time, sent by the CLI's digest protocol.
    const prDir = path.join(tmp, `${backend}-first-0`);
    const files = fs.readdirSync(prDir, { recursive: true }).filter((f) => fs.statSync(path.join(prDir, f)).isFile()).sort();
    const digest = [];
    const digestPuts = [];
    for (let round = 1; round <= RUNS; round++) {
      const n = Math.ceil(files.length / 100);
      for (let k = 0; k < n; k++) fs.appendFileSync(path.join(prDir, files[(round * n + k) % files.length]), `<!-- commit ${round} -->`);
      const sha = newSha(`${backend}-digest-${round}`);
      github.addCommit(810, sha);
      const before = await objectsPut(port);
      const start = process.hrtime.bigint();
      await promisify(execFile)('node', ['bin/preview-gate.js', 'upload', prDir, '--pr', '810', '--sha', sha, '--url', `http://127.0.0.1:${port}`], {
        env: { ...process.env, PREVIEW_GATE_TOKEN: await uploadToken(SECRET, 810) },
      });
      digest.push(seconds(start));
      digestPuts.push((await objectsPut(port)) - before);
    }
    const puts = (list) => (backend === 's3' ? `, ${median(list)} objects put` : '');
    console.log(`${backend}: first upload ${median(first).toFixed(2)} s${puts(firstPuts)}; digest upload (1% changed) ${median(digest).toFixed(2)} s${puts(digestPuts)} (medians of ${RUNS})`);
  } finally {
    await stopServerProcess(server);
    await github.close();
  }
}

try {
  console.log(`machine: ${os.cpus()[0]?.model} x${os.cpus().length}, node ${process.version}; reference build: 3000 files`);
  await measure('filesystem');
  if (process.env.S3_BUCKET) await measure('s3');
  else console.log('s3: skipped (S3_BUCKET unset: bash test/engines/rgw.sh node bench/s3-ingest.mjs)');
} finally {
  fs.rmSync(tmp, { recursive: true, force: true });
}
