/**
 * Sign-in with GitHub, hidden previews for people who may push, the dashboard and its audit (issue 14), at the
 * HTTP level against the stand-in GitHub (OAuth web flow with PKCE, user APIs). Every bad input is refused.
 */
import http from 'node:http';
import { PassThrough } from 'node:stream';
import { jest } from '@jest/globals';
import nock from 'nock';
import { runCli } from '../src/cli.js';
import { auditTrail } from '../src/dashboard/sessions.js';
import { count, eq } from '../src/db/orm.js';
import { auditEvents, previewGrants, previewTickets, sessions, users } from '../src/db/tables.js';
import { FakeGitHub } from './helpers/fake-github.js';
import { sha, startTestServer, UPLOAD_SECRET, type TestServer, dataEnv } from './helpers/server.js';
import { UPLOAD_SECRET_NAME } from '../src/upload/route.js';
import { siteTarball, tarball } from './helpers/tarballs.js';
import { sendWebhook } from './helpers/webhooks.js';

const OWNER = { id: 9001, login: 'octo-org' };
const DOCS = 7001;
const CONTRIBUTOR = { id: 555, login: 'contributor' };
const MAINTAINER = { id: 1001, login: 'maintainer' };
const READER = { id: 1002, login: 'reader' };
const TRIAGER = { id: 1003, login: 'triager' };
const A = sha('a1');
const HOST = `pr1-${A.slice(0, 7)}--docs.previews.test`;
const SESSION = '__Host-preview-gate';
const VIEW = '__Host-preview-gate-view';

let fake: FakeGitHub;
let server: TestServer;

beforeEach(async () => {
  nock.enableNetConnect('127.0.0.1');
  fake = await new FakeGitHub().start();
  fake.addRepo({ id: DOCS, owner: OWNER, name: 'docs' });
  fake.addUser(MAINTAINER, { [DOCS]: 'maintain' });
  fake.addUser(READER, { [DOCS]: 'read' });
  fake.addUser(TRIAGER, { [DOCS]: 'triage' });
  server = await startTestServer({ ...fake.env, GITHUB_CLIENT_ID: fake.client.id, GITHUB_CLIENT_SECRET: fake.client.secret });
  fake.addPull(DOCS, { number: 1, user: CONTRIBUTOR, commits: [A] });
  expect((await server.upload(1, A, siteTarball('not reviewed yet'))).status).toBe(202);
  await server.previews.settled();
});
afterEach(async () => {
  jest.restoreAllMocks();
  await server?.close();
  await fake.close();
});

/** A request to the server as a browser would make it (no redirect followed), with a Host header when asked (as nginx passes it). */
const get = (path: string, init: { cookie?: string; host?: string } = {}): Promise<Response> => {
  if (!init.host) return fetch(`${server.url}${path}`, { redirect: 'manual', headers: init.cookie ? { cookie: init.cookie } : {} });
  // fetch never sends a Host header of its own choosing.
  return new Promise((resolve, reject) => {
    const req = http.get(`${server.url}${path}`, { headers: { host: init.host!, ...(init.cookie ? { cookie: init.cookie } : {}) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const headers = new Headers();
        for (const [k, v] of Object.entries(res.headers)) for (const one of [v ?? []].flat()) headers.append(k, one);
        resolve(new Response(res.statusCode === 204 || res.statusCode === 304 ? null : Buffer.concat(chunks), { status: res.statusCode, headers }));
      });
    });
    req.on('error', reject);
  });
};
const post = (path: string, fields: Record<string, string>, init: { cookie?: string; origin?: string } = {}) =>
  fetch(`${server.url}${path}`, {
    method: 'POST',
    redirect: 'manual',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...(init.cookie ? { cookie: init.cookie } : {}), ...(init.origin ? { origin: init.origin } : {}) },
    body: new URLSearchParams(fields).toString(),
  });
const local = (location: string) => location.replace('https://uploads.previews-gate.test', '');
const setCookie = (res: Response, name: string) => res.headers.getSetCookie().find((c) => c.startsWith(`${name}=`));
const cookiePair = (header: string | undefined) => header!.split(';')[0]!;
const SIGN_IN = '__Host-preview-gate-signin';
/** The short-lived cookie /login gives the browser that starts a sign-in (state + PKCE verifier), as `name=value`. */
const signInCookieOf = (start: Response) => cookiePair(setCookie(start, SIGN_IN));

/** The OAuth web flow: our /login → GitHub's authorize page (signs in `login`) → our callback. */
async function signIn(login: string, next = '/') {
  fake.signInAs = login;
  const start = await get(`/login?next=${encodeURIComponent(next)}`);
  expect(start.status).toBe(302);
  const authorize = new URL(start.headers.get('location')!);
  expect(authorize.searchParams.get('code_challenge_method')).toBe('S256');
  const approved = await fetch(authorize, { redirect: 'manual' });
  const callback = await get(local(approved.headers.get('location')!), { cookie: signInCookieOf(start) });
  return { callback, cookie: setCookie(callback, SESSION) ? cookiePair(setCookie(callback, SESSION)) : undefined };
}

/** The commit the dashboard's Publish form says the reviewer is looking at. */
const shownShaOf = async (cookie: string) => /name="sha" value="([0-9a-f]{40})"/.exec(await (await get('/', { cookie })).text())?.[1];
const csrfOf = async (cookie: string) => /name="csrf" value="([^"]+)"/.exec(await (await get('/', { cookie })).text())![1]!;

/** Dashboard → ticket → the preview host's cookie. */
async function openHidden(cookie: string) {
  const view = await get(`/view/1/1/${A.slice(0, 7)}`, { cookie });
  expect(view.status).toBe(302);
  const ticketUrl = new URL(view.headers.get('location')!);
  expect(ticketUrl.host).toBe(HOST);
  const redeemed = await get(`${ticketUrl.pathname}${ticketUrl.search}`, { host: HOST });
  return { ticketUrl, redeemed, viewCookie: setCookie(redeemed, VIEW) };
}

const auth = (host: string, cookie?: string) => get('/.preview-gate/auth', { host, cookie });

