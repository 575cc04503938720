/**
 * Hostile input, table-driven: archives, tokens and webhooks an attacker could send. Each case asserts the
 * status, that nothing was written outside the builds folder, and that nothing was left behind.
 */
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { SignJWT } from 'jose';
import nock from 'nock';
import { eq } from '../src/db/orm.js';
import { builds } from '../src/db/tables.js';
import { API, commitsOf, githubFor, OWNER, pullRequestJson, REPO } from './helpers/github.js';
import { listTree, sha, SLUG, startTestServer, UPLOAD_SECRET, type TestServer } from './helpers/server.js';
import { gzip, rawTar, tarEntry, type RawEntry } from './helpers/tarballs.js';
import { pullRequestEvent, sendWebhook } from './helpers/webhooks.js';

let server: TestServer;
const PR = 60;
const SHA = sha('f6');

beforeAll(async () => {
  nock.disableNetConnect();
  nock.enableNetConnect('127.0.0.1');
  server = await startTestServer({ MAX_UPLOAD_BYTES: String(128 * 1024), MAX_BUILD_BYTES: String(512 * 1024), MAX_BUILD_FILES: '100' });
});
afterAll(async () => {
  await server.close();
});
afterEach(() => nock.cleanAll());

/** Everything under the test's temp dir except the builds folder and the database files. */
const outsideBuilds = () => listTree(server.tmp).filter((p) => !p.startsWith('data/builds') && !/preview-gate\.sqlite/.test(p));

async function expectNoTrace(status: number, send: () => Promise<Response>) {
  const outside = outsideBuilds();
  const builds = server.buildsTree();
  const res = await send();
  expect(res.status).toBe(status);
  expect(typeof (await res.json()).error).toBe('string');
  expect(outsideBuilds()).toEqual(outside);
  expect(server.buildsTree()).toEqual(builds);
  expect(fs.readdirSync(server.core.store.stagingDir)).toEqual([]);
  expect(fs.existsSync('/tmp/evil') || fs.existsSync(path.join(server.tmp, 'evil'))).toBe(false);
}

const tar = (...entries: RawEntry[]) => gzip(rawTar(entries));
const ok: RawEntry = { path: 'index.html', body: '<h1>ok</h1>' };
const pax = (records: Record<string, string>): RawEntry => {
  const body = Object.entries(records)
    .map(([k, v]) => {
      const rec = ` ${k}=${v}\n`;
      let len = rec.length + 2;
      while (String(len).length + rec.length !== len) len = String(len).length + rec.length;
      return `${len}${rec}`;
    })
    .join('');
  return { path: 'PaxHeader', type: 'ExtendedHeader', body, size: Buffer.byteLength(body) };
};

const archives: [string, Buffer, number][] = [
  ['../ at the start', tar(ok, { path: '../evil', body: 'x' }), 400],
  ['.. in the middle', tar(ok, { path: 'a/../../evil', body: 'x' }), 400],
  ['./.. spelling', tar(ok, { path: './../evil', body: 'x' }), 400],
  ['a directory named ..', tar(ok, { path: '..', type: 'Directory' }), 400],
  ['absolute path', tar(ok, { path: '/tmp/evil', body: 'x' }), 400],
  ['double-slash absolute path', tar(ok, { path: '//tmp/evil', body: 'x' }), 400],
  ['Windows drive path', tar(ok, { path: 'C:/evil', body: 'x' }), 400],
  ['Windows backslash drive path', tar(ok, { path: 'C:\\evil', body: 'x' }), 400],
  ['backslash traversal', tar(ok, { path: '..\\..\\evil', body: 'x' }), 400],
  ['symlink out of the build', tar(ok, { path: 'passwd', type: 'SymbolicLink', linkpath: '/etc/passwd' }), 400],
  ['symlink then write through it', tar({ path: 'dir', type: 'SymbolicLink', linkpath: '/tmp' }, { path: 'dir/evil', body: 'x' }), 400],
  ['relative symlink climbing out', tar(ok, { path: 'up', type: 'SymbolicLink', linkpath: '../../..' }), 400],
  ['hard link to a system file', tar(ok, { path: 'shadow', type: 'Link', linkpath: '/etc/shadow' }), 400],
  ['hard link to an earlier entry', tar(ok, { path: 'again', type: 'Link', linkpath: 'index.html' }), 400],
  ['character device', tar(ok, { path: 'tty', type: 'CharacterDevice' }), 400],
  ['block device', tar(ok, { path: 'sda', type: 'BlockDevice' }), 400],
  ['FIFO', tar(ok, { path: 'pipe', type: 'FIFO' }), 400],
  ['a name longer than 255 bytes (pax path)', tar(ok, pax({ path: `${'n'.repeat(300)}.html` }), { path: 'short.html', body: 'x' }), 400],
  ['nesting deeper than 64 folders', tar(ok, { path: `${'d/'.repeat(80)}f.html`, body: 'x' }), 400],
  ['the same file twice (overwrite attempt)', tar(ok, { path: 'index.html', body: 'replaced' }), 400],
  ['a file and then a folder of the same name', tar(ok, { path: 'index.html/x', body: 'x' }), 400],
  ['pax header renaming the next entry to ../evil', tar(ok, pax({ path: '../evil' }), { path: 'harmless.txt', body: 'x' }), 400],
  ['pax header making the next entry absolute', tar(ok, pax({ path: '/tmp/evil' }), { path: 'harmless.txt', body: 'x' }), 400],
  ['GNU long name climbing out', tar(ok, { path: '././@LongLink', type: 'NextFileHasLongPath', body: `../${'x'.repeat(120)}\0` }, { path: 'short', body: 'x' }), 400],
  ['gzip bomb by ratio', tar({ path: 'zeros.bin', body: Buffer.alloc(600 * 1024) }), 413],
  ['bomb by entry count', tar(...Array.from({ length: 120 }, (_, i) => ({ path: `f${i}`, body: '' }))), 413],
  ['bomb by folder count', tar(...Array.from({ length: 120 }, (_, i) => ({ path: `d${i}/`, type: 'Directory' as const }))), 413],
  ['declared size larger than the data (truncated tar)', gzip(Buffer.concat([tarEntry({ path: 'big', body: 'x'.repeat(100), size: 5000 })])), 400],
  ['truncated gzip', tar(ok, { path: 'b.txt', body: 'y'.repeat(5000) }).subarray(0, 40), 400],
  [
    'concatenated gzip streams smuggling a traversal',
    Buffer.concat([gzip(tarEntry(ok)), gzip(Buffer.concat([tarEntry({ path: '../evil', body: 'x' }), Buffer.alloc(1024)]))]),
    400,
  ],
  ['plain tar without gzip', rawTar([ok]), 400],
  ['zip file', Buffer.from('504b0304140000000800', 'hex'), 400],
  ['gzip of nothing', zlib.gzipSync(Buffer.alloc(0)), 400],
  ['only end-of-archive blocks', gzip(Buffer.alloc(1024)), 400],
];

