/**
 * End to end with real nginx (Debian's package): uploads go through nginx to the real Node server, and
 * previews are fetched from nginx with the Host headers a browser would send.
 */
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import nock from 'nock';
import { commitsOf, githubFor, prRead } from './helpers/github.js';
import { request, rawGet, startNginx, type RunningNginx } from './helpers/nginx.js';
import { sha, startTestServer, WEBHOOK_SECRET, type TestServer } from './helpers/server.js';
import { PassThrough } from 'node:stream';
import { runCli } from '../src/cli.js';
import { tarball } from './helpers/tarballs.js';
import { installationToken, pullRequestEvent, settingsFile, signedWebhook } from './helpers/webhooks.js';

const MAIN_HOST = 'upload.test';
const LABEL = 'safe for preview';
let server: TestServer;
let nginx: RunningNginx;

beforeAll(async () => {
  nock.disableNetConnect();
  nock.enableNetConnect('127.0.0.1');
  server = await startTestServer({ MAX_UPLOAD_BYTES: String(256 * 1024), PUBLIC_URL: `http://${MAIN_HOST}` });
  fs.chmodSync(server.tmp, 0o755); // nginx workers must be able to walk down to the builds
  nginx = await startNginx(path.join(server.tmp, 'nginx'), {
    previewDomain: 'previews.test',
    buildsDir: server.config.buildsDir,
    upstream: new URL(server.url).host,
    publicHost: MAIN_HOST,
    maxUploadBytes: server.config.maxUploadBytes,
  });
});
afterAll(async () => {
  await nginx?.stop();
  await server?.close();
  nock.enableNetConnect();
});
afterEach(() => nock.cleanAll());

const binary = crypto.randomBytes(20_000);
const site = (marker: string) =>
  tarball({
    'index.html': `<h1>${marker}</h1>`,
    'img/logo.bin': binary,
    'docs/index.html': '<h1>docs folder</h1>',
    'empty-folder/readme.txt': 'no index here',
    '404.html': '<h1>custom not found</h1>',
  });

/** Uploads through nginx, GitHub saying the PR carries `labels`. */
async function uploadThroughNginx(pr: number, commit: string, marker: string, labels: string[] = []) {
  const fake = { number: pr, commits: [commit], labels };
  githubFor(fake);
  commitsOf(fake);
  nock('https://api.github.com').persist().post(/.*/).reply(201, { id: 1 }).get(/comments/).reply(200, []);
  const token = await server.token({ 'pull-request': pr });
  const res = await request(nginx.port, MAIN_HOST, `/create-build/${pr}/${commit}`, {
    method: 'POST',
    headers: { authorization: `Token ${token}`, 'content-type': 'application/gzip' },
    body: site(marker),
  });
  await server.previews.settled();
  return res;
}

const A = sha('a7');
const B = sha('b8');
const host = (pr: number, commit: string) => `pr${pr}-${commit.slice(0, 7)}--docs.previews.test`;

test('a trusted build is served byte for byte, with SPA fallback, its own 404 page and folder rules', async () => {
  const res = await uploadThroughNginx(1, A, 'trusted', [LABEL]);
  expect(res.status).toBe(201);
  // nginx here has no TLS, and PUBLIC_URL says http: so do the preview URLs.
  expect(JSON.parse(res.body.toString()).url).toBe(`http://${host(1, A)}/`);

  const index = await request(nginx.port, host(1, A), '/');
  expect(index.status).toBe(200);
  expect(index.body.toString()).toBe('<h1>trusted</h1>');
  expect(index.headers['cache-control']).toMatch(/immutable/);
  expect(index.headers['x-content-type-options']).toBe('nosniff');

  const logo = await request(nginx.port, host(1, A), '/img/logo.bin');
  expect(logo.status).toBe(200);
  expect(logo.body.equals(binary)).toBe(true);

  const route = await request(nginx.port, host(1, A), '/some/client/route');
  expect(route.status).toBe(200);
  expect(route.body.toString()).toBe('<h1>trusted</h1>');

  const missing = await request(nginx.port, host(1, A), '/missing.png');
  expect(missing.status).toBe(404);
  expect(missing.body.toString()).toBe('<h1>custom not found</h1>');

  expect((await request(nginx.port, host(1, A), '/docs/')).body.toString()).toBe('<h1>docs folder</h1>');
  expect((await request(nginx.port, host(1, A), '/empty-folder/')).status).toBe(403);
});

