// Where the server's time goes during uploads of the reference build: runs the server under --cpu-prof,
// uploads it RUNS times, stops the server and prints the functions with the most self time.
// Usage: npm run build && node bench/profile-upload.mjs   (RUNS=5 by default; the profile is kept in PROFILE_DIR;
// FRESH=1: each upload has contents of its own, as figure 1's, instead of the same archive, which after the first is all links)
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { benchServerEnv, postUpload, uploadToken } from './bench-server.mjs';
import { startFakeGitHub } from './fake-github.mjs';
import { startServerProcess, stopServerProcess } from './server-process.mjs';
import { makeReferenceBuild, packReferenceBuild } from './reference-build.mjs';

const RUNS = Number(process.env.RUNS ?? 5);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-profile-'));
const profileDir = process.env.PROFILE_DIR ?? path.join(tmp, 'profile');
const SECRET = crypto.randomBytes(32).toString('base64url');

const archive = path.join(tmp, 'reference.tgz');
makeReferenceBuild(path.join(tmp, 'reference'));
packReferenceBuild(path.join(tmp, 'reference'), archive);
const github = await startFakeGitHub();
const port = 20000 + Math.floor(Math.random() * 20000);
const env = benchServerEnv({ dataDir: path.join(tmp, 'data'), github, port, secret: SECRET });
const server = await startServerProcess(env, port, { nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${profileDir}`], stdio: 'inherit' });
for (let i = 0; i < RUNS; i++) {
  if (process.env.FRESH && i > 0) {
    makeReferenceBuild(path.join(tmp, 'reference'), { seed: `fresh-${i}-` });
    packReferenceBuild(path.join(tmp, 'reference'), archive);
  }
  const sha = crypto.randomBytes(20).toString('hex');
  github.addCommit(i + 1, sha);
  const jwt = await uploadToken(SECRET, i + 1);
  const start = process.hrtime.bigint();
  const status = await postUpload(port, `/create-build/${i + 1}/${sha}`, jwt, archive);
  console.log(`upload ${i + 1}: ${status} in ${(Number(process.hrtime.bigint() - start) / 1e6).toFixed(0)} ms`);
}
await stopServerProcess(server);
await github.close?.();
// The data and archives (hundreds of MB) go; the profile stays where it was said to be.
for (const entry of fs.readdirSync(tmp)) if (path.join(tmp, entry) !== profileDir) fs.rmSync(path.join(tmp, entry), { recursive: true, force: true });

const file = fs.readdirSync(profileDir).find((f) => f.endsWith('.cpuprofile'));
const profile = JSON.parse(fs.readFileSync(path.join(profileDir, file), 'utf8'));
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const self = new Map();
const dt = profile.timeDeltas;
profile.samples.forEach((id, i) => {
  const { functionName, url, lineNumber } = byId.get(id).callFrame;
  const key = `${functionName || '(anonymous)'} ${url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\/dist\//, 'dist/')}:${lineNumber + 1}`;
  self.set(key, (self.get(key) ?? 0) + (dt[i] ?? 0));
});
const total = [...self.values()].reduce((a, b) => a + b, 0);
console.log(`profile ${path.join(profileDir, file)}: ${(total / 1000).toFixed(0)} ms sampled`);
for (const [key, us] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 25)) {
  console.log(`${(us / 1000).toFixed(0).padStart(7)} ms ${((100 * us) / total).toFixed(1).padStart(5)}%  ${key}`);
}
process.exit(0);