describe('malicious archives', () => {
  test.each(archives)('%s, nothing written, nothing left', async (_name, body, status) => {
    const pr = { number: PR, commits: [SHA] };
    githubFor(pr);
    commitsOf(pr);
    await expectNoTrace(status, () => server.upload(PR, SHA, body));
    // A refused upload also releases its claim: the same SHA can be uploaded again.
    expect(await server.core.db.orm.select({ id: builds.id }).from(builds).where(eq(builds.sha, SHA))).toEqual([]);
  });
});

const sign = (claims: Record<string, unknown>, header: Record<string, unknown> = { alg: 'HS256' }, secret = UPLOAD_SECRET) =>
  new SignJWT({ slug: SLUG, 'pull-request': PR, iss: 'Travis CI, GmbH', exp: now() + 600, ...claims })
    .setProtectedHeader(header as { alg: string })
    .sign(Buffer.from(secret));
/** HS256 by hand, for headers jose refuses to produce. */
const handSigned = async (header: object, claims: object) => {
  const crypto = await import('node:crypto');
  const input = `${b64(header)}.${b64({ slug: SLUG, 'pull-request': PR, iss: 'Travis CI, GmbH', exp: now() + 600, ...claims })}`;
  return `${input}.${crypto.createHmac('sha256', UPLOAD_SECRET).update(input).digest('base64url')}`;
};
const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
const now = () => Math.floor(Date.now() / 1000);

const tokens: [string, () => Promise<string>][] = [
  ['alg none', async () => `${b64({ alg: 'none' })}.${b64({ iss: 'Travis CI, GmbH', slug: SLUG, 'pull-request': PR, exp: now() + 600 })}.`],
  ['alg "None" spelled differently', async () => `${b64({ alg: 'None' })}.${b64({ iss: 'Travis CI, GmbH', slug: SLUG, 'pull-request': PR, exp: now() + 600 })}.`],
  ['HS512 with the right secret', () => sign({}, { alg: 'HS512' })],
  ['HS384 with the right secret', () => sign({}, { alg: 'HS384' })],
  ['RS256 header over an HMAC signature (algorithm confusion)', async () => {
    const real = await sign({});
    const [, payload, signature] = real.split('.');
    return `${b64({ alg: 'RS256', kid: 'k1' })}.${payload}.${signature}`;
  }],
  ['signed with another secret', () => sign({}, { alg: 'HS256' }, 'x'.repeat(40))],
  ['signed with the empty secret', () => new SignJWT({ slug: SLUG, 'pull-request': PR }).setProtectedHeader({ alg: 'HS256' }).setIssuer('Travis CI, GmbH').setExpirationTime('10m').sign(new Uint8Array(32))],
  ['expired', () => sign({ exp: now() - 10 })],
  ['not valid yet (nbf in the future)', () => sign({ nbf: now() + 3600 })],
  ['no exp', () => sign({ exp: undefined })],
  ['wrong issuer', () => new SignJWT({ slug: SLUG, 'pull-request': PR }).setProtectedHeader({ alg: 'HS256' }).setIssuer('Evil CI').setExpirationTime('10m').sign(Buffer.from(UPLOAD_SECRET))],
  ['exp as a string', () => sign({ exp: String(now() + 600) })],
  ['slug as a number', () => sign({ slug: 42 })],
  ['pull-request as an array', () => sign({ 'pull-request': [PR] })],
  ['another pull request', () => sign({ 'pull-request': PR + 1 })],
  ['another repository', () => sign({ slug: `${OWNER}/other` })],
  ['kid pointing at a file, with a wrong secret', () => sign({}, { alg: 'HS256', kid: '../../../../dev/null' }, 'y'.repeat(40))],
  ['jku pointing at an attacker key set', async () => {
    const real = await sign({});
    const [, payload, signature] = real.split('.');
    return `${b64({ alg: 'RS256', jku: 'https://evil.example/jwks' })}.${payload}.${signature}`;
  }],
  ['unknown critical header', () => handSigned({ alg: 'HS256', crit: ['x-evil'], 'x-evil': true }, {})],
  ['tampered payload, original signature', async () => {
    const real = await sign({});
    const [header, , signature] = real.split('.');
    return `${header}.${b64({ iss: 'Travis CI, GmbH', slug: SLUG, 'pull-request': PR, exp: now() + 99999 })}.${signature}`;
  }],
];

