// The four figures of preview-gate's performance goals, against the real server (node dist/src/main.js)
// with GitHub answered by a local fake server through GHE_HOST (no nock: the server runs unmodified):
//   1. upload-to-live of the reference build vs `tar -xzf` of the same archive (goal <= 1.3x)
//   2. peak RSS of the server while it accepts a 1 GB upload streamed from a generator (goal <= 150 MB)
//   3. visibility flip (label webhook sent → folder renamed; a grant includes GitHub's confirming read) for a PR of 50 builds vs 1 (goal <= 20 ms, flat)
//   4. 16 concurrent uploads of distinct SHAs: aggregate throughput vs one stream (goal >= 1.5x, no errors)
// Usage: npm run bench   (builds first; PAIRS=5 sets the pairs of figure 1)
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { SignJWT } from 'jose';
import { Header } from 'tar';
import zlib from 'node:zlib';
import { Readable } from 'node:stream';
import { startFakeGitHub } from './fake-github.mjs';
import { startServerProcess, stopServerProcess } from './server-process.mjs';
import { makeReferenceBuild, packReferenceBuild } from './reference-build.mjs';

const PAIRS = Number(process.env.PAIRS ?? 5);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-bench-'));
const SECRET = crypto.randomBytes(32).toString('base64url');
const SLUG = 'bench-org/docs';

const newSha = (seed) => crypto.createHash('sha1').update(`${seed}-${Date.now()}-${Math.random()}`).digest('hex');
const token = (pr) =>
  new SignJWT({ slug: SLUG, 'pull-request': pr }).setProtectedHeader({ alg: 'HS256' }).setIssuer('Travis CI, GmbH').setExpirationTime('10m').sign(Buffer.from(SECRET));
const small = zlib.gzipSync(Buffer.concat([tarHeader('index.html', 5), Buffer.from('hello'), Buffer.alloc(507), Buffer.alloc(1024)]));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const seconds = (start) => Number(process.hrtime.bigint() - start) / 1e9;