test('a hidden build is 404 on every URL until the label webhook, then the same URL serves', async () => {
  expect((await uploadThroughNginx(2, A, 'hidden until labelled')).status).toBe(202);
  for (const p of ['/', '/index.html', '/img/logo.bin', '/route']) {
    expect((await request(nginx.port, host(2, A), p)).status).toBe(404);
  }
  expect((await request(nginx.port, 'pr2--docs.previews.test', '/')).status).toBe(404);

  installationToken();
  settingsFile();
  prRead({ number: 2, labels: [LABEL], commits: [A] });
  const { body, headers } = signedWebhook('pull_request', pullRequestEvent('labeled', { number: 2, labels: [LABEL], head: A }, { label: { name: LABEL } }));
  const hook = await request(nginx.port, MAIN_HOST, '/api/github/webhooks', { method: 'POST', headers, body: Buffer.from(body) });
  expect(hook.status).toBe(200);
  await server.previews.settled();
  const now = await request(nginx.port, host(2, A), '/');
  expect(now.status).toBe(200);
  expect(now.body.toString()).toBe('<h1>hidden until labelled</h1>');
});

test('the latest alias follows a new commit and is not cached', async () => {
  expect((await uploadThroughNginx(3, A, 'first commit', [LABEL])).status).toBe(201);
  let latest = await request(nginx.port, 'pr3--docs.previews.test', '/');
  expect(latest.body.toString()).toBe('<h1>first commit</h1>');
  expect(latest.headers['cache-control']).toBe('no-cache');
  expect((await uploadThroughNginx(3, B, 'second commit', [LABEL])).status).toBe(201);
  latest = await request(nginx.port, 'pr3--docs.previews.test', '/');
  expect(latest.body.toString()).toBe('<h1>second commit</h1>');
  // The first commit keeps its own URL.
  expect((await request(nginx.port, host(3, A), '/')).body.toString()).toBe('<h1>first commit</h1>');
});

test('a symlink inside a build (planted on disk) is not followed', async () => {
  expect((await uploadThroughNginx(4, A, 'symlinks', [LABEL])).status).toBe(201);
  const secret = path.join(server.tmp, 'outside-secret.txt');
  fs.writeFileSync(secret, 'server secret');
  const build = path.join(server.config.buildsDir, 'docs', '4', A.slice(0, 7));
  fs.chmodSync(build, 0o755);
  fs.symlinkSync(secret, path.join(build, 'leak.txt'));
  const res = await request(nginx.port, host(4, A), '/leak.txt');
  expect([403, 404]).toContain(res.status);
  expect(res.body.toString()).not.toContain('server secret');
});

test('the main host serves no build file, refuses other methods with 405 and over-size bodies with 413', async () => {
  expect((await uploadThroughNginx(5, A, 'main host', [LABEL])).status).toBe(201);
  for (const p of ['/docs/5/' + A.slice(0, 7) + '/index.html', '/index.html', '/metrics']) {
    const res = await request(nginx.port, MAIN_HOST, p);
    expect(res.status).toBe(404);
    expect(res.body.toString()).not.toContain('main host');
  }
  // `/` is the dashboard's sign-in page, never a build.
  const root = await request(nginx.port, MAIN_HOST, '/');
  expect(root.body.toString()).toContain('Sign in with GitHub');
  expect(root.body.toString()).not.toContain('main host');
  expect((await request(nginx.port, MAIN_HOST, `/create-build/5/${B}`)).status).toBe(405);
  expect((await request(nginx.port, MAIN_HOST, `/create-build/5/${B}`, { method: 'PUT', body: Buffer.from('x') })).status).toBe(405);

  const tooBig = await request(nginx.port, MAIN_HOST, `/create-build/5/${B}`, {
    method: 'POST',
    headers: { authorization: 'Token x.y.z', 'content-type': 'application/gzip' },
    body: crypto.randomBytes(300 * 1024),
  });
  expect(tooBig.status).toBe(413);
  expect(JSON.parse(tooBig.body.toString()).error).toMatch(/larger than 262144 bytes/);
  expect((await request(nginx.port, MAIN_HOST, '/health')).status).toBe(200);
});

