/**
 * Hidden previews through real nginx (issue 14): nginx serves a hidden build only on Node's yes
 * (auth_request), with the banner, `private, no-store` and `noindex`; everyone else gets the usual 404.
 */
import fs from 'node:fs';
import path from 'node:path';
import nock from 'nock';
import { FakeGitHub } from './helpers/fake-github.js';
import { request, startNginx, type RunningNginx } from './helpers/nginx.js';
import { sha, startTestServer, type TestServer } from './helpers/server.js';
import { tarball } from './helpers/tarballs.js';
import { sessions } from '../src/db/tables.js';

const MAIN_HOST = 'uploads.test';
const DOCS = 7001;
const A = sha('a1');
const B = sha('b2');
const HOST = `pr1-${A.slice(0, 7)}--docs.previews.test`;

let fake: FakeGitHub;
let server: TestServer;
let nginx: RunningNginx;

beforeAll(async () => {
  nock.enableNetConnect('127.0.0.1');
  fake = await new FakeGitHub().start();
  fake.addRepo({ id: DOCS, owner: { id: 9001, login: 'octo-org' }, name: 'docs' });
  fake.addUser({ id: 1001, login: 'maintainer' }, { [DOCS]: 'write' });
  fake.addUser({ id: 1002, login: 'reader' }, { [DOCS]: 'read' });
  server = await startTestServer({ ...fake.env, PUBLIC_URL: `http://${MAIN_HOST}`, GITHUB_CLIENT_ID: fake.client.id, GITHUB_CLIENT_SECRET: fake.client.secret });
  fs.chmodSync(server.tmp, 0o755);
  nginx = await startNginx(path.join(server.tmp, 'nginx'), {
    previewDomain: 'previews.test',
    buildsDir: server.config.buildsDir,
    upstream: new URL(server.url).host,
    publicHost: MAIN_HOST,
    maxUploadBytes: server.config.maxUploadBytes,
  });
  fake.addPull(DOCS, { number: 1, user: { id: 555, login: 'contributor' }, commits: [A] });
  fake.addPull(DOCS, { number: 2, user: { id: 555, login: 'contributor' }, commits: [B], labels: ['safe for preview'] });
  const site = (marker: string) => tarball({ 'index.html': `<html><body><h1>${marker}</h1></body></html>`, 'app.js': 'console.log(1)' });
  expect((await server.upload(1, A, site('not reviewed'))).status).toBe(202);
  expect((await server.upload(2, B, site('public one'))).status).toBe(201);
});
afterAll(async () => {
  if (process.env.SHOW_NGINX_ERRORS) console.log(fs.readFileSync(path.join(server.tmp, 'nginx', 'logs', 'error.log'), 'utf8'));
  await nginx?.stop();
  await server?.close();
  await fake.close();
});

const viaNginx = (host: string, urlPath: string, cookie?: string) => request(nginx.port, host, urlPath, cookie ? { headers: { cookie } } : {});
const cookiePair = (header: string | string[] | undefined) => [header ?? []].flat()[0]?.split(';')[0];

/** Signs in through nginx and walks the ticket to the preview host; the preview host's cookie. */
async function viewCookie(login: string, landing?: { path: string; expected: string }): Promise<string | undefined> {
  fake.signInAs = login;
  const start = await viaNginx(MAIN_HOST, '/login');
  const approved = await fetch(start.headers.location!, { redirect: 'manual' });
  const callback = new URL(approved.headers.get('location')!);
  // The browser that started the sign-in sends back its sign-in cookie (state + PKCE verifier).
  const signedIn = await viaNginx(MAIN_HOST, `${callback.pathname}${callback.search}`, cookiePair(start.headers['set-cookie']));
  const session = cookiePair([signedIn.headers['set-cookie'] ?? []].flat().filter((c) => /^(__Host-)?preview-gate=/.test(c)));
  const view = await viaNginx(MAIN_HOST, `/view/1/1/${A.slice(0, 7)}${landing ? `?path=${encodeURIComponent(landing.path)}` : ''}`, session);
  if (view.status !== 302) return undefined;
  const ticket = new URL(view.headers.location!);
  expect(ticket.host).toBe(HOST);
  const redeemed = await viaNginx(HOST, `${ticket.pathname}${ticket.search}`);
  expect(redeemed.status).toBe(303);
  if (landing) expect(redeemed.headers.location).toBe(landing.expected);
  return cookiePair(redeemed.headers['set-cookie']);
}

