// Upload-to-live time of the reference build against `tar -xzf` of the same archive.
// Runs the real server (node dist/src/main.js) with GitHub answered by a local fake (GHE_HOST), no nock.
// Usage: npm run bench   (builds first)
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { SignJWT } from 'jose';
import { startFakeGitHub } from './fake-github.mjs';
import { makeReferenceBuild, packReferenceBuild } from './reference-build.mjs';

const PAIRS = Number(process.env.PAIRS ?? 5);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-bench-'));
const SECRET = crypto.randomBytes(32).toString('base64url');
const SLUG = 'bench-org/docs';

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
  };
  execFileSync('node', ['bin/preview-gate.js', 'secret', 'set', SLUG, 'upload-key'], { env, input: SECRET });
  const server = spawn('node', ['dist/src/main.js'], { env, stdio: ['ignore', 'inherit', 'inherit'] });
  for (let i = 0; i < 100; i++) {
    try {
      if ((await fetch(`http://127.0.0.1:${port}/health`)).ok) break;
    } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }

  const ratios = [];
  const uploads = [];
  const tars = [];
  for (let i = 0; i < PAIRS; i++) {
    const dest = path.join(tmp, `tar-${i}`);
    fs.mkdirSync(dest);
    let start = process.hrtime.bigint();
    execFileSync('tar', ['-xzf', archive, '-C', dest]);
    const tarSeconds = seconds(start);
    fs.rmSync(dest, { recursive: true, force: true });

    const pr = i + 1;
    const sha = crypto.createHash('sha1').update(`bench-${i}-${Date.now()}`).digest('hex');
    github.addCommit(pr, sha);
    const token = await new SignJWT({ slug: SLUG, 'pull-request': pr })
      .setProtectedHeader({ alg: 'HS256' })
      .setIssuer('Travis CI, GmbH')
      .setExpirationTime('10m')
      .sign(Buffer.from(SECRET));
    start = process.hrtime.bigint();
    const status = await post(port, `/create-build/${pr}/${sha}`, token, archive);
    const uploadSeconds = seconds(start);
    if (status !== 201) throw new Error(`upload answered ${status}`);
    tars.push(tarSeconds);
    uploads.push(uploadSeconds);
    ratios.push(uploadSeconds / tarSeconds);
    console.log(`pair ${i + 1}: tar -xzf ${tarSeconds.toFixed(3)} s, upload-to-live ${uploadSeconds.toFixed(3)} s, ratio ${(uploadSeconds / tarSeconds).toFixed(2)}x`);
  }
  console.log(`upload-to-live: median ${median(uploads).toFixed(3)} s vs tar -xzf median ${median(tars).toFixed(3)} s; median ratio ${median(ratios).toFixed(2)}x (goal <= 1.3x)`);
  const exited = new Promise((r) => server.once('exit', r));
  server.kill('SIGTERM');
  await exited;
  await github.close();
  fs.rmSync(tmp, { recursive: true, force: true });
}

function post(port, urlPath, token, file) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, path: urlPath, method: 'POST', headers: { authorization: `Token ${token}`, 'content-type': 'application/gzip', 'content-length': fs.statSync(file).size } },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      },
    );
    req.on('error', reject);
    fs.createReadStream(file).pipe(req);
  });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