test('nginx caps webhook bodies at 25 MB and rate-limits anonymous questions per address', async () => {
  // nginx answers from the declared length, before the body: the body is only sent once it has answered (a
  // client still writing 26 MB when nginx closes got a write error instead of the answer now and then).
  const hookStatus = await new Promise<number>((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1',
      port: nginx.port,
      path: '/api/github/webhooks',
      method: 'POST',
      agent: false,
      headers: { host: MAIN_HOST, 'content-type': 'application/json', 'content-length': 26 * 1024 * 1024, 'x-hub-signature-256': `sha256=${'0'.repeat(64)}` },
    });
    req.on('response', (res) => {
      resolve(res.statusCode!);
      req.destroy();
    });
    req.on('error', reject);
    req.flushHeaders();
  });
  expect(hookStatus).toBe(413);
  const statuses: number[] = [];
  for (let i = 0; i < 40; i++) statuses.push((await request(nginx.port, MAIN_HOST, '/can-have-public-preview/octo-org/elsewhere/1')).status);
  expect(statuses.slice(0, 10).every((s) => s === 404)).toBe(true); // Node's answer: not served here
  expect(statuses).toContain(429);
});

test('only a found file of a per-commit host is immutable; 404s are no-store; modern types; the upload host answers JSON without a version', async () => {
  const commit = sha('e7');
  // Hidden first: its URL is a 404 nobody may keep.
  expect((await uploadThroughNginx(8, commit, 'typed')).status).toBe(202);
  const hidden = await request(nginx.port, host(8, commit), '/');
  expect([hidden.status, hidden.headers['cache-control']]).toEqual([404, 'no-store']);
  const notYet = await request(nginx.port, host(8, sha('e8')), '/');
  expect([notYet.status, notYet.headers['cache-control']]).toEqual([404, 'no-store']);

  const typed = tarball({ 'index.html': '<h1>t</h1>', 'app.mjs': 'export {}', 'm.wasm': Buffer.from([0, 97, 115, 109]), 'site.webmanifest': '{}', 'i.avif': 'x' });
  const pr = { number: 9, commits: [commit], labels: [LABEL] };
  githubFor(pr);
  commitsOf(pr);
  nock('https://api.github.com').persist().post(/.*/).reply(201, { id: 1 }).get(/comments/).reply(200, []);
  const up = await request(nginx.port, MAIN_HOST, `/create-build/9/${commit}`, { method: 'POST', headers: { authorization: `Token ${await server.token({ 'pull-request': 9 })}`, 'content-type': 'application/gzip' }, body: typed });
  expect(up.status).toBe(201);
  const types: Record<string, string> = { '/app.mjs': 'text/javascript', '/m.wasm': 'application/wasm', '/site.webmanifest': 'application/manifest+json', '/i.avif': 'image/avif' };
  for (const [p, type] of Object.entries(types)) {
    const res = await request(nginx.port, host(9, commit), p);
    expect([p, res.status, res.headers['content-type']]).toEqual([p, 200, type]);
    expect(res.headers['cache-control']).toMatch(/immutable/);
  }
  const missing = await request(nginx.port, host(9, commit), '/nope.js');
  expect([missing.status, missing.headers['cache-control']]).toEqual([404, 'no-store']);

  for (const [method, p, status] of [['GET', '/create-build/9/' + commit, 405], ['GET', '/nothing-here', 404]] as const) {
    const res = await request(nginx.port, MAIN_HOST, p, { method });
    expect(res.status).toBe(status);
    expect(res.headers['content-type']).toMatch(/application\/json/);
    expect(JSON.parse(res.body.toString()).error).toEqual(expect.any(String));
    expect(res.headers.server).toBe('nginx');
  }
  expect((await request(nginx.port, MAIN_HOST, '/health/')).status).toBe(200);
});