test('without a grant a hidden build is the same 404 as an unknown preview, not cacheable', async () => {
  const hidden = await viaNginx(HOST, '/');
  const unknown = await viaNginx('pr1-0000000--docs.previews.test', '/');
  expect(hidden.status).toBe(404);
  expect(hidden.body).toEqual(unknown.body);
  expect(hidden.headers['cache-control']).toBe('no-store');
  expect((await viaNginx(HOST, '/', 'preview-gate-view=forged')).status).toBe(404);
  // A build that does not exist, asked with a view cookie (Node is asked): the same 404, not cacheable.
  for (const host of ['pr9-9999999--docs.previews.test', 'pr9--docs.previews.test']) {
    const missing = await viaNginx(host, '/', 'preview-gate-view=forged');
    expect([host, missing.status, missing.headers['cache-control'], missing.body]).toEqual([host, 404, 'no-store', unknown.body]);
  }
  // The grant's paths cannot be used to read anything either.
  expect((await viaNginx(HOST, '/.preview-gate/ticket?t=made-up')).status).toBe(404);
  expect((await viaNginx(HOST, '/.preview-gate/auth')).status).toBe(404);
  expect((await viaNginx(HOST, '/.preview-gate-hidden/index.html')).status).toBe(404);
});

test('through nginx, the ticket lands on the page asked for on the same host, never on another host', async () => {
  expect(await viewCookie('maintainer', { path: '/guide/a%20b.html', expected: '/guide/a%20b.html' })).toBeDefined();
  expect(await viewCookie('maintainer', { path: '//evil.test/x', expected: '/' })).toBeDefined();
  expect(await viewCookie('maintainer', { path: '/\\evil.test', expected: '/' })).toBeDefined();
});

test('a maintainer sees the hidden build with the banner, private and noindex; a reader never gets a ticket', async () => {
  expect(await viewCookie('reader')).toBeUndefined();
  const cookie = await viewCookie('maintainer');
  const page = await viaNginx(HOST, '/', cookie);
  expect(page.status).toBe(200);
  const html = page.body.toString();
  expect(html).toMatch(/^<html><body><h1>not reviewed<\/h1><div role="note" [^>]*><details open><summary[^>]*>Hidden preview &mdash; not reviewed\.<\/summary>.*<\/details><\/div><script>.*<\/script><\/body><\/html>$/);
  expect(html).toMatch(/<a [^>]*href="http:\/\/127\.0\.0\.1:\d+\/octo-org\/docs\/pull\/1">The pull request<\/a>/);
  expect(html).toContain(`<a style="color:#fff" href="http://${MAIN_HOST}/">The preview-gate dashboard</a>`);
  // In the page's flow, never over it; no form, nothing that could publish.
  expect(html).not.toMatch(/position:\s*fixed|<form|<button/);
  expect(page.headers['cache-control']).toBe('private, no-store');
  // No CDN may keep it: a CDN that reads CDN-Cache-Control ignores Cache-Control (RFC 9213).
  expect([page.headers['cdn-cache-control'], page.headers['surrogate-key']]).toEqual([undefined, undefined]);
  expect(page.headers['x-robots-tag']).toBe('noindex');
  expect(page.headers['x-content-type-options']).toBe('nosniff');
  // Files and single-page-app paths as for a public build.
  expect((await viaNginx(HOST, '/app.js', cookie)).body.toString()).toBe('console.log(1)');
  expect((await viaNginx(HOST, '/missing.js', cookie)).status).toBe(404);
  expect((await viaNginx(HOST, '/some/route', cookie)).body.toString()).toContain('not reviewed');
  // The cookie is this host's only.
  expect((await viaNginx('pr1--docs.previews.test', '/', cookie)).status).toBe(404);
  // A public build is served as before: no banner, immutable.
  const open = await viaNginx(`pr2-${B.slice(0, 7)}--docs.previews.test`, '/');
  expect(open.body.toString()).toBe('<html><body><h1>public one</h1></body></html>');
  expect(open.headers['cache-control']).toBe('public, max-age=31536000, s-maxage=60, immutable');
});

