// What the bench scripts share: the server's environment (GitHub answered by the local fake, one repository's
// upload secret stored), the CI token an upload carries, and the upload's POST.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { SignJWT } from 'jose';
import { Header } from 'tar';

export const BENCH_SLUG = 'bench-org/docs';

/**
 * The environment of a server keeping its data in `dataDir` and asking `github` (bench/fake-github.mjs), after
 * storing `secret` as BENCH_SLUG's upload secret there; `extra` adds or overrides variables.
 */
export function benchServerEnv({ dataDir, github, port, secret, extra = {} }) {
  const privateKey = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs1', format: 'pem' });
  const env = {
    ...process.env,
    DATA_DIR: dataDir,
    PORT: String(port),
    HOST: '127.0.0.1',
    APP_ID: '1',
    PRIVATE_KEY: String(privateKey),
    WEBHOOK_SECRET: 'bench',
    GHE_HOST: github.host,
    GHE_PROTOCOL: 'http',
    LOG_LEVEL: 'warn',
    // No periodic sweep: it would re-decide every PR of the bench in the middle of a timed run (and the fake
    // GitHub does not list installations).
    RECONCILE_INTERVAL_MINUTES: '0',
    ...extra,
  };
  execFileSync('node', ['bin/preview-gate.js', 'secret', 'set', BENCH_SLUG, 'upload-key'], { env, input: secret, stdio: ['pipe', 'ignore', 'ignore'] });
  return env;
}

/** The Travis-style token CI sends with an upload for `pr`, signed with the repository's upload secret. */
export function uploadToken(secret, pr, slug = BENCH_SLUG) {
  return new SignJWT({ slug, 'pull-request': pr }).setProtectedHeader({ alg: 'HS256' }).setIssuer('Travis CI, GmbH').setExpirationTime('10m').sign(Buffer.from(secret));
}

/** POSTs a file path, a Buffer or a Readable (chunked) as an upload; resolves with the status. */
export function postUpload(port, urlPath, jwt, body) {
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

/** One tar header block for a regular file. */
export function tarHeader(name, size) {
  const h = new Header({ path: name, type: 'File', size, mode: 0o644, mtime: new Date(0) });
  h.encode();
  return h.block;
}

/** A signed `labeled`/`unlabeled` delivery of the trusted label for `pr` of BENCH_SLUG; resolves with the status. */
export function labelWebhook(port, pr, action) {
  const label = { name: 'safe for preview' };
  const body = JSON.stringify({
    action,
    number: pr,
    label,
    pull_request: { number: pr, state: 'open', user: { id: 7, login: 'bench' }, labels: action === 'labeled' ? [label] : [], head: { sha: '0'.repeat(40) } },
    repository: { id: 1, name: 'docs', full_name: BENCH_SLUG, owner: { login: 'bench-org' }, default_branch: 'main' },
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
