import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import nock from 'nock';
import { commitsOf, githubFor, API, OWNER, REPO } from './helpers/github.js';
import { sha, startTestServer, type TestServer } from './helpers/server.js';
import { gzip, rawTar, siteTarball, tarball } from './helpers/tarballs.js';

let server: TestServer;

beforeAll(async () => {
  if (process.env.NOCK_DEBUG) nock.emitter.on('no match', (req: { method?: string; path?: string; href?: string }) => console.log('NO MATCH', req.method, req.path ?? req.href));
  nock.disableNetConnect();
  nock.enableNetConnect('127.0.0.1');
  server = await startTestServer({ MAX_UPLOAD_BYTES: String(64 * 1024), MAX_BUILD_BYTES: String(256 * 1024), MAX_BUILD_FILES: '50' });
});
afterAll(async () => {
  await server.close();
  nock.enableNetConnect();
});
afterEach(() => nock.cleanAll());

const SHA_A = sha('a1');
const SHA_B = sha('b2');

/** GitHub answering for an open PR #N holding `commits`. */
function openPr(number: number, commits: string[], extra: Parameters<typeof githubFor>[0] = { number }) {
  const pr = { ...extra, number, commits };
  githubFor(pr);
  commitsOf(pr);
}

describe('a stored upload', () => {
  test('a labelled PR is public at once: 201 with its URL, files byte-for-byte and read-only', async () => {
    openPr(1, [SHA_A], { number: 1, labels: ['safe for preview'] });
    const res = await server.upload(1, SHA_A, siteTarball('first'));
    expect(res.status).toBe(201);
    expect(await res.json()).toEqual({ url: `https://pr1-${SHA_A.slice(0, 7)}--docs.previews.test/`, visibility: 'public' });

    const dir = path.join(server.config.buildsDir, 'docs', '1', SHA_A.slice(0, 7));
    expect(fs.readFileSync(path.join(dir, 'index.html'), 'utf8')).toContain('<h1>first</h1>');
    expect(fs.readFileSync(path.join(dir, 'assets/app.js'), 'utf8')).toBe('console.log("first");');
    expect(fs.statSync(path.join(dir, 'index.html')).mode & 0o777).toBe(0o444);
    expect(nock.isDone()).toBe(true);
  });

  test('an unlabelled PR of an outsider is stored hidden: 202, under hidden--<pr>', async () => {
    openPr(2, [SHA_A]);
    const res = await server.upload(2, SHA_A, siteTarball('outsider'));
    expect(res.status).toBe(202);
    expect(await res.json()).toMatchObject({ visibility: 'hidden' });
    expect(fs.existsSync(path.join(server.config.buildsDir, 'docs', 'hidden--2', SHA_A.slice(0, 7), 'index.html'))).toBe(true);
    expect(fs.existsSync(path.join(server.config.buildsDir, 'docs', '2'))).toBe(false);
  });

  test('a member of a trusted team gets a public preview without a label', async () => {
    const pr = { number: 3, commits: [SHA_A], author: { id: 77, login: 'maintainer' } };
    githubFor(pr, { settings: 'trustedTeams: [docs-authors]\n', teams: { 'docs-authors': ['maintainer'] } });
    commitsOf(pr);
    const res = await server.upload(3, SHA_A, siteTarball());
    expect(res.status).toBe(201);
  });

  test('the same SHA again is refused with 409 and the stored build is untouched', async () => {
    openPr(4, [SHA_A, SHA_B], { number: 4, labels: ['safe for preview'] });
    expect((await server.upload(4, SHA_A, siteTarball('original'))).status).toBe(201);
    openPr(4, [SHA_A, SHA_B], { number: 4, labels: ['safe for preview'] });
    const again = await server.upload(4, SHA_A, siteTarball('overwrite attempt'));
    expect(again.status).toBe(409);
    expect((await again.json()).error).toMatch(/already exists/);
    const index = path.join(server.config.buildsDir, 'docs', '4', SHA_A.slice(0, 7), 'index.html');
    expect(fs.readFileSync(index, 'utf8')).toContain('original');
  });

  test('a multipart upload with the field "artifact" is stored like a raw one', async () => {
    openPr(5, [SHA_B], { number: 5, labels: ['safe for preview'] });
    const form = new FormData();
    form.append('artifact', new Blob([new Uint8Array(siteTarball('multipart'))]), 'build.tgz');
    const res = await fetch(`${server.url}/create-build/5/${SHA_B}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${await server.token({ 'pull-request': 5 })}` },
      body: form,
    });
    expect(res.status).toBe(201);
    expect(fs.readFileSync(path.join(server.config.buildsDir, 'docs', '5', SHA_B.slice(0, 7), 'index.html'), 'utf8')).toContain('multipart');
    expect(fs.readdirSync(server.core.store.stagingDir)).toEqual([]);
  });

  test('of 8 concurrent uploads of one SHA exactly one is stored, the others get 409', async () => {
    const pr = { number: 6, commits: [SHA_A], labels: ['safe for preview'] };
    for (let i = 0; i < 8; i++) {
      githubFor(pr);
      commitsOf(pr);
    }
    const results = await Promise.all(Array.from({ length: 8 }, (_, i) => server.upload(6, SHA_A, siteTarball(`racer ${i}`))));
    const statuses = results.map((r) => r.status).sort();
    expect(statuses).toEqual([201, 409, 409, 409, 409, 409, 409, 409]);
    const files = fs.readdirSync(path.join(server.config.buildsDir, 'docs', '6', SHA_A.slice(0, 7)));
    expect(files.sort()).toEqual(['404.html', 'assets', 'index.html']);
  });
});