async function main() {
  const buildDir = path.join(tmp, 'reference');
  const archive = path.join(tmp, 'reference.tgz');
  const raw = makeReferenceBuild(buildDir);
  const gz = packReferenceBuild(buildDir, archive);
  console.log(`machine: ${os.cpus()[0]?.model} x${os.cpus().length}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, node ${process.version}, ${os.platform()} ${os.release()}`);
  console.log(`reference build: 3000 files, ${(raw / 1e6).toFixed(1)} MB raw, ${(gz / 1e6).toFixed(1)} MB gzipped`);

  const github = await startFakeGitHub();
  const port = 20000 + Math.floor(Math.random() * 20000);
  const privateKey = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs1', format: 'pem' });
  const env = {
    ...process.env,
    DATA_DIR: path.join(tmp, 'data'),
    PORT: String(port),
    HOST: '127.0.0.1',
    APP_ID: '1',
    PRIVATE_KEY: String(privateKey),
    WEBHOOK_SECRET: 'bench',
    GHE_HOST: github.host,
    GHE_PROTOCOL: 'http',
    LOG_LEVEL: 'warn',
    MAX_UPLOAD_BYTES: String(1200 * 1024 * 1024),
    MAX_BUILD_BYTES: String(1200 * 1024 * 1024),
    MAX_PR_BUILDS: '200',
  };
  execFileSync('node', ['bin/preview-gate.js', 'secret', 'set', SLUG, 'upload-key'], { env, input: SECRET });
  let server = await startServerProcess(env, port);

  // 2. Peak RSS during a 1 GB upload generated on the fly (stored gzip, 100 files of 10 MB).
  // First, on a fresh server, so that the peak is this upload's.
  const baseline = peakRss(server.pid);
  const bigSha = newSha('big');
  github.addCommit(900, bigSha);
  const t0 = process.hrtime.bigint();
  const bigStatus = await post(port, `/create-build/900/${bigSha}`, await token(900), generatedUpload(100, 10 * 1024 * 1024));
  console.log(`2. 1 GB upload answered ${bigStatus} in ${seconds(t0).toFixed(1)} s; server peak RSS ${(peakRss(server.pid) / 1024).toFixed(0)} MB (before it: ${(baseline / 1024).toFixed(0)} MB; goal <= 150 MB)`);

  // A fresh server for the other figures: the 1 GB build's writeback and its queued GitHub feedback are
  // figure 2's, not theirs.
  await stopServerProcess(server);
  execFileSync('sync');
  server = await startServerProcess(env, port);
  // One upload first, not counted in figure 1: the first request of a process pays for loading and compiling code.
  const warmSha = newSha('warm-up');
  github.addCommit(899, warmSha);
  execFileSync('sync');
  const tWarm = process.hrtime.bigint();
  await post(port, `/create-build/899/${warmSha}`, await token(899), archive);
  console.log(`first upload after a start (not counted below): ${seconds(tWarm).toFixed(3)} s`);

  const ratios = [];
  const uploads = [];
  const tars = [];
  for (let i = 0; i < PAIRS; i++) {
    const dest = path.join(tmp, `tar-${i}`);
    fs.mkdirSync(dest);
    // Each timed run starts with no dirty pages left by the one before (writeback would bill it to the next).
    execFileSync('sync');
    let start = process.hrtime.bigint();
    execFileSync('tar', ['-xzf', archive, '-C', dest]);
    const tarSeconds = seconds(start);
    fs.rmSync(dest, { recursive: true, force: true });

    const pr = i + 1;
    const sha = newSha(`bench-${i}`);
    github.addCommit(pr, sha);
    const jwt = await token(pr);
    execFileSync('sync');
    start = process.hrtime.bigint();
    const status = await post(port, `/create-build/${pr}/${sha}`, jwt, archive);
    const uploadSeconds = seconds(start);
    if (status !== 201) throw new Error(`upload answered ${status}`);
    tars.push(tarSeconds);
    uploads.push(uploadSeconds);
    ratios.push(uploadSeconds / tarSeconds);
    console.log(`pair ${i + 1}: tar -xzf ${tarSeconds.toFixed(3)} s, upload-to-live ${uploadSeconds.toFixed(3)} s, ratio ${(uploadSeconds / tarSeconds).toFixed(2)}x`);
  }
  console.log(`1. upload-to-live: median ${median(uploads).toFixed(3)} s vs tar -xzf median ${median(tars).toFixed(3)} s; median ratio ${median(ratios).toFixed(2)}x (goal <= 1.3x)`);

  // 3. Visibility flip for a PR holding 50 builds, and for one holding 1.
  for (const [pr, count] of [[901, 50], [902, 1]]) {
    github.setLabels(pr, []);
    for (let i = 0; i < count; i++) {
      const s = newSha(`flip-${pr}-${i}`);
      github.addCommit(pr, s);
      const st = await post(port, `/create-build/${pr}/${s}`, await token(pr), small);
      if (st !== 202) throw new Error(`hidden upload answered ${st}`);
    }
    const flips = [];
    const publicDir = path.join(tmp, 'data', 'builds', 'docs', String(pr));
    for (let i = 0; i < 10; i++) {
      for (const action of ['labeled', 'unlabeled']) {
        // GitHub changes first (the grant is read back from it), then the delivery; timed until the folder moved.
        github.setLabels(pr, action === 'labeled' ? ['safe for preview'] : []);
        const start = process.hrtime.bigint();
        const st = await webhook(port, pr, action);
        if (st !== 200) throw new Error(`webhook answered ${st}`);
        while (fs.existsSync(publicDir) !== (action === 'labeled')) await new Promise((r) => setImmediate(r));
        flips.push(seconds(start) * 1000);
      }
    }
    console.log(`3. visibility flip, PR with ${count} build(s): median ${median(flips).toFixed(1)} ms over ${flips.length} flips (goal <= 20 ms, flat in size)`);
  }

  // 4. 16 concurrent uploads of distinct SHAs vs one stream.
  const mid = path.join(tmp, 'mid.tgz');
  makeReferenceBuild(path.join(tmp, 'mid'), { files: 400 });
  const midBytes = packReferenceBuild(path.join(tmp, 'mid'), mid);
  const s1 = newSha('one');
  github.addCommit(950, s1);
  let start = process.hrtime.bigint();
  await post(port, `/create-build/950/${s1}`, await token(950), mid);
  const one = midBytes / seconds(start);
  const shas = Array.from({ length: 16 }, (_, i) => newSha(`many-${i}`));
  shas.forEach((s, i) => github.addCommit(960 + i, s));
  const tokens = await Promise.all(shas.map((_, i) => token(960 + i)));
  start = process.hrtime.bigint();
  const statuses = await Promise.all(shas.map((s, i) => post(port, `/create-build/${960 + i}/${s}`, tokens[i], mid)));
  const many = (16 * midBytes) / seconds(start);
  const errors = statuses.filter((st) => st !== 201).length;
  console.log(`4. throughput: one stream ${(one / 1e6).toFixed(1)} MB/s, 16 concurrent ${(many / 1e6).toFixed(1)} MB/s aggregate = ${(many / one).toFixed(2)}x, ${errors} errors (goal >= 1.5x, no errors)`);
  await stopServerProcess(server);
  await github.close();
  fs.rmSync(tmp, { recursive: true, force: true });
}