test('a maintainer signs in with GitHub; the session cookie is __Host-, HttpOnly, Secure, SameSite=Lax; the dashboard lists the hidden PR', async () => {
  const { callback, cookie } = await signIn('maintainer');
  expect(callback.status).toBe(303);
  expect(callback.headers.get('location')).toBe('/');
  expect(setCookie(callback, SESSION)).toMatch(/^__Host-preview-gate=[\w-]+; Max-Age=43200; Path=\/; Expires=[^;]+; HttpOnly; Secure; SameSite=Lax$/);
  const page = await (await get('/', { cookie })).text();
  expect(page).toContain('<h2>octo-org/docs</h2>');
  expect(page).toMatch(/#1 Pull request 1<\/a> — <span class="hidden">hidden, needs review<\/span>/);
  expect(page).toContain(`href="/repos/${DOCS}/pulls/1/commits/${A}/view"`);
  expect(page).toContain(`action="/repos/${DOCS}/pulls/1/publish"`);
  // The button's accessible name says which PR it publishes.
  expect(page).toContain('<button type="submit">Publish #1 (add the label)</button>');
  // The PR comment of a hidden PR sends maintainers here.
  expect(fake.commentText()).toContain('on the [preview-gate dashboard](https://uploads.previews-gate.test/)');
  // The user is ("github", id), the token sealed: neither token nor login-only identity in the database.
  const user = (await server.core.db.orm.select().from(users).where(eq(users.login, 'maintainer')))[0];
  const row = user && { provider: user.provider, provider_id: user.providerId, sealed: user.wrappedDek !== null ? 1 : 0 };
  expect(row).toEqual({ provider: 'github', provider_id: '1001', sealed: 1 });
  expect(JSON.stringify(await server.core.db.orm.select().from(sessions))).not.toMatch(/ghu_/);
});

test('without a session the dashboard offers sign-in; a forged or revoked session is no session', async () => {
  expect(await (await get('/')).text()).toContain('Sign in with GitHub');
  expect(await (await get('/', { cookie: `${SESSION}=forged` })).text()).toContain('Sign in with GitHub');
  const { cookie } = await signIn('maintainer');
  const { viewCookie } = await openHidden(cookie!);
  const out = await post('/logout', { csrf: await csrfOf(cookie!) }, { cookie });
  expect(out.status).toBe(303);
  expect(await (await get('/', { cookie })).text()).toContain('Sign in with GitHub');
  // The preview host's cookie died with the session.
  expect((await auth(HOST, cookiePair(viewCookie))).status).toBe(403);
});

test('sign-in refuses a state it did not issue, a code without its PKCE verifier, and GitHub being down', async () => {
  fake.signInAs = 'maintainer';
  const start = await get('/login');
  const startCookie = signInCookieOf(start);
  const authorize = new URL(start.headers.get('location')!);
  const approved = new URL((await fetch(authorize, { redirect: 'manual' })).headers.get('location')!);
  // Another state: 400, no session.
  const wrongState = await get(`/login/callback?code=${approved.searchParams.get('code')}&state=not-ours`, { cookie: startCookie });
  expect(wrongState.status).toBe(400);
  expect(await wrongState.text()).toContain('did not start here');
  expect(wrongState.headers.getSetCookie().filter((c) => c.startsWith(`${SESSION}=`))).toEqual([]);
  // A code obtained for another sign-in (its PKCE challenge), with that other sign-in's cookie and state: GitHub refuses the verifier.
  const secondStart = await get('/login');
  const second = new URL(secondStart.headers.get('location')!);
  const code = approved.searchParams.get('code');
  const mixed = await get(`/login/callback?code=${code}&state=${second.searchParams.get('state')}`, { cookie: signInCookieOf(secondStart) });
  expect(mixed.status).toBe(401);
  expect(await mixed.text()).toMatch(/Sign-in failed: GitHub refused the sign-in \(invalid_grant\)/);
  // GitHub down during the exchange: a clear page, no session.
  const thirdStart = await get('/login');
  const third = new URL(thirdStart.headers.get('location')!);
  const thirdApproved = new URL((await fetch(third, { redirect: 'manual' })).headers.get('location')!);
  await fake.close();
  const down = await get(local(thirdApproved.href), { cookie: signInCookieOf(thirdStart) });
  expect(down.status).toBe(503);
  expect(await down.text()).toContain('GitHub could not be reached');
  expect(down.headers.getSetCookie().filter((c) => c.startsWith(`${SESSION}=`))).toEqual([]);
  fake = await new FakeGitHub().start(); // for afterEach
});

test('login CSRF: a callback URL (code + state) started in one browser does not sign in another', async () => {
  fake.signInAs = 'contributor';
  fake.addUser(CONTRIBUTOR);
  // The attacker starts a sign-in as themselves and stops before the callback...
  const start = await get('/login');
  expect(setCookie(start, SIGN_IN)).toMatch(/^__Host-preview-gate-signin=[^;]+; Max-Age=600; Path=\/; Expires=[^;]+; HttpOnly; Secure; SameSite=Lax$/);
  const approved = (await fetch(new URL(start.headers.get('location')!), { redirect: 'manual' })).headers.get('location')!;
  // ...and the maintainer's browser (its own session, no sign-in cookie of that sign-in) is sent to the callback URL.
  const victim = await signIn('maintainer');
  const planted = await get(local(approved), { cookie: victim.cookie });
  expect(planted.status).toBe(400);
  expect(await planted.text()).toContain('did not start here');
  expect(planted.headers.getSetCookie().filter((c) => c.startsWith(`${SESSION}=`))).toEqual([]);
  // Another browser's sign-in cookie (another state) does not fit either.
  const other = await get('/login');
  expect((await get(local(approved), { cookie: signInCookieOf(other) })).status).toBe(400);
  // The browser that started it finishes it.
  expect((await get(local(approved), { cookie: signInCookieOf(start) })).status).toBe(303);
});

test('the server keeps no sign-in state: one started before a restart (or on another replica) finishes after it', async () => {
  fake.signInAs = 'maintainer';
  const start = await get('/login');
  const approved = (await fetch(new URL(start.headers.get('location')!), { redirect: 'manual' })).headers.get('location')!;
  // A flood of unfinished sign-ins has nothing on the server to fill or to clear (before: a Map, cleared past 10,000).
  await Promise.all(Array.from({ length: 200 }, () => get('/login')));
  await server.stop();
  server = await startTestServer({ ...fake.env, GITHUB_CLIENT_ID: fake.client.id, GITHUB_CLIENT_SECRET: fake.client.secret }, server.tmp, { seedSecret: false });
  const callback = await get(local(approved), { cookie: signInCookieOf(start) });
  expect(callback.status).toBe(303);
  expect(setCookie(callback, SESSION)).toBeDefined();
});

test('Cancel on GitHub says the sign-in was cancelled', async () => {
  fake.signInAs = undefined; // the person clicks Cancel on GitHub's authorize page
  const start = await get('/login');
  const denied = (await fetch(new URL(start.headers.get('location')!), { redirect: 'manual' })).headers.get('location')!;
  expect(denied).toContain('error=access_denied');
  const back = await get(local(denied), { cookie: signInCookieOf(start) });
  expect(back.status).toBe(400);
  const text = await back.text();
  expect(text).toContain('You cancelled the sign-in on GitHub');
  expect(text).not.toContain('expired');
  // The sign-in cookie is cleared.
  expect(setCookie(back, SIGN_IN)).toMatch(/^__Host-preview-gate-signin=;/);
});

test('a malformed cookie value is no cookie, not a 500', async () => {
  for (const cookie of [`${SESSION}=%E0%A4%A`, `${SESSION}=%`, `${SIGN_IN}=%zz; ${SESSION}=%`]) {
    const res = await get('/', { cookie });
    expect(res.status).toBe(200);
    expect(await res.text()).toContain('Sign in with GitHub');
  }
  expect((await get('/login/callback?code=x&state=y', { cookie: `${SIGN_IN}=%E0%A4%A` })).status).toBe(400);
  expect((await auth(HOST, `${VIEW}=%E0%A4%A`)).status).toBe(403);
});

test.each([['//evil.example/x'], ['/\\evil.example'], ['https://evil.example/'], ['javascript:alert(1)']])('an open redirect in next (%s) lands on the dashboard', async (next) => {
  const { callback } = await signIn('maintainer', next);
  expect(callback.headers.get('location')).toBe('/');
});

test('a maintainer opens the hidden preview: a one-time ticket for that host, exchanged for a host-only cookie; replays and other hosts get nothing', async () => {
  const { cookie } = await signIn('maintainer');
  const { ticketUrl, redeemed, viewCookie } = await openHidden(cookie!);
  expect(redeemed.status).toBe(303);
  expect(viewCookie).toMatch(/^__Host-preview-gate-view=[\w-]+; Max-Age=3600; Path=\/; Expires=[^;]+; HttpOnly; Secure; SameSite=Lax$/);
  expect(viewCookie).not.toMatch(/Domain=/i);
  expect((await auth(HOST, cookiePair(viewCookie))).status).toBe(204);
  // Replayed ticket: nothing.
  const replay = await get(`${ticketUrl.pathname}${ticketUrl.search}`, { host: HOST });
  expect(replay.status).toBe(404);
  expect(replay.headers.getSetCookie()).toEqual([]);
  // A ticket for this host used on another: nothing.
  const other = await openHiddenTicket(cookie!);
  expect((await get(`${other.pathname}${other.search}`, { host: `pr1--docs.previews.test` })).status).toBe(404);
  // The cookie of this host on another host: refused.
  expect((await auth('pr1--docs.previews.test', cookiePair(viewCookie))).status).toBe(403);
  // No cookie, a forged one: refused.
  expect((await auth(HOST)).status).toBe(403);
  expect((await auth(HOST, `${VIEW}=forged`)).status).toBe(403);
});

async function openHiddenTicket(cookie: string): Promise<URL> {
  return new URL((await get(`/view/1/1/${A.slice(0, 7)}`, { cookie })).headers.get('location')!);
}

test('an expired preview cookie, or one outliving its session, gets nothing', async () => {
  const { cookie } = await signIn('maintainer');
  const { viewCookie } = await openHidden(cookie!);
  expect((await auth(HOST, cookiePair(viewCookie))).status).toBe(204);
  await server.core.db.orm.update(previewGrants).set({ expiresAt: new Date(Date.now() - 1000) });
  expect((await auth(HOST, cookiePair(viewCookie))).status).toBe(403);
  const second = (await openHidden(cookie!)).viewCookie;
  expect((await auth(HOST, cookiePair(second))).status).toBe(204);
  await server.core.db.orm.update(sessions).set({ expiresAt: new Date(Date.now() - 1000) });
  expect((await auth(HOST, cookiePair(second))).status).toBe(403);
});

test('an expired ticket gets nothing', async () => {
  const { cookie } = await signIn('maintainer');
  const ticket = await openHiddenTicket(cookie!);
  const now = Date.now();
  jest.spyOn(Date, 'now').mockReturnValue(now + 61_000);
  expect((await get(`${ticket.pathname}${ticket.search}`, { host: HOST })).status).toBe(404);
});

test('a reader (no push access) sees no hidden preview and cannot publish; a collaborator removed loses access within 5 minutes', async () => {
  const reader = (await signIn('reader')).cookie!;
  const page = await (await get('/', { cookie: reader })).text();
  expect(page).not.toContain('/view/');
  expect(page).toContain('Publishing needs write access');
  expect((await get(`/view/1/1/${A.slice(0, 7)}`, { cookie: reader })).status).toBe(403);
  const csrf = await csrfOf(reader);
  expect((await post('/pulls/1/1/publish', { csrf }, { cookie: reader })).status).toBe(403);
  expect(fake.pull(DOCS, 1).labels).toEqual([]);

  const { viewCookie } = await openHidden((await signIn('maintainer')).cookie!);
  expect((await auth(HOST, cookiePair(viewCookie))).status).toBe(204);
  fake.collaborators.delete(`${DOCS}:maintainer`);
  expect((await auth(HOST, cookiePair(viewCookie))).status).toBe(204); // the role is cached ≤ 5 min
  const now = Date.now();
  jest.spyOn(Date, 'now').mockReturnValue(now + 5 * 60_000 + 1000);
  expect((await auth(HOST, cookiePair(viewCookie))).status).toBe(403);
});

test("a role is matched by GitHub's repository id only: another repository that took the name grants nothing on the stored one", async () => {
  // docs (7001) was deleted on GitHub, the deletion's delivery never came, and a new repository of another id
  // took the name octo-org/docs in the same installation, where the reader is a maintainer.
  const inst = fake.installations.get(42)!;
  inst.repoIds.splice(inst.repoIds.indexOf(DOCS), 1);
  fake.repos.delete(DOCS);
  fake.addRepo({ id: DOCS + 1, owner: OWNER, name: 'docs' });
  fake.collaborators.set(`${DOCS + 1}:reader`, 'maintain');
  const reader = (await signIn('reader')).cookie!;
  expect((await get(`/view/1/1/${A.slice(0, 7)}`, { cookie: reader })).status).toBe(403);
  expect(await (await get('/', { cookie: reader })).text()).not.toContain('/view/');
});

test('GitHub down: a hidden preview stays hidden for a grant whose role must be asked again', async () => {
  const { viewCookie } = await openHidden((await signIn('maintainer')).cookie!);
  const now = Date.now();
  jest.spyOn(Date, 'now').mockReturnValue(now + 6 * 60_000);
  fake.fault = { kind: 'down' };
  fake.collaborators.set(`${DOCS}:maintainer`, 'maintain');
  // The fault only touches installation-token requests; a user-token request to a closed GitHub fails too:
  await fake.close();
  expect((await auth(HOST, cookiePair(viewCookie))).status).toBe(403);
  fake = await new FakeGitHub().start();
});

test('publish and hide from the dashboard add and remove the label as the signed-in user; history names them; forms need their CSRF token; a confirmation follows', async () => {
  const maintainer = (await signIn('maintainer')).cookie!;
  const cookie = (await signIn('triager')).cookie!;
  const csrf = await csrfOf(cookie);
  expect((await post('/pulls/1/1/publish', {}, { cookie })).status).toBe(403);
  expect((await post('/pulls/1/1/publish', { csrf: 'wrong' }, { cookie })).status).toBe(403);
  expect((await post('/pulls/1/1/publish', { csrf }, { cookie, origin: 'https://evil.example' })).status).toBe(403);
  // A triager cannot open the hidden build, so is not offered to vouch for it: no button, and the route refuses.
  const triagePage = await (await get('/', { cookie })).text();
  expect(triagePage).not.toContain('Publish #1');
  expect(triagePage).toContain('Publishing needs write access');
  const shown = (await shownShaOf(maintainer))!;
  expect((await post('/pulls/1/1/publish', { csrf, sha: shown }, { cookie })).status).toBe(403);
  expect(fake.pull(DOCS, 1).labels).toEqual([]);

  const published = await post('/pulls/1/1/publish', { csrf: await csrfOf(maintainer), sha: shown }, { cookie: maintainer, origin: 'https://uploads.previews-gate.test' });
  expect(published.status).toBe(303);
  expect(published.headers.get('location')).toBe('/?done=published-1#pr-7001-1');
  expect(fake.pull(DOCS, 1).labels).toEqual(['safe for preview']);
  // The label was added with the user's token, not the app's.
  expect(fake.writes.find((w) => w.method === 'POST' && /\/issues\/1\/labels$/.test(w.path))?.body).toEqual({ labels: ['safe for preview'] });
  expect((await server.core.registry.findPullRequest(1, 1))!.visibility).toBe('public');
  let page = await (await get('/?done=published-1', { cookie })).text();
  expect(page).toContain('<p role="status" class="flash">Published #1: the label was added on GitHub.</p>');
  expect(page).toMatch(/hidden → public \(dashboard.publish, by maintainer\)/);
  expect(page).toContain(`https://${HOST}/`);
  // The stable URL (always the newest build) of a public PR.
  expect(page).toContain('<a href="https://pr1--docs.previews.test/">https://pr1--docs.previews.test/</a>');
  expect(page).toContain('<button type="submit">Hide #1 (remove the label)</button>');

  // Hiding only takes a preview away: triage may.
  const hidden = await post('/pulls/1/1/hide', { csrf }, { cookie });
  expect(hidden.status).toBe(303);
  expect(hidden.headers.get('location')).toBe('/?done=hidden-1#pr-7001-1');
  expect(fake.pull(DOCS, 1).labels).toEqual([]);
  expect((await server.core.registry.findPullRequest(1, 1))!.visibility).toBe('hidden');
  page = await (await get('/?done=hidden-1', { cookie })).text();
  expect(page).toContain('Hidden #1: the label was removed on GitHub.');
  expect(page).toMatch(/public → hidden \(dashboard.hide, by triager\)/);
  // Nothing else of `done` is echoed.
  expect(await (await get('/?done=%3Cb%3Ex', { cookie })).text()).not.toMatch(/<b>x|&lt;b&gt;x|class="flash"/);
});

test('an expired user token is refreshed with the refresh token (GitHub App user tokens last 8 hours)', async () => {
  const cookie = (await signIn('maintainer')).cookie!;
  const exchanges = () => fake.requests.filter((r) => r === 'POST /login/oauth/access_token').length;
  expect(exchanges()).toBe(1);
  const now = Date.now();
  jest.spyOn(Date, 'now').mockReturnValue(now + 9 * 3600_000);
  const page = await (await get('/', { cookie })).text();
  expect(page).toContain('<h2>octo-org/docs</h2>');
  expect(exchanges()).toBe(2);
  // The new token is sealed in place of the old one: the next role question uses it without refreshing.
  jest.spyOn(Date, 'now').mockReturnValue(now + 9 * 3600_000 + 6 * 60_000);
  expect(await (await get('/', { cookie })).text()).toContain('<h2>octo-org/docs</h2>');
  expect(exchanges()).toBe(2);
});

test('audit events are kept 90 days', async () => {
  await signIn('maintainer');
  await server.sessions.prune(new Date(Date.now() + 89 * 86_400_000));
  expect(await server.core.db.orm.select({ n: count() }).from(auditEvents)).toEqual([{ n: 1 }]);
  await server.sessions.prune(new Date(Date.now() + 91 * 86_400_000));
  expect(await server.core.db.orm.select({ n: count() }).from(auditEvents)).toEqual([{ n: 0 }]);
});

test('preview-gate audit prints who signed in, looked at a hidden preview, published and hid', async () => {
  const cookie = (await signIn('maintainer')).cookie!;
  await openHidden(cookie);
  await post('/pulls/1/1/publish', { csrf: await csrfOf(cookie), sha: A }, { cookie });
  const out: string[] = [];
  const stdout = new PassThrough().on('data', (c) => out.push(String(c)));
  expect(await runCli(['audit', '--json'], { stdin: new PassThrough(), stdout, stderr: new PassThrough(), env: dataEnv(server) })).toBe(0);
  const events = JSON.parse(out.join(''));
  expect(events.map((e: { action: string; user: string; subject: string }) => [e.action, e.user, e.subject])).toEqual([
    ['publish', 'maintainer', 'octo-org/docs#1'],
    ['view-hidden', 'maintainer', HOST],
    ['sign-in', 'maintainer', 'maintainer'],
  ]);
});

test('preview-gate sessions revoke signs a user out everywhere: dashboard and hidden-preview cookies, at once', async () => {
  const { cookie } = await signIn('maintainer');
  const { viewCookie } = await openHidden(cookie!);
  const other = (await signIn('maintainer')).cookie!; // a second browser
  expect((await auth(HOST, cookiePair(viewCookie))).status).toBe(204);
  const cli = async (...args: string[]) => {
    const out: string[] = [];
    const err: string[] = [];
    const io = { stdin: new PassThrough(), stdout: new PassThrough().on('data', (c) => out.push(String(c))), stderr: new PassThrough().on('data', (c) => err.push(String(c))), env: dataEnv(server) };
    return { code: await runCli(args, io), stdout: out.join(''), stderr: err.join('') };
  };

  expect(await cli('sessions', 'revoke', 'Maintainer')).toEqual({
    code: 0,
    stdout: `Revoked 2 session(s) of maintainer (GitHub id ${MAINTAINER.id}); their hidden-preview cookies stop working within 5 seconds.\n`,
    stderr: '',
  });
  for (const c of [cookie!, other]) expect(await (await get('/', { cookie: c })).text()).toContain('Sign in with GitHub');
  expect((await auth(HOST, cookiePair(viewCookie))).status).toBe(403);
  expect((await auditTrail(server.core.db))[0]).toMatchObject({ action: 'revoke', subject: 'maintainer', detail: '2 session(s), by the operator' });
  // Nobody of that name, and wrong arguments.
  expect(await cli('sessions', 'revoke', 'nobody')).toMatchObject({ code: 1, stderr: 'No user "nobody" has signed in to the dashboard.\n' });
  expect((await cli('sessions', 'list')).code).toBe(2);
});

test('sessions revoke refuses a login two accounts have had (a GitHub rename) and lists their ids; the id revokes the right one', async () => {
  const old = (await signIn('maintainer')).cookie!;
  // The maintainer renames their account; someone else takes the name "maintainer" and signs in.
  fake.addUser({ id: 2002, login: 'maintainer' }, { [DOCS]: 'read' });
  const newcomer = (await signIn('maintainer')).cookie!;
  const cli = async (...args: string[]) => {
    const out: string[] = [];
    const err: string[] = [];
    const io = { stdin: new PassThrough(), stdout: new PassThrough().on('data', (c) => out.push(String(c))), stderr: new PassThrough().on('data', (c) => err.push(String(c))), env: dataEnv(server) };
    return { code: await runCli(args, io), stdout: out.join(''), stderr: err.join('') };
  };
  expect(await cli('sessions', 'revoke', 'maintainer')).toEqual({
    code: 1,
    stdout: '',
    stderr: `Two or more users have signed in as "maintainer" (GitHub renames): revoke by GitHub id instead: ${MAINTAINER.id}, 2002. Nothing was revoked.\n`,
  });
  for (const c of [old, newcomer]) expect(await (await get('/', { cookie: c })).text()).not.toContain('Sign in with GitHub');
  expect((await cli('sessions', 'revoke', '2002')).code).toBe(0);
  expect(await (await get('/', { cookie: newcomer })).text()).toContain('Sign in with GitHub');
  expect(await (await get('/', { cookie: old })).text()).not.toContain('Sign in with GitHub');
});

test('two first sign-ins of one user at once share one DEK: both sessions work', async () => {
  const keys = (server.sessions as unknown as { keys: { wrapKey: (dek: Buffer) => Promise<unknown> } }).keys;
  const wrapKey = keys.wrapKey.bind(keys);
  // Both sign-ins are made to reach the DEK's creation before either stores it (a condition, not a delay).
  let waiting = 0;
  let release!: () => void;
  const both = new Promise<void>((resolve) => (release = resolve));
  jest.spyOn(keys, 'wrapKey').mockImplementation(async (dek: Buffer) => {
    if (++waiting === 2) release();
    await both;
    return wrapKey(dek);
  });
  const starts = await Promise.all([get('/login'), get('/login')]);
  fake.signInAs = 'maintainer';
  const approved = await Promise.all(starts.map(async (s) => (await fetch(new URL(s.headers.get('location')!), { redirect: 'manual' })).headers.get('location')!));
  const callbacks = await Promise.all(approved.map((a, i) => get(local(a), { cookie: signInCookieOf(starts[i]!) })));
  expect(callbacks.map((c) => c.status)).toEqual([303, 303]);
  for (const callback of callbacks) {
    const res = await get('/', { cookie: cookiePair(setCookie(callback, SESSION)) });
    expect(res.status).toBe(200);
    expect(await res.text()).toContain('<h2>octo-org/docs</h2>');
  }
});

test('a hidden-preview ticket is a row: another replica (another Sessions on the same database) redeems it, once', async () => {
  const cookie = (await signIn('maintainer')).cookie!;
  const ticket = new URL((await get(`/view/1/1/${A.slice(0, 7)}`, { cookie })).headers.get('location')!).searchParams.get('t')!;
  const { Sessions } = await import('../src/dashboard/sessions.js');
  const internals = server.sessions as unknown as { keys: never; api: never };
  const replica = new Sessions(server.core.db, internals.keys, internals.api, server.config.sessionMs);
  expect(await replica.redeemTicket(ticket, 'pr1--docs.previews.test')).toBeUndefined(); // another host: refused, and used up
  const again = new URL((await get(`/view/1/1/${A.slice(0, 7)}`, { cookie })).headers.get('location')!).searchParams.get('t')!;
  expect(await replica.redeemTicket(again, HOST)).toMatchObject({ maxAgeSeconds: 3600 });
  expect(await replica.redeemTicket(again, HOST)).toBeUndefined();
  expect(await server.sessions.redeemTicket(again, HOST)).toBeUndefined();
  expect((await get(`/.preview-gate/ticket?t=${again}`, { host: HOST })).status).toBe(404);
  // Only the ticket's sha256 is stored, and expired tickets are pruned.
  expect(JSON.stringify(await server.core.db.orm.select().from(previewTickets))).not.toContain(again);
  await get(`/view/1/1/${A.slice(0, 7)}`, { cookie });
  await server.sessions.prune(new Date(Date.now() + 61_000));
  expect(await server.core.db.orm.select({ n: count() }).from(previewTickets)).toEqual([{ n: 0 }]);
});

test('Publish is bound to the build shown: a head moved since (labelTrustsNewCommits: false) publishes nothing and says so', async () => {
  fake.repos.get(DOCS)!.files['.github/preview-gate.yml'] = 'labelTrustsNewCommits: false\n';
  const cookie = (await signIn('maintainer')).cookie!;
  const csrf = await csrfOf(cookie);
  // The reviewer looks at build A...
  const shown = await shownShaOf(cookie);
  expect(shown).toBe(A);
  // ...the author pushes B, and then the reviewer clicks Publish on the page that showed A.
  const B = sha('b2');
  fake.change(DOCS, 1, { commits: [A, B] });
  const moved = await post('/pulls/1/1/publish', { csrf, sha: shown! }, { cookie });
  expect(moved.status).toBe(409);
  const text = await moved.text();
  expect(text).toContain(`now ends at ${B.slice(0, 7)}, not at ${A.slice(0, 7)} that this page showed: nothing was published`);
  expect(fake.pull(DOCS, 1).labels).toEqual([]);
  expect(fake.writes.filter((w) => /\/labels/.test(w.path))).toEqual([]);
  expect((await server.core.registry.findPullRequest(1, 1))!.visibility).toBe('hidden');
  // Without the commit shown: refused.
  expect((await post('/pulls/1/1/publish', { csrf }, { cookie })).status).toBe(400);
  // B built and shown, published: the label is bound to B.
  expect((await server.upload(1, B, siteTarball('B'))).status).toBe(202);
  await server.previews.settled();
  expect(await shownShaOf(cookie)).toBe(B);
  expect((await post('/pulls/1/1/publish', { csrf, sha: B }, { cookie })).status).toBe(303);
  expect(fake.pull(DOCS, 1).labels).toEqual(['safe for preview']);
  expect(await server.core.registry.findPullRequest(1, 1)).toMatchObject({ visibility: 'public', labelSha: B });
});

test('roles come from one request per installation with the user\'s token (paged), not one per repository', async () => {
  // 104 more repositories in the installation the maintainer can reach; the server knows one of them, on page 2.
  for (let i = 0; i < 104; i++) fake.addRepo({ id: 8000 + i, owner: OWNER, name: `r${i}` });
  for (let i = 0; i < 104; i++) fake.collaborators.set(`${8000 + i}:maintainer`, 'write');
  await server.core.registry.ensureRepository('octo-org/r103');
  await server.core.registry.ensureRepository('octo-org/r2');
  fake.collaborators.set('8002:maintainer', 'read');
  const cookie = (await signIn('maintainer')).cookie!;
  const page = await (await get('/', { cookie })).text();
  expect(page).toContain('<h2>octo-org/docs</h2>');
  // Without PRs with builds, the others are one collapsed line (their names inside).
  expect(page).toContain('<summary>2 repositories without open pull requests with builds</summary>');
  for (const name of ['r2', 'r103']) expect(page).toContain(`<li>octo-org/${name}</li>`);
  // The hidden preview's grant (ticket and nginx's auth) asks the same source, from the same answer.
  const { viewCookie } = await openHidden(cookie);
  expect((await auth(HOST, cookiePair(viewCookie))).status).toBe(204);
  expect(fake.requests.filter((r) => r === 'GET /user/installations/42/repositories')).toHaveLength(2);
  expect(fake.requests.filter((r) => /collaborators|^GET \/repos\/[^/]+\/[^/]+$/.test(r))).toEqual([]);
});

test.each([
  ['a secondary rate limit', { kind: 'secondary-rate-limit', retryAfter: 60 } as const],
  ['a 5xx', { kind: 'down' } as const],
  ['a timeout', { kind: 'hang' } as const],
])('GitHub failing one installation\'s role lookup (%s) leaves the rest of the dashboard working, and is not cached as "no access"', async (_, fault) => {
  fake.addRepo({ id: 7002, owner: { id: 9002, login: 'other-org' }, name: 'site' }, 43);
  fake.collaborators.set('7002:maintainer', 'write');
  const site = await server.core.registry.ensureRepository('other-org/site');
  await server.core.registry.setInstallation(site.accountId, 43);
  const cookie = (await signIn('maintainer')).cookie!;
  fake.userFaults.set(43, fault);
  const failing = await get('/', { cookie });
  expect(failing.status).toBe(200);
  const text = await failing.text();
  expect(text).toContain('<h2>octo-org/docs</h2>');
  expect(text).toMatch(/GitHub could not be asked which of 1 repository of other-org you can reach \([^)]+\) — <a href="\/">retry<\/a>/);
  expect(text).not.toContain('other-org/site');
  fake.userFaults.clear();
  expect(await (await get('/', { cookie })).text()).toContain('<li>other-org/site</li>');
});