/** POST with `Transfer-Encoding: chunked` through node:http, answered as a fetch Response. */
function postChunked(url: string, token: string, body: Buffer): Promise<Response> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST', headers: { authorization: `Token ${token}`, 'transfer-encoding': 'chunked' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve(new Response(Buffer.concat(chunks).toString(), { status: res.statusCode })));
    });
    req.on('error', reject);
    for (let i = 0; i < body.length; i += 8192) req.write(body.subarray(i, i + 8192));
    req.end();
  });
}

/** Runs a failing upload and checks that it changed nothing on disk and left the server healthy. */
async function expectRefused(status: number, send: () => Promise<Response>, message?: RegExp) {
  const before = server.buildsTree();
  const res = await send();
  const body = await res.json();
  expect({ status: res.status, body }).toMatchObject({ status, body: { error: expect.any(String) } });
  if (message) expect(body.error).toMatch(message);
  expect(body.error).not.toMatch(/\n\s+at /); // no stack trace
  expect(server.buildsTree()).toEqual(before);
  expect(fs.readdirSync(server.core.store.stagingDir)).toEqual([]);
  expect((await fetch(`${server.url}/health`)).status).toBe(200);
}

describe('authentication', () => {
  test('no Authorization header → 401', () =>
    expectRefused(401, () => fetch(`${server.url}/create-build/1/${SHA_B}`, { method: 'POST', body: new Uint8Array(siteTarball()) }), /missing/));

  test('a malformed Authorization header → 401', () =>
    expectRefused(401, () => server.upload(1, SHA_B, siteTarball(), { headers: { authorization: 'Basic dXNlcjpwYXNz' } }), /malformed/));

  test('a token signed with another secret → 403', async () => {
    const token = await server.token({}, { secret: 'not-the-secret-but-long-enough-to-sign-with-it' });
    await expectRefused(403, () => server.upload(1, SHA_B, siteTarball(), { token }), /signature/);
  });

  test('alg "none" → 403', async () => {
    const enc = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const token = `${enc({ alg: 'none', typ: 'JWT' })}.${enc({ iss: 'Travis CI, GmbH', slug: `${OWNER}/${REPO}`, 'pull-request': 1, exp: 9e9 })}.`;
    await expectRefused(403, () => server.upload(1, SHA_B, siteTarball(), { token }));
  });

  test('HS512 with the right secret (algorithm not pinned elsewhere) → 403', async () => {
    const token = await server.token({}, { alg: 'HS512' });
    await expectRefused(403, () => server.upload(1, SHA_B, siteTarball(), { token }), /HS256/);
  });

  test('an expired token → 403', async () => {
    const token = await server.token({}, { expiresIn: Math.floor(Date.now() / 1000) - 60 });
    await expectRefused(403, () => server.upload(1, SHA_B, siteTarball(), { token }), /expired/);
  });

  test('a token for another repository → 403', async () => {
    const token = await server.token({ slug: 'someone/else' });
    await expectRefused(403, () => server.upload(1, SHA_B, siteTarball(), { token }), /someone\/else/);
  });

  test('a token for another pull request → 403', async () => {
    const token = await server.token({ 'pull-request': 99 });
    await expectRefused(403, () => server.upload(1, SHA_B, siteTarball(), { token }), /pull request 99/);
  });
});

