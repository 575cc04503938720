// Where figure 1's time goes: the extractor alone (extractTarGz, in this process) against `tar -xzf` of the same
// archive, without the server's database, GitHub or answer. SOURCE=file reads the archive from its file;
// SOURCE=http sends it over a loopback HTTP connection from this process to a server in this process.
// Each run has a store of its own, so every file is written, none linked (as figure 1's pairs).
// Usage: npm run build && node bench/extract-only.mjs   (RUNS=9 counted after 3 warm-up runs; SOURCE=file|http;
// TMPDIR=<folder> chooses the filesystem)
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { extractTarGz } from '../dist/src/builds/extract.js';
import { RepositoryObjects } from '../dist/src/builds/objects.js';
import { makeReferenceBuild, packReferenceBuild } from './reference-build.mjs';

const RUNS = Number(process.env.RUNS ?? 9);
const WARM_UPS = 3;
const SOURCE = process.env.SOURCE ?? 'file';
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-extract-'));
const limits = { maxUploadBytes: 2 ** 40, maxBuildBytes: 2 ** 40, maxBuildFiles: 1_000_000 };
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const seconds = (start) => Number(process.hrtime.bigint() - start) / 1e9;

/** The request handed to `extract` by a server in this process, the archive sent by a client in this process. */
async function overHttp(archive, extract) {
  let extracted;
  const server = http.createServer((req, res) => {
    extracted = extract(req);
    extracted.then(() => res.end(), () => res.end());
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  await new Promise((resolve, reject) => {
    const headers = { 'content-length': fs.statSync(archive).size };
    const req = http.request({ host: '127.0.0.1', port: server.address().port, method: 'POST', headers }, (res) => {
      res.resume();
      res.on('end', resolve);
    });
    req.on('error', reject);
    fs.createReadStream(archive).pipe(req);
  });
  server.close();
  await extracted;
}

async function extractOnce(archive, dir) {
  fs.mkdirSync(dir);
  const target = { dir, limits, objects: new RepositoryObjects(`${dir}.objects`) };
  const start = process.hrtime.bigint();
  if (SOURCE === 'http') await overHttp(archive, (req) => extractTarGz(req, target));
  else await extractTarGz(fs.createReadStream(archive), target);
  return seconds(start);
}

const archive = path.join(tmp, 'reference.tgz');
makeReferenceBuild(path.join(tmp, 'reference'), { seed: `extract-only-${process.pid}-` });
packReferenceBuild(path.join(tmp, 'reference'), archive);
fs.rmSync(path.join(tmp, 'reference'), { recursive: true });
console.log(`the reference build, read from its ${SOURCE === 'http' ? 'file over loopback HTTP' : 'file'}; ${os.cpus().length} CPUs; ${tmp}`);

const ours = [];
const tars = [];
for (let i = 0; i < WARM_UPS + RUNS; i++) {
  const tarDir = path.join(tmp, `tar-${i}`);
  fs.mkdirSync(tarDir);
  execFileSync('sync');
  const start = process.hrtime.bigint();
  execFileSync('tar', ['-xzf', archive, '-C', tarDir]);
  const tarSeconds = seconds(start);
  execFileSync('sync');
  const ourSeconds = await extractOnce(archive, path.join(tmp, `ours-${i}`));
  for (const dir of [tarDir, path.join(tmp, `ours-${i}`), path.join(tmp, `ours-${i}.objects`)]) fs.rmSync(dir, { recursive: true, force: true });
  const counted = i >= WARM_UPS;
  if (counted) {
    tars.push(tarSeconds);
    ours.push(ourSeconds);
  }
  console.log(`${counted ? `run ${i - WARM_UPS + 1}` : `warm-up ${i + 1}`}: tar -xzf ${tarSeconds.toFixed(3)} s, extractTarGz ${ourSeconds.toFixed(3)} s (${(ourSeconds / tarSeconds).toFixed(2)}x)`);
}
const ratios = ours.map((s, i) => s / tars[i]);
console.log(`extractor alone (${SOURCE}): median ${median(ours).toFixed(3)} s vs tar -xzf ${median(tars).toFixed(3)} s; median ratio ${median(ratios).toFixed(2)}x`);
fs.rmSync(tmp, { recursive: true, force: true });
process.exit(0);