test('`preview-gate verify` checks the deployment from outside, one line per check; a wrong secret fails it', async () => {
  const run = async (secret: string) => {
    let out = '';
    const sink = new PassThrough().on('data', (d: Buffer) => (out += d.toString()));
    const env = { DATA_DIR: path.join(server.tmp, 'verify'), PREVIEW_DOMAIN: 'previews.test', WEBHOOK_SECRET: secret };
    const code = await runCli(['verify', `http://${MAIN_HOST}`, '--connect', `127.0.0.1:${nginx.port}`], { stdin: new PassThrough(), stdout: sink, stderr: sink, env });
    return { code, lines: out.trim().split('\n') };
  };
  const good = await run(WEBHOOK_SECRET);
  expect(good.code).toBe(0);
  expect(good.lines).toHaveLength(5);
  expect(good.lines.every((l) => l.startsWith('ok    '))).toBe(true);
  expect(good.lines.join('\n')).toMatch(/a hidden or unknown preview is 404 and not cached: 404, Cache-Control: no-store/);
  const bad = await run('not-the-secret');
  expect(bad.code).toBe(1);
  expect(bad.lines.filter((l) => l.startsWith('FAIL'))).toEqual([expect.stringMatching(/^FAIL  webhook URL accepts a delivery signed with WEBHOOK_SECRET: a signed ping answered 400/)]);
});

test('metrics are not reachable through the public host in any spelling', async () => {
  const spellings = ['/metrics', '/metrics/', '/METRICS', '/Metrics/', '/%6Detrics', '/%6detrics/', '//metrics', '/./metrics', '/x/../metrics', '/metrics?x', '/metrics/?x', '/metrics;x', '/metrics%2F', '/%2Fmetrics', '/.//metrics'];
  for (const p of spellings) {
    const res = await rawGet(nginx.port, p, MAIN_HOST);
    expect([p, res.status]).toEqual([p, 404]);
    expect(res.body).not.toContain('# HELP');
  }
  // Node itself answers only the exact path (Prometheus scrapes it directly, never through nginx).
  const node = new URL(server.url);
  expect((await rawGet(Number(node.port), '/metrics', node.host)).body).toContain('# HELP');
  for (const p of ['/metrics/', '/METRICS', '/Metrics', '//metrics', '/metrics;x', '/%6Detrics']) {
    expect([p, (await rawGet(Number(node.port), p, node.host)).status]).toEqual([p, 404]);
  }
});