describe('token attacks', () => {
  test.each(tokens)('%s → 403, nothing written', async (_name, make) => {
    const token = await make();
    await expectNoTrace(403, () => server.upload(PR, SHA, tar(ok), { token }));
  });
});

describe('webhook attacks', () => {
  const LABEL = 'safe for preview';
  const event = () => pullRequestEvent('labeled', { number: 61, labels: [LABEL] }, { label: { name: LABEL } });
  const post = (headers: Record<string, string>, body: string) =>
    fetch(`${server.url}/api/github/webhooks`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-github-event': 'pull_request', 'x-github-delivery': 'd-1', ...headers }, body });
  const noChange = async () => expect(await server.core.registry.findPullRequest((await server.core.registry.findRepository(SLUG))!.id, 61)).toBeUndefined();

  test('no signature → rejected', async () => {
    expect((await post({}, JSON.stringify(event()))).status).toBe(400);
    await noChange();
  });
  test('signed with another secret → rejected', async () => {
    expect((await sendWebhook(server.url, 'pull_request', event(), 'not-the-secret')).status).toBe(400);
    await noChange();
  });
  test('a valid signature of another body → rejected', async () => {
    const crypto = await import('node:crypto');
    const sig = `sha256=${crypto.createHmac('sha256', 'test-webhook-secret').update('{}').digest('hex')}`;
    expect((await post({ 'x-hub-signature-256': sig }, JSON.stringify(event()))).status).toBe(400);
    await noChange();
  });
  test('only the legacy SHA-1 signature → rejected', async () => {
    const crypto = await import('node:crypto');
    const body = JSON.stringify(event());
    const sig = `sha1=${crypto.createHmac('sha1', 'test-webhook-secret').update(body).digest('hex')}`;
    expect((await post({ 'x-hub-signature': sig }, body)).status).toBe(400);
    await noChange();
  });
  test('a signed delivery naming another installation asks GitHub nothing and changes nothing', async () => {
    const tokens = nock(API).post('/app/installations/666/access_tokens').reply(404, { message: 'Not Found' });
    const res = await sendWebhook(server.url, 'pull_request', { ...event(), installation: { id: 666 } });
    expect(res.status).toBe(200);
    await server.previews.settled();
    expect(tokens.isDone()).toBe(false);
    await noChange();
  });
  test('a replayed labeled delivery publishes nothing: GitHub says the label is gone', async () => {
    nock(API).persist().post('/app/installations/42/access_tokens').reply(201, { token: 't', expires_at: new Date(Date.now() + 3600e3).toISOString() });
    nock(API).persist().get(/\/contents\//).reply(404, { message: 'Not Found' });
    nock(API).persist().get(`/repos/${OWNER}/${REPO}/pulls/62`).reply(200, () => pullRequestJson({ number: 62, labels: [] }));
    const repo = (await server.core.registry.findRepository(SLUG))!;
    await server.previews.decisions.ensurePr(repo, 62, 'open', 'f'.repeat(40));
    const payload = pullRequestEvent('labeled', { number: 62, labels: [LABEL] }, { label: { name: LABEL } });
    expect((await sendWebhook(server.url, 'pull_request', payload)).status).toBe(200);
    expect((await sendWebhook(server.url, 'pull_request', payload)).status).toBe(200);
    await server.previews.settled();
    const pr = (await server.core.registry.findPullRequest(repo.id, 62))!;
    expect(pr).toMatchObject({ visibility: 'hidden', trusted: false });
  });
});

test(`${REPO}: the server is still healthy after all of it`, async () => {
  expect((await fetch(`${server.url}/health`)).status).toBe(200);
});