/** POSTs a file path, a Buffer or a Readable (chunked) as an upload; resolves with the status. */
function post(port, urlPath, jwt, body) {
  return new Promise((resolve, reject) => {
    const headers = { authorization: `Token ${jwt}`, 'content-type': 'application/gzip' };
    if (typeof body === 'string') headers['content-length'] = fs.statSync(body).size;
    if (Buffer.isBuffer(body)) headers['content-length'] = body.length;
    const req = http.request({ host: '127.0.0.1', port, path: urlPath, method: 'POST', headers }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', reject);
    if (Buffer.isBuffer(body)) req.end(body);
    else (typeof body === 'string' ? fs.createReadStream(body) : body).pipe(req);
  });
}

function tarHeader(name, size) {
  const h = new Header({ path: name, type: 'File', size, mode: 0o644, mtime: new Date(0) });
  h.encode();
  return h.block;
}

/** A gzip (level 0: the generator must not be the bottleneck) tar of `files` incompressible files, streamed. */
function generatedUpload(files, fileBytes) {
  async function* entries() {
    for (let i = 0; i < files; i++) {
      yield tarHeader(`part-${i}.bin`, fileBytes);
      const cipher = crypto.createCipheriv('aes-256-ctr', crypto.randomBytes(32), Buffer.alloc(16));
      for (let done = 0; done < fileBytes; done += 1024 * 1024) yield cipher.update(Buffer.alloc(Math.min(1024 * 1024, fileBytes - done)));
      if (fileBytes % 512) yield Buffer.alloc(512 - (fileBytes % 512));
    }
    yield Buffer.alloc(1024);
  }
  return Readable.from(entries()).pipe(zlib.createGzip({ level: 0 }));
}

/** VmHWM (peak resident set, kB) of a process. */
function peakRss(pid) {
  const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

function webhook(port, pr, action) {
  const label = { name: 'safe for preview' };
  const body = JSON.stringify({
    action,
    number: pr,
    label,
    pull_request: { number: pr, state: 'open', user: { id: 7, login: 'bench' }, labels: action === 'labeled' ? [label] : [], head: { sha: '0'.repeat(40) } },
    repository: { id: 1, name: 'docs', full_name: SLUG, owner: { login: 'bench-org' }, default_branch: 'main' },
    sender: { id: 8, login: 'maintainer' },
    installation: { id: 1 },
  });
  const signature = `sha256=${crypto.createHmac('sha256', 'bench').update(body).digest('hex')}`;
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, path: '/api/github/webhooks', method: 'POST', headers: { 'content-type': 'application/json', 'x-github-event': 'pull_request', 'x-github-delivery': crypto.randomUUID(), 'x-hub-signature-256': signature } },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