test('only PUBLIC_URL\'s host reaches Node: any other host is 404, no-store, without the sign-in page or a version', async () => {
  expect((await uploadThroughNginx(10, A, 'hosts', [LABEL])).status).toBe(201);
  const a7 = A.slice(0, 7);
  const hosts = [
    'pr99-99999999--docs.previews.test', // eight hex digits: not a preview host
    `x.pr10-${a7}--docs.previews.test`,
    `pr10-${a7}--docs.previews.test.evil.test`,
    'previews.test',
    'evil.test',
    '127.0.0.1',
    `127.0.0.1:${nginx.port}`,
    '[::1]',
  ];
  for (const host of hosts) {
    const res = await request(nginx.port, host, '/');
    expect([host, res.status, res.headers['cache-control'], res.headers.server]).toEqual([host, 404, 'no-store', 'nginx']);
    expect(res.body.toString()).not.toMatch(/Sign in|hosts/);
    expect((await request(nginx.port, host, '/login')).status).toBe(404);
    expect((await request(nginx.port, host, '/health')).status).toBe(404);
  }
  const noHost = await rawGet(nginx.port, '/', undefined);
  expect(noHost.status).toBe(404);
  expect(noHost.head).toMatch(/^Cache-Control: no-store$/im);
  expect(noHost.head).toMatch(/^Server: nginx$/im);
  expect(noHost.body).not.toContain('Sign in');
  // Preview hosts of builds that do not exist: the same 404 as a hidden build's.
  for (const host of ['pr99-9999999--docs.previews.test', 'pr99--docs.previews.test', `pr10-${a7}--other.previews.test`]) {
    const res = await request(nginx.port, host, '/');
    expect([host, res.status, res.headers['cache-control'], res.headers.server]).toEqual([host, 404, 'no-store', 'nginx']);
  }
  // The public host and an existing build still answer.
  expect((await request(nginx.port, `pr10-${a7}--docs.previews.test`, '/')).body.toString()).toBe('<h1>hosts</h1>');
  expect((await request(nginx.port, MAIN_HOST, '/')).body.toString()).toContain('Sign in with GitHub');
});

test('sign-in starts are rate-limited per address with a JSON 429', async () => {
  const answers = [];
  for (let i = 0; i < 20; i++) answers.push(await request(nginx.port, MAIN_HOST, '/login'));
  expect(answers.slice(0, 5).map((a) => a.status)).not.toContain(429);
  const refused = answers.find((a) => a.status === 429);
  expect(refused).toBeDefined();
  expect(refused!.headers['content-type']).toMatch(/application\/json/);
  expect(JSON.parse(refused!.body.toString()).error).toMatch(/Too many requests/);
});

test('sign-in callbacks are rate-limited per address with a JSON 429 (a sealed state cookie is replayable for its 10 minutes)', async () => {
  // Each callback with a state makes Node ask GitHub's token endpoint: a replayed cookie must not turn this host
  // into an unlimited client of it.
  const answers = [];
  for (let i = 0; i < 20; i++) answers.push(await request(nginx.port, MAIN_HOST, `/login/callback?code=c${i}&state=s${i}`));
  expect(answers.slice(0, 5).map((a) => a.status)).not.toContain(429);
  const refused = answers.find((a) => a.status === 429);
  expect(refused).toBeDefined();
  expect(refused!.headers['content-type']).toMatch(/application\/json/);
  expect(JSON.parse(refused!.body.toString()).error).toMatch(/Too many requests/);
});

/** Every folder and file below `dir`, with its permission bits in octal. */
function modesBelow(dir: string): Map<string, string> {
  const modes = new Map<string, string>();
  const walk = (p: string) => {
    modes.set(path.relative(dir, p) || '.', (fs.lstatSync(p).mode & 0o777).toString(8));
    if (fs.lstatSync(p).isDirectory()) for (const name of fs.readdirSync(p)) walk(path.join(p, name));
  };
  walk(dir);
  return modes;
}

test('a stored build is read-only, folders too (555, files 444); its PR folder stays writable, and a visibility flip keeps it so', async () => {
  expect((await uploadThroughNginx(11, A, 'read-only')).status).toBe(202);
  const hidden = path.join(server.config.buildsDir, 'docs', 'hidden--11', A.slice(0, 7));
  const modes = modesBelow(hidden);
  expect(modes.get('.')).toBe('555');
  for (const [name, mode] of modes) expect([name, mode]).toEqual([name, fs.statSync(path.join(hidden, name)).isDirectory() ? '555' : '444']);
  expect([...modes.keys()]).toEqual(expect.arrayContaining(['img', 'docs', 'empty-folder', 'img/logo.bin']));
  expect((fs.statSync(path.dirname(hidden)).mode & 0o777).toString(8)).toBe('755');

  installationToken();
  settingsFile();
  prRead({ number: 11, labels: [LABEL], commits: [A] });
  const { body, headers } = signedWebhook('pull_request', pullRequestEvent('labeled', { number: 11, labels: [LABEL], head: A }, { label: { name: LABEL } }));
  expect((await request(nginx.port, MAIN_HOST, '/api/github/webhooks', { method: 'POST', headers, body: Buffer.from(body) })).status).toBe(200);
  await server.previews.settled();
  const open = path.join(server.config.buildsDir, 'docs', '11', A.slice(0, 7));
  expect(modesBelow(open)).toEqual(modes);
  expect((await request(nginx.port, host(11, A), '/')).body.toString()).toBe('<h1>read-only</h1>');
});