describe('authorization with GitHub', () => {
  test('a SHA that is not a commit of the PR → 403', async () => {
    openPr(10, [SHA_A]);
    await expectRefused(403, () => server.upload(10, SHA_B, siteTarball()), /not part of pull request #10/);
  });

  test('a closed PR → 403', async () => {
    githubFor({ number: 11, state: 'closed', commits: [SHA_A] });
    await expectRefused(403, () => server.upload(11, SHA_A, siteTarball()), /closed/);
  });

  test('a repository the app is not installed on → 403', async () => {
    nock(API).get(`/repos/${OWNER}/${REPO}/installation`).reply(404, { message: 'Not Found' });
    await expectRefused(403, () => server.upload(12, SHA_A, siteTarball()), /not installed/);
  });

  test('GitHub answering 502 → 503, nothing stored', async () => {
    nock(API).get(`/repos/${OWNER}/${REPO}/installation`).reply(502, 'Bad Gateway');
    await expectRefused(503, () => server.upload(13, SHA_A, siteTarball()), /retry later/);
  });

  test('GitHub not answering in time → 503, nothing stored', async () => {
    githubFor({ number: 14, commits: [SHA_A] });
    nock.removeInterceptor({ hostname: 'api.github.com', proto: 'https', path: `/repos/${OWNER}/${REPO}/pulls/14`, method: 'GET' });
    nock(API).get(`/repos/${OWNER}/${REPO}/pulls/14`).delay(3000).reply(200, {});
    await expectRefused(503, () => server.upload(14, SHA_A, siteTarball()), /retry later/);
  });
});

describe('bad input', () => {
  const refusedArchive = (status: number, body: Buffer, message?: RegExp) => async () => {
    openPr(20, [SHA_A]);
    await expectRefused(status, () => server.upload(20, SHA_A, body), message);
  };

  test('a PR number that is not a number → 400', () => expectRefused(400, () => server.upload('abc' as unknown as number, SHA_A, siteTarball()), /pull request number/));
  test('a PR number 0 → 400', () => expectRefused(400, () => server.upload(0, SHA_A, siteTarball())));
  test('a short SHA → 400', () => expectRefused(400, () => server.upload(1, 'abc1234', siteTarball()), /40/));
  test('an upper-case SHA → 400', () => expectRefused(400, () => server.upload(1, SHA_A.toUpperCase(), siteTarball())));
  test('an empty body → 400', refusedArchive(400, Buffer.alloc(0), /empty/));
  test('a body that is not gzip → 400', refusedArchive(400, Buffer.from('PK\u0003\u0004 this is a zip, not a tgz'), /gzip/));
  test('a truncated gzip stream → 400', refusedArchive(400, siteTarball().subarray(0, 60), /truncated|gzip/));
  test('a gzip of something that is not a tar → 400', refusedArchive(400, gzip(Buffer.from('just text '.repeat(100))), /tar/));
  test('a tar cut in the middle of a file → 400', refusedArchive(400, gzip(rawTar([{ path: 'big.bin', body: 'x'.repeat(600) }]).subarray(0, 1024)), /truncated|tar/));
  test('an entry with ".." → 400', refusedArchive(400, gzip(rawTar([{ path: 'ok.html', body: 'x' }, { path: 'a/../../escape.html', body: 'x' }])), /outside/));
  test('an absolute path → 400', refusedArchive(400, gzip(rawTar([{ path: '/etc/cron.d/evil', body: 'x' }])), /absolute/));
  test('a symlink → 400', refusedArchive(400, gzip(rawTar([{ path: 'link', type: 'SymbolicLink', linkpath: '/etc/passwd' }])), /symbolic link/));
  test('a hard link → 400', refusedArchive(400, gzip(rawTar([{ path: 'a.txt', body: 'a' }, { path: 'hard', type: 'Link', linkpath: 'a.txt' }])), /hard link/));
  test('a device → 400', refusedArchive(400, gzip(rawTar([{ path: 'dev', type: 'CharacterDevice' }])), /device/));
  test('a FIFO → 400', refusedArchive(400, gzip(rawTar([{ path: 'fifo', type: 'FIFO' }])), /FIFO/));
  test('the same file twice → 400', refusedArchive(400, gzip(rawTar([{ path: 'a.txt', body: 'a' }, { path: 'a.txt', body: 'b' }])), /more than once/));

  // Files are written on the writer's thread, many at a time: a refusal in the middle still leaves nothing
  // (expectRefused checks the builds and staging right after the answer). The race this guards against — a file
  // written into staging while it is removed — did not show in three runs without the wait, so it is argued in
  // extractTarGz rather than proven here.
  test('a name twice among 600 files → 400, and no file is left behind', async () => {
    const files = Array.from({ length: 600 }, (_, i) => ({ path: `pages/p${i}.html`, body: `<p>page ${i} ${'x'.repeat(i % 50)}</p>` }));
    files.splice(100, 0, { path: 'pages/p7.html', body: 'again' });
    const roomy = await startTestServer({});
    const shared = server;
    try {
      server = roomy; // expectRefused looks at `server`
      await refusedArchive(400, gzip(rawTar(files)), /more than once/)();
    } finally {
      server = shared;
      await roomy.close();
    }
  });

  test('a compressed body over MAX_UPLOAD_BYTES (declared) → 413', () =>
    expectRefused(413, () => server.upload(20, SHA_A, Buffer.alloc(65 * 1024, 1)), /larger than 65536/));

  test('a compressed body over MAX_UPLOAD_BYTES (streamed, no length) → 413', async () => {
    openPr(20, [SHA_A]);
    const random = crypto.randomBytes(70 * 1024);
    const body = tarball({ 'noise.bin': random });
    expect(body.length).toBeGreaterThan(64 * 1024);
    const token = await server.token({ 'pull-request': 20 });
    // Chunked transfer encoding: the server cannot know the size up front and must count while streaming.
    await expectRefused(413, () => postChunked(`${server.url}/create-build/20/${SHA_A}`, token, body), /larger than 65536/);
  });

  test('a gzip bomb over MAX_BUILD_BYTES once uncompressed → 413', () =>
    refusedArchive(413, tarball({ 'zeros.bin': Buffer.alloc(300 * 1024) }), /uncompressed/)());

  test('more entries than MAX_BUILD_FILES → 413', () =>
    refusedArchive(413, tarball(Object.fromEntries(Array.from({ length: 60 }, (_, i) => [`f${i}.txt`, 'x']))), /more than 50 entries/)());
});