test('a dashboard of 200 installed repositories, GitHub answering in 100 ms: two round trips (figure printed with PRINT_FIGURES=1)', async () => {
  for (let i = 0; i < 199; i++) {
    fake.addRepo({ id: 8000 + i, owner: OWNER, name: `r${i}` });
    fake.collaborators.set(`${8000 + i}:maintainer`, 'write');
    await server.core.registry.ensureRepository(`octo-org/r${i}`);
  }
  const cookie = (await signIn('maintainer')).cookie!;
  fake.userLatencyMs = 100;
  const timed = async () => {
    const started = performance.now();
    const page = await (await get('/', { cookie })).text();
    return { ms: performance.now() - started, sections: (page.match(/<h2>octo-org\//g)?.length ?? 0) + (page.match(/<li>octo-org\//g)?.length ?? 0) };
  };
  const cold = await timed();
  const warm = await timed();
  expect([cold.sections, warm.sections]).toEqual([200, 200]);
  expect(fake.requests.filter((r) => r === 'GET /user/installations/42/repositories')).toHaveLength(2);
  if (process.env.PRINT_FIGURES) console.log(`dashboard, 200 repositories, GitHub at 100 ms: cold ${cold.ms.toFixed(0)} ms, cached ${warm.ms.toFixed(0)} ms`);
});

test('an expired token is refreshed once for a page that asks about several installations at once (refresh tokens are single use)', async () => {
  fake.addRepo({ id: 7002, owner: { id: 9002, login: 'other-org' }, name: 'site' }, 43);
  fake.collaborators.set('7002:maintainer', 'write');
  const site = await server.core.registry.ensureRepository('other-org/site');
  await server.core.registry.setInstallation(site.accountId, 43);
  const cookie = (await signIn('maintainer')).cookie!;
  jest.spyOn(Date, 'now').mockReturnValue(Date.now() + 9 * 3600_000);
  const page = await (await get('/', { cookie })).text();
  expect(page).toContain('<h2>octo-org/docs</h2>');
  expect(page).toContain('<li>other-org/site</li>');
  expect(fake.requests.filter((r) => r === 'POST /login/oauth/access_token')).toHaveLength(2); // the sign-in, one refresh
});

describe('the pages each build changed (issue 27, item 4)', () => {
  const page = (text: string) => `<html><body><h1>${text}</h1></body></html>`;
  const B = sha('b2');

  async function twoBuilds() {
    // A was stored by beforeEach (siteTarball, with a file list): B changes the home page, adds 12 pages (one named like markup), removes 404.html.
    fake.change(DOCS, 1, { commits: [A, B] });
    const files: Record<string, string> = { 'index.html': page('B home') };
    for (let i = 0; i < 11; i++) files[`p${String(i).padStart(2, '0')}.html`] = page(`p${i}`);
    files['"><img src=x onerror=alert(1)>.html'] = page('odd');
    expect((await server.upload(1, B, tarball(files))).status).toBe(202);
    await server.previews.settled();
  }

  test('each build says "first build" or lists its added/changed/removed pages (first 10, then a count), hidden ones through the ticket', async () => {
    await twoBuilds();
    const cookie = (await signIn('maintainer')).cookie!;
    const text = await (await get('/', { cookie })).text();
    expect(text).toContain('the first build of this pull request');
    expect(text).toMatch(/pages 1 changed, 12 added, 1 removed/);
    // Hidden: the links go through /view with the page's path, escaped; 10 shown, the rest counted.
    expect(text).toContain(`href="/repos/${DOCS}/pulls/1/commits/${B.slice(0, 7)}/view?path=%2F"`);
    expect(text).toContain(`href="/repos/${DOCS}/pulls/1/commits/${B.slice(0, 7)}/view?path=%2Fp00.html"`);
    expect(text).not.toContain('<img src=x');
    expect(text).toContain('&quot;&gt;&lt;img src=x onerror=alert(1)&gt;.html');
    expect(text).toMatch(/and 2 more added pages/);
    // A removed page is linked on the build before (A), where it still is.
    expect(text).toContain(`href="/repos/${DOCS}/pulls/1/commits/${A.slice(0, 7)}/view?path=%2F404.html"`);
    // Following one: the ticket carries the path, and redeeming it lands on that page of the preview host.
    const view = await get(`/view/1/1/${B.slice(0, 7)}?path=%2Fp00.html`, { cookie });
    const ticketUrl = new URL(view.headers.get('location')!);
    const redeemed = await get(`${ticketUrl.pathname}${ticketUrl.search}`, { host: ticketUrl.host });
    expect(redeemed.status).toBe(303);
    expect(redeemed.headers.get('location')).toBe('/p00.html');
  });

  test.each([['//evil.test'], ['/\\evil.test'], ['https://evil.test'], ['/a b'], ['/a\u0001b'], ['/a\r\nSet-Cookie:x=1']])('an open redirect through the ticket path (%j) falls back to /', async (path) => {
    const cookie = (await signIn('maintainer')).cookie!;
    const view = await get(`/view/1/1/${A.slice(0, 7)}?path=${encodeURIComponent(path)}`, { cookie });
    expect(view.status).toBe(302);
    const ticketUrl = new URL(view.headers.get('location')!);
    expect(ticketUrl.host).toBe(HOST);
    const redeemed = await get(`${ticketUrl.pathname}${ticketUrl.search}`, { host: HOST });
    expect(redeemed.status).toBe(303);
    expect(redeemed.headers.get('location')).toBe('/');
  });

  test('the redemption itself refuses a path that leaves the host, even when given by hand', async () => {
    const cookie = (await signIn('maintainer')).cookie!;
    const ticketUrl = new URL((await get(`/view/1/1/${A.slice(0, 7)}`, { cookie })).headers.get('location')!);
    const redeemed = await get(`${ticketUrl.pathname}${ticketUrl.search}&path=${encodeURIComponent('//evil.test/x')}`, { host: HOST });
    expect(redeemed.headers.get('location')).toBe('/');
    // The same by hand with a path on the host is followed: the refusal above is the check, not an ignored parameter.
    const again = new URL((await get(`/view/1/1/${A.slice(0, 7)}`, { cookie })).headers.get('location')!);
    const followed = await get(`${again.pathname}${again.search}&path=${encodeURIComponent('/guide/a%20b.html')}`, { host: HOST });
    expect(followed.headers.get('location')).toBe('/guide/a%20b.html');
  });
});

test('each PR shows its title (escaped), author with avatar, branch, fork marker, link on GitHub and its builds\' ages; needs-review first', async () => {
  // PR 2: from a fork, a title that is markup, public (labelled); PR 1 (beforeEach) is hidden with a build: it needs review.
  fake.addPull(DOCS, { number: 2, user: { id: 777, login: 'forker' }, commits: [sha('f2')], title: '<img src=x onerror=alert(1)> & "fix"', headRef: 'patch-1', fork: true, labels: ['safe for preview'] });
  expect((await server.upload(2, sha('f2'), siteTarball('fork'))).status).toBe(201);
  await server.previews.settled();
  const cookie = (await signIn('maintainer')).cookie!;
  const text = await (await get('/', { cookie })).text();
  expect(text).not.toContain('<img src=x');
  expect(text).toContain('&lt;img src=x onerror=alert(1)&gt; &amp; &quot;fix&quot;');
  expect(text).toMatch(/href="http:\/\/127\.0\.0\.1:\d+\/octo-org\/docs\/pull\/2"/);
  expect(text).toMatch(/<img src="https:\/\/avatars\.githubusercontent\.test\/u\/777\?v=4" alt="" width="20" height="20"[^>]*> forker/);
  expect(text).toContain('<code>patch-1</code>');
  expect(text).toMatch(/<span class="fork">fork<\/span>/);
  expect(text).toMatch(/<time datetime="\d{4}-\d\d-\d\dT[\d:.]+Z">(\d+ minutes?|less than a minute) ago<\/time>/);
  // Needs review (hidden, with builds) first, although #2 is newer.
  expect(text.indexOf('id="pr-7001-1"')).toBeLessThan(text.indexOf('id="pr-7001-2"'));
  expect(text).toMatch(/<span class="hidden">hidden, needs review<\/span>/);
});

test('each PR shows its head commit\'s own age (from the facts already read), and says when the head has no build yet; a page load asks GitHub nothing about PRs', async () => {
  // PR 2's head was pushed 3 hours ago; its build is stored now.
  const X = sha('c1');
  fake.addPull(DOCS, { number: 2, user: CONTRIBUTOR, commits: [X], title: 'Old head' }).updatedAt = new Date(Date.now() - 3 * 3600_000);
  expect((await server.upload(2, X, siteTarball('old head'))).status).toBe(202);
  await server.previews.settled();
  const cookie = (await signIn('maintainer')).cookie!;
  const before = fake.requests.length;
  const section = (text: string) => text.slice(text.indexOf('id="pr-7001-2"'), text.indexOf('</section>', text.indexOf('id="pr-7001-2"')));
  const first = section(await (await get('/', { cookie })).text());
  expect(first).toMatch(/head <code>c1c1c1c<\/code> pushed <time datetime="[^"]+">3 hours ago<\/time>/);
  expect(first).not.toContain('not built yet');
  expect(fake.requests.slice(before).filter((r) => r.includes('/pulls') || r.includes('/commits'))).toEqual([]);

  // A push: GitHub's synchronize delivery; the head is now Y, pushed just now, and has no build yet.
  const Y = sha('c2');
  fake.change(DOCS, 2, { commits: [X, Y] });
  expect((await sendWebhook(server.url, 'pull_request', fake.pullRequestEvent(DOCS, 2, 'synchronize'))).status).toBe(200);
  await server.previews.settled();
  const second = section(await (await get('/', { cookie })).text());
  expect(second).toMatch(/head <code>c2c2c2c<\/code> pushed <time datetime="[^"]+">less than a minute ago<\/time> \(not built yet\)/);

  // A lagging answer (older than the facts applied) naming another head: that head's age is not known, not guessed.
  Object.assign(fake.pull(DOCS, 2), { commits: [X] });
  fake.pull(DOCS, 2).updatedAt = new Date(Date.now() - 3600_000);
  expect((await sendWebhook(server.url, 'pull_request', fake.pullRequestEvent(DOCS, 2, 'edited'))).status).toBe(200);
  await server.previews.settled();
  const third = section(await (await get('/', { cookie })).text());
  expect(third).not.toContain('pushed');
  expect(await server.core.registry.findPullRequest(1, 2)).toMatchObject({ headSha: X, headAt: null });
});

test('needs review comes first across repositories, not per repository', async () => {
  // octo-org/api sorts before octo-org/docs: it has a public PR (#3, labelled) and a hidden one (#4); docs has hidden #1.
  fake.addRepo({ id: 7003, owner: OWNER, name: 'api' });
  fake.collaborators.set('7003:maintainer', 'write');
  const api = await server.core.registry.ensureRepository('octo-org/api');
  await server.core.secrets.set(api.accountId, api.id, UPLOAD_SECRET_NAME, Buffer.from(UPLOAD_SECRET));
  fake.addPull(7003, { number: 3, user: CONTRIBUTOR, commits: [sha('b3')], labels: ['safe for preview'] });
  fake.addPull(7003, { number: 4, user: CONTRIBUTOR, commits: [sha('b4')] });
  for (const n of [3, 4]) {
    const token = await server.token({ slug: 'octo-org/api', 'pull-request': n });
    expect([201, 202]).toContain((await server.upload(n, sha(`b${n}`), siteTarball(`api ${n}`), { token })).status);
  }
  await server.previews.settled();
  const cookie = (await signIn('maintainer')).cookie!;
  const text = await (await get('/', { cookie })).text();
  const order = [...text.matchAll(/<h2>([^<]+)<\/h2>|<h3 id="pr-(\d+)-(\d+)">/g)].map((m) => m[1] ?? `${m[2]}#${m[3]}`);
  expect(order).toEqual(['octo-org/api', '7003#4', 'octo-org/docs', '7001#1', 'octo-org/api', '7003#3']);
});

test('search and filters are a GET form (title, author, number, repository, visibility, needs review, mine), paged 20 at a time with the query kept', async () => {
  // 22 PRs with builds: #1 (beforeEach, hidden), #2..#22; #5 by the maintainer; the even ones labelled (public).
  for (let n = 2; n <= 22; n++) {
    const user = n === 5 ? MAINTAINER : CONTRIBUTOR;
    fake.addPull(DOCS, { number: n, user, commits: [sha(`e${n}`)], title: n === 5 ? 'Fix the navigation' : `Docs change ${n}`, labels: n % 2 ? [] : ['safe for preview'] });
    expect([201, 202]).toContain((await server.upload(n, sha(`e${n}`), siteTarball(`pr ${n}`))).status);
  }
  await server.previews.settled();
  const cookie = (await signIn('maintainer')).cookie!;
  const prsOn = (text: string) => [...text.matchAll(/<h3 id="pr-7001-(\d+)">/g)].map((m) => Number(m[1]));
  const first = await (await get('/', { cookie })).text();
  expect(first).toContain('<form method="get" action="/" role="search"');
  expect(first).toContain('<label for="f-q">Title, author or number</label>');
  expect(first).toContain('Showing 1–20 of 22 pull requests with builds.');
  // Needs review (hidden: the odd ones) first.
  expect(prsOn(first).slice(0, 11)).toEqual([21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1]);
  expect(first).toContain('href="/?page=2" rel="next"');
  const second = await (await get('/?page=2', { cookie })).text();
  expect(prsOn(second)).toEqual([4, 2]);
  expect(second).toContain('href="/" rel="prev"');

  expect(prsOn(await (await get('/?q=navigation', { cookie })).text())).toEqual([5]);
  expect(prsOn(await (await get('/?q=%2312', { cookie })).text())).toEqual([12]);
  expect(prsOn(await (await get('/?q=12', { cookie })).text())).toEqual([12]);
  expect(prsOn(await (await get('/?mine=1', { cookie })).text())).toEqual([5]);
  expect(prsOn(await (await get('/?q=contrib&visibility=public&repo=octo-org%2Fdocs', { cookie })).text())).toEqual([22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2]);
  expect(prsOn(await (await get('/?review=1', { cookie })).text())).toEqual([21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1]);
  const none = await (await get('/?repo=octo-org%2Fnothing&q=%3Cscript%3E', { cookie })).text();
  expect(none).toContain('No pull request matches these filters.');
  expect(none).toContain('value="&lt;script&gt;"');
  expect(none).not.toContain('<script>');
  // The query is kept in the paging links.
  const paged = await (await get('/?q=contrib', { cookie })).text();
  expect(paged).toContain('Showing 1–20 of 21 pull requests with builds.');
  expect(paged).toContain('href="/?q=contrib&amp;page=2" rel="next"');
  // Bad values are taken as absent, never a 500.
  for (const bad of ['page=-1', 'page=abc', 'page=99999', 'visibility=secret', 'q=' + 'x'.repeat(300), 'q=a&q=b', 'review=yes']) {
    expect((await get(`/?${bad}`, { cookie })).status).toBe(200);
  }
});

test('links carry GitHub\'s ids (repository id, PR number, SHA); the old row-id links keep working; anything else is a clean 404', async () => {
  const cookie = (await signIn('maintainer')).cookie!;
  const byGitHub = await get(`/repos/${DOCS}/pulls/1/commits/${A}/view`, { cookie });
  expect(byGitHub.status).toBe(302);
  expect(new URL(byGitHub.headers.get('location')!).host).toBe(HOST);
  expect((await get(`/view/1/1/${A.slice(0, 7)}`, { cookie })).status).toBe(302); // the old form
  for (const path of [`/repos/1/pulls/1/commits/${A}/view`, `/repos/${DOCS}/pulls/9/commits/${A}/view`, `/repos/${DOCS}/pulls/1/commits/xyz/view`, `/repos/${DOCS}/pulls/1/commits/${A}0/view`, `/view/${DOCS}/1/${A.slice(0, 7)}`]) {
    const res = await get(path, { cookie });
    expect([path, res.status]).toEqual([path, 404]);
    expect(await res.text()).toContain('There is no such preview.');
  }
  const csrf = await csrfOf(cookie);
  expect((await post(`/repos/1/pulls/1/publish`, { csrf, sha: A }, { cookie })).status).toBe(404);
  expect((await post(`/repos/${DOCS}/pulls/1/publish`, { csrf, sha: A }, { cookie })).status).toBe(303);
  expect(fake.pull(DOCS, 1).labels).toEqual(['safe for preview']);
});