/** Runs `script` (an ES module body; `store` is a BuildStore on `dir`) as an unprivileged user: its answer. */
function asNobody(dir: string, script: string): Promise<{ code: number | null; out: string }> {
  const storeModule = new URL('../dist/src/builds/store.js', import.meta.url).href;
  const body = `import fs from 'node:fs'; const { BuildStore } = await import(${JSON.stringify(storeModule)});
    const store = new BuildStore(${JSON.stringify(path.join(dir, 'builds'))}, ${JSON.stringify(path.join(dir, 'objects'))}); store.init();
    const build = async (pr, visibility, sha7) => { const s = await store.createStaging(); fs.mkdirSync(s + '/deep/er', { recursive: true });
      fs.writeFileSync(s + '/deep/er/f.txt', 'x', { mode: 0o444 }); return store.publish(s, 'docs', pr, visibility, sha7); };
    ${script}`;
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', body], { uid: 65534, gid: 65534, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('close', (code) => resolve({ code, out }));
  });
}

// Root ignores permissions: the server's own user (the image's `node`) is played by nobody.
(process.getuid?.() === 0 ? test : test.skip)('read-only builds can still be moved, repaired and removed by the server\'s (unprivileged) user, and linked to objects', async () => {
  const dir = fs.mkdtempSync(path.join(server.tmp, 'unprivileged-'));
  fs.chownSync(dir, 65534, 65534);
  const res = await asNobody(dir, `
    const one = await build(1, 'hidden', 'aaaaaaa');
    const mode = (fs.statSync(one + '/deep').mode & 0o777).toString(8);
    await store.setVisibility('docs', 1, 'hidden', 'public');
    // A crash between renames left PR 2 in both folders: repaired into the recorded one.
    await build(2, 'public', 'bbbbbbb');
    await build(2, 'hidden', 'ccccccc');
    await store.repairBothFolders('docs', 2, 'public');
    const repaired = fs.readdirSync(store.prDir('docs', 2, 'public')).filter((n) => !n.startsWith('.')).sort().join(',');
    const hiddenLeft = fs.existsSync(store.prDir('docs', 2, 'hidden'));
    // Two builds with one new content: the second's file becomes a link to the first's object.
    const hash = (await import('node:crypto')).createHash('sha256').update('x').digest('hex');
    const objects = store.objects.forRepository(1);
    for (const sha7 of ['ddddddd', 'eeeeeee']) objects.adoptAll([{ path: (await build(3, 'public', sha7)) + '/deep/er/f.txt', hash }]);
    const links = fs.statSync(store.buildDir('docs', 3, 'public', 'eeeeeee') + '/deep/er/f.txt').nlink;
    const stillReadOnly = (fs.statSync(store.buildDir('docs', 3, 'public', 'eeeeeee') + '/deep/er').mode & 0o777).toString(8);
    for (const pr of [1, 2, 3]) await store.removePr('docs', pr);
    console.log(JSON.stringify({ mode, repaired, hiddenLeft, links, stillReadOnly, left: fs.readdirSync(store.buildsDir + '/docs') }));`);
  expect(res).toEqual({ code: 0, out: expect.any(String) });
  expect(JSON.parse(res.out)).toEqual({ mode: '555', repaired: 'bbbbbbb,ccccccc', hiddenLeft: false, links: 3, stillReadOnly: '555', left: [] });
});