test('the auth sub-request adds little to a hidden page (figure printed with PRINT_FIGURES=1)', async () => {
  const cookie = await viewCookie('maintainer');
  const publicHost = `pr2-${B.slice(0, 7)}--docs.previews.test`;
  const time = async (host: string, c?: string) => {
    const t = process.hrtime.bigint();
    const res = await viaNginx(host, '/app.js', c);
    expect(res.status).toBe(200);
    return Number(process.hrtime.bigint() - t) / 1e6;
  };
  // 200 requests each for the figure; a few otherwise (the suite runs on busy CI machines).
  const rounds = process.env.PRINT_FIGURES ? 200 : 10;
  const hidden: number[] = [];
  const open: number[] = [];
  for (let i = 0; i < rounds; i++) {
    hidden.push(await time(HOST, cookie));
    open.push(await time(publicHost));
  }
  const p50 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  if (process.env.PRINT_FIGURES) {
    console.log(`hidden page p50 ${p50(hidden).toFixed(2)} ms vs public p50 ${p50(open).toFixed(2)} ms: auth_request adds ${(p50(hidden) - p50(open)).toFixed(2)} ms (${rounds} requests each, loopback)`);
  }
  expect(p50(hidden)).toBeGreaterThan(0);
});

test("nginx keeps Node's yes for 5 s at most (a page's files ask once) and never its no", async () => {
  const cookie = await viewCookie('maintainer');
  expect((await viaNginx(HOST, '/', cookie)).status).toBe(200);
  // nginx stored the yes before this moment: no request sent 5 s after it may be served from it.
  const yesKeptBy = Date.now();
  await server.core.db.orm.update(sessions).set({ revokedAt: new Date() });
  // The session is revoked: the kept yes still serves (unless a busy machine took 4 s to get here) ...
  const first = await viaNginx(HOST, '/app.js', cookie);
  expect(first.status === 200 || Date.now() - yesKeptBy >= 4000).toBe(true);
  // ... until it expires, then the same 404 as for anyone. Waited on, not slept: each 200 must have been asked
  // within 5 s of the yes (4 s on nginx's whole-second clock).
  for (;;) {
    const sentAt = Date.now();
    const res = await viaNginx(HOST, '/app.js', cookie);
    if (res.status === 404) break;
    expect(res.status).toBe(200);
    expect(sentAt - yesKeptBy).toBeLessThan(5000);
    await new Promise((r) => setTimeout(r, 100));
  }
  // That no was not kept: the session back, the next request is served.
  await server.core.db.orm.update(sessions).set({ revokedAt: null });
  expect((await viaNginx(HOST, '/app.js', cookie)).status).toBe(200);
});

// Last in this file: it spends this address's allowance of requests with a view cookie.
test('a flood of forged view cookies is limited per address before it becomes work for Node', async () => {
  // All 500 sent at once: nginx counts requests as they arrive, so the limit shows however slowly Node answers the
  // ones let through (sent in batches of 50, each waiting for Node, a loaded CI box sent fewer than 20 a second).
  const sent = Array.from({ length: 500 }, (_, i) => viaNginx(`pr${i + 1}-abcdef0--nosuch.previews.test`, '/', `preview-gate-view=junk${i}`));
  const answers = (await Promise.all(sent)).map((a) => a.status);
  expect(new Set(answers)).toEqual(new Set([404, 429]));
  // 500 in well under 25 s: at most the burst (200) and 20 a second passed.
  expect(answers.filter((s) => s === 404).length).toBeLessThan(500);
}, 120_000);
