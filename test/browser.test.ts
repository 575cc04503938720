/**
 * The dashboard and hidden previews in a real headless browser (Debian's chromium driven by playwright-core),
 * through real nginx with TLS, against the stand-in GitHub (issue 14): sign in → the dashboard lists the PR →
 * the hidden preview with its banner → publish → the public URL serves without a cookie → hide again.
 * Screenshots: test-artifacts/screenshots/.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import nock from 'nock';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { FakeGitHub } from './helpers/fake-github.js';
import { freePort, startNginx, type RunningNginx } from './helpers/nginx.js';
import { sha, startTestServer, type TestServer } from './helpers/server.js';
import { tarball } from './helpers/tarballs.js';

const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => fs.existsSync(p));
const MAIN_HOST = 'uploads.test';
const DOCS = 7001;
const A = sha('a1');
const HIDDEN_URL = `https://pr1-${A.slice(0, 7)}--docs.previews.test/`;
const SCREENSHOTS = path.resolve('test-artifacts', 'screenshots');
const AXE = createRequire(import.meta.url).resolve('axe-core/axe.min.js');

let fake: FakeGitHub;
let server: TestServer;
let nginx: RunningNginx;
let proxy: net.Server;
let browser: Browser;
let proxyPort: number;

beforeAll(async () => {
  if (!CHROMIUM) throw new Error('chromium is not installed: run `apt-get install -y chromium` (.ci/run does) — the browser test needs it.');
  nock.enableNetConnect('127.0.0.1');
  fake = await new FakeGitHub().start();
  fake.addRepo({ id: DOCS, owner: { id: 9001, login: 'octo-org' }, name: 'docs' });
  fake.addUser({ id: 1001, login: 'maintainer' }, { [DOCS]: 'maintain' });
  fake.signInAs = 'maintainer';
  server = await startTestServer({ ...fake.env, PUBLIC_URL: `https://${MAIN_HOST}`, GITHUB_CLIENT_ID: fake.client.id, GITHUB_CLIENT_SECRET: fake.client.secret });
  fs.chmodSync(server.tmp, 0o755);
  // A certificate for the upload host and every preview host (the browser is told to accept it).
  const certDir = path.join(server.tmp, 'tls');
  fs.mkdirSync(certDir);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=uploads.test', '-addext', 'subjectAltName=DNS:uploads.test,DNS:*.previews.test',
    '-keyout', path.join(certDir, 'key.pem'), '-out', path.join(certDir, 'cert.pem')], { stdio: 'ignore' });
  const tlsPort = await freePort();
  nginx = await startNginx(path.join(server.tmp, 'nginx'), {
    previewDomain: 'previews.test',
    buildsDir: server.config.buildsDir,
    upstream: new URL(server.url).host,
    publicHost: MAIN_HOST,
    maxUploadBytes: server.config.maxUploadBytes,
    tls: { certificate: path.join(certDir, 'cert.pem'), key: path.join(certDir, 'key.pem'), listen: `127.0.0.1:${tlsPort}` },
  });
  // Every https host the browser opens (uploads.test, *.previews.test) reaches nginx: a CONNECT proxy.
  proxy = net.createServer((client) => {
    client.once('data', (head) => {
      if (!/^CONNECT [^ ]+:443 /.test(head.toString())) return void client.end('HTTP/1.1 403 Forbidden\r\n\r\n');
      const upstream = net.connect(tlsPort, '127.0.0.1', () => {
        client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
        client.pipe(upstream).pipe(client);
      });
      upstream.on('error', () => client.destroy());
      client.on('error', () => upstream.destroy());
    });
  });
  proxyPort = await new Promise<number>((resolve) => proxy.listen(0, '127.0.0.1', () => resolve((proxy.address() as net.AddressInfo).port)));
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [`--proxy-server=http://127.0.0.1:${proxyPort}`, '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  fs.mkdirSync(SCREENSHOTS, { recursive: true });

  fake.addPull(DOCS, { number: 1, user: { id: 555, login: 'contributor' }, commits: [A] });
  const site = tarball({
    'index.html': '<!doctype html><html><head><title>A contributor\'s docs</title><script src="/app.js"></script></head><body><h1>Docs from a contributor</h1><p>Not reviewed yet.</p></body></html>',
    'app.js': 'window.seenCookie = document.cookie;',
  });
  expect((await server.upload(1, A, site)).status).toBe(202);
  await server.previews.settled();
}, 60_000);

afterAll(async () => {
  await browser?.close();
  proxy?.close();
  await nginx?.stop();
  await server?.close();
  await fake.close();
});

test('sign in, see the hidden preview with its banner, publish it, hide it again', async () => {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();

  await page.goto(`https://${MAIN_HOST}/`);
  await page.getByRole('link', { name: 'Sign in with GitHub' }).click();
  await page.waitForURL(`https://${MAIN_HOST}/`);
  await page.getByRole('heading', { name: 'octo-org/docs' }).waitFor();
  await page.getByRole('heading', { name: /#1 Pull request 1 — hidden, needs review/ }).waitFor();
  // The session cookie: host-only, HttpOnly, Secure, SameSite=Lax, as the browser stored it.
  const [session] = await context.cookies(`https://${MAIN_HOST}/`);
  expect(session).toMatchObject({ name: '__Host-preview-gate', domain: MAIN_HOST, httpOnly: true, secure: true, sameSite: 'Lax' });
  await page.screenshot({ path: path.join(SCREENSHOTS, 'dashboard.png'), fullPage: true });

  // Keyboard only: the link to the hidden preview is reachable and opens it.
  await page.getByRole('link', { name: 'open the hidden preview' }).focus();
  await Promise.all([page.waitForURL(HIDDEN_URL), page.keyboard.press('Enter')]);
  await page.getByRole('heading', { name: 'Docs from a contributor' }).waitFor();
  const banner = page.getByRole('note');
  expect(await banner.textContent()).toContain('Hidden preview — not reviewed.');
  expect(await banner.getByRole('link', { name: 'The pull request' }).getAttribute('href')).toMatch(/\/octo-org\/docs\/pull\/1$/);
  await page.screenshot({ path: path.join(SCREENSHOTS, 'hidden-preview.png'), fullPage: true });
  // The preview's own JavaScript can read neither cookie, nor use the session on the dashboard.
  expect(await page.evaluate(() => (window as unknown as { seenCookie: string }).seenCookie)).toBe('');
  const [viewCookie] = await context.cookies(HIDDEN_URL);
  expect(viewCookie).toMatchObject({ name: '__Host-preview-gate-view', domain: new URL(HIDDEN_URL).host, httpOnly: true, secure: true });
  await page.evaluate(() =>
    fetch('https://uploads.test/pulls/1/1/publish', { method: 'POST', mode: 'no-cors', credentials: 'include', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'csrf=guess' }).catch(() => undefined),
  );
  expect(fake.pull(DOCS, 1).labels).toEqual([]);

  // Another browser without the cookie: the same URL is a 404.
  const stranger = await browser.newContext({ ignoreHTTPSErrors: true });
  const strangerPage = await stranger.newPage();
  expect((await strangerPage.goto(HIDDEN_URL))!.status()).toBe(404);

  // Publish from the dashboard: the label is added as the maintainer, the preview is public for everyone.
  await page.goto(`https://${MAIN_HOST}/`);
  await page.getByRole('button', { name: 'Publish #1 (add the label)' }).click();
  await page.getByRole('heading', { name: /#1 Pull request 1 — public/ }).waitFor();
  expect(await page.getByRole('status').filter({ hasText: 'Published #1' }).textContent()).toBe('Published #1: the label was added on GitHub.');
  expect(await page.textContent('main')).toMatch(/hidden → public \(dashboard.publish, by maintainer\)/);
  expect(fake.pull(DOCS, 1).labels).toEqual(['safe for preview']);
  const open = await strangerPage.goto(HIDDEN_URL);
  expect(open!.status()).toBe(200);
  expect(await strangerPage.getByRole('heading', { name: 'Docs from a contributor' }).count()).toBe(1);
  expect(await strangerPage.getByRole('note').count()).toBe(0);

  // Hide again.
  await page.getByRole('button', { name: 'Hide #1 (remove the label)' }).click();
  await page.getByRole('heading', { name: /#1 Pull request 1 — hidden/ }).waitFor();
  await page.getByRole('status').filter({ hasText: 'Hidden #1: the label was removed on GitHub.' }).waitFor();
  expect(fake.pull(DOCS, 1).labels).toEqual([]);
  expect((await strangerPage.goto(HIDDEN_URL))!.status()).toBe(404);
  await Promise.all([context.close(), stranger.close()]);
}, 60_000);

test('login CSRF: a callback URL started in one browser, finished in another, signs the other in as nobody', async () => {
  const attacker = await browser.newContext({ ignoreHTTPSErrors: true });
  const victim = await browser.newContext({ ignoreHTTPSErrors: true });
  // The attacker's browser starts a sign-in and, on GitHub's consent page, keeps the callback URL instead of following it.
  fake.consentPage = true;
  const attackerPage = await attacker.newPage();
  await attackerPage.goto(`https://${MAIN_HOST}/login`);
  const callbackUrl = (await attackerPage.locator('#authorize').getAttribute('href'))!;
  fake.consentPage = false;
  expect(callbackUrl).toMatch(/\/login\/callback\?code=\w+&state=/);
  // The victim's browser is sent there (a link, an image, a redirect): no session, the sign-in page says why.
  const victimPage = await victim.newPage();
  const answer = await victimPage.goto(callbackUrl);
  expect(answer!.status()).toBe(400);
  expect(await victimPage.getByRole('alert').textContent()).toContain('did not start here');
  expect((await victim.cookies(`https://${MAIN_HOST}/`)).map((c) => c.name)).not.toContain('__Host-preview-gate');
  // The browser that started it can finish it.
  await attackerPage.goto(callbackUrl);
  await attackerPage.getByRole('heading', { name: 'octo-org/docs' }).waitFor();
  expect((await attacker.cookies(`https://${MAIN_HOST}/`)).map((c) => c.name)).toContain('__Host-preview-gate');
  await Promise.all([attacker.close(), victim.close()]);
}, 60_000);

test('the hidden-preview banner never covers the page, collapses, stays collapsed after a reload, and sets no cookie', async () => {
  const C = sha('c3');
  const sha7 = C.slice(0, 7);
  const url = `https://pr2-${sha7}--docs.previews.test/`;
  fake.addPull(DOCS, { number: 2, user: { id: 555, login: 'contributor' }, commits: [C] });
  const site = tarball({
    'index.html':
      '<!doctype html><html lang="en"><head><title>Footer</title></head><body style="margin:0"><main><h1>A page with its own footer</h1><p>Text.</p></main>' +
      '<footer style="position:fixed;bottom:0;left:0;right:0;height:48px;background:#def">The page\'s own fixed footer</footer></body></html>',
  });
  expect((await server.upload(2, C, site)).status).toBe(202);
  await server.previews.settled();

  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 800, height: 400 } });
  const page = await context.newPage();
  await page.goto(`https://${MAIN_HOST}/`);
  await page.getByRole('link', { name: 'Sign in with GitHub' }).click();
  await page.waitForURL(`https://${MAIN_HOST}/`);
  await Promise.all([page.waitForURL(url), page.locator(`a[href*="/${sha7}"]`).first().click()]);
  await page.getByRole('heading', { name: 'A page with its own footer' }).waitFor();
  const cookiesBefore = (await context.cookies()).map((c) => `${c.domain} ${c.name}`).sort();

  const banner = page.getByRole('note', { name: 'preview-gate' });
  const footer = page.locator('footer');
  // Moved to the top of the page by its script, in the flow: it takes its own space, the page starts below it.
  expect(await banner.evaluate((el) => el === document.body.firstElementChild && getComputedStyle(el).position)).toBe('static');
  const overlap = async () => {
    const [a, b] = [(await banner.boundingBox())!, (await footer.boundingBox())!];
    return a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;
  };
  expect(await overlap()).toBe(false);
  const heading = (await page.getByRole('heading', { name: 'A page with its own footer' }).boundingBox())!;
  expect(heading.y).toBeGreaterThanOrEqual((await banner.boundingBox())!.height);
  expect(await banner.getByRole('link', { name: 'The pull request' }).getAttribute('href')).toMatch(/\/octo-org\/docs\/pull\/2$/);
  expect(await banner.getByRole('link', { name: 'The preview-gate dashboard' }).getAttribute('href')).toBe(`https://${MAIN_HOST}/`);
  // Nothing on it can publish: links only.
  expect(await banner.locator('form, button, input').count()).toBe(0);
  await page.screenshot({ path: path.join(SCREENSHOTS, 'hidden-preview-footer.png') });

  // Collapsed from the keyboard: the summary is the control.
  await banner.locator('summary').focus();
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => !document.querySelector('[aria-label="preview-gate"] details')!.hasAttribute('open'));
  expect(await banner.getByRole('link', { name: 'The pull request' }).isVisible()).toBe(false);
  await page.waitForFunction(() => sessionStorage.getItem('preview-gate-banner') === 'closed');
  expect(await overlap()).toBe(false);

  // Still collapsed after a reload (sessionStorage, per host), and still not over the footer.
  await page.reload();
  await page.getByRole('heading', { name: 'A page with its own footer' }).waitFor();
  expect(await banner.locator('details').evaluate((d) => (d as HTMLDetailsElement).open)).toBe(false);
  expect(await overlap()).toBe(false);
  // Opened again: remembered the other way.
  await banner.locator('summary').click();
  await page.waitForFunction(() => sessionStorage.getItem('preview-gate-banner') === 'open');
  // No cookie came from the banner.
  expect((await context.cookies()).map((c) => `${c.domain} ${c.name}`).sort()).toEqual(cookiesBefore);
  await context.close();

  // Without JavaScript: where nginx put it, at the end of the page, in its flow; it still collapses (a native <details>).
  const noScript = await browser.newContext({ ignoreHTTPSErrors: true, javaScriptEnabled: false });
  const plain = await noScript.newPage();
  await plain.goto(`https://${MAIN_HOST}/`);
  await plain.getByRole('link', { name: 'Sign in with GitHub' }).click();
  await plain.waitForURL(`https://${MAIN_HOST}/`);
  await Promise.all([plain.waitForURL(url), plain.locator(`a[href*="/${sha7}"]`).first().click()]);
  const last = plain.getByRole('note', { name: 'preview-gate' });
  expect(await last.evaluate((el) => el.nextElementSibling?.tagName === 'SCRIPT' && !el.nextElementSibling.nextElementSibling && getComputedStyle(el).position)).toBe('static');
  await last.locator('summary').click();
  expect(await last.getByRole('link', { name: 'The pull request' }).isVisible()).toBe(false);
  await noScript.close();
}, 60_000);

test('at 320 px the dashboard does not scroll sideways; the focus ring on the dark header is at least 3:1', async () => {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 320, height: 640 } });
  const page = await context.newPage();
  await page.goto(`https://${MAIN_HOST}/`);
  await page.getByRole('link', { name: 'Sign in with GitHub' }).click();
  await page.waitForURL(`https://${MAIN_HOST}/`);
  await page.getByRole('heading', { name: 'octo-org/docs' }).waitFor();
  expect(await page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(320);
  await page.screenshot({ path: path.join(SCREENSHOTS, 'dashboard-320.png'), fullPage: true });
  // Keyboard focus on the header's button: its ring's colour against the header's background.
  const signOut = page.getByRole('button', { name: 'Sign out' });
  await signOut.focus();
  await page.keyboard.press('Shift+Tab');
  await page.keyboard.press('Tab');
  const [ring, background] = await signOut.evaluate((el) => [getComputedStyle(el).outlineColor, getComputedStyle(el.closest('header')!).backgroundColor]);
  expect(contrast(ring!, background!)).toBeGreaterThanOrEqual(3);
  await context.close();
}, 60_000);

test('axe-core finds no violation on any dashboard page, nor on the hidden preview\'s banner (open or collapsed)', async () => {
  // A fork PR (public), a hidden PR with two builds (so its changed pages are listed), a repository with nothing to show.
  const [D1, D2, F] = [sha('d1'), sha('d2'), sha('f3')];
  fake.addPull(DOCS, { number: 3, user: { id: 777, login: 'forker' }, commits: [F], title: 'Fix the <nav> & "footer"', headRef: 'patch-1', fork: true, labels: ['safe for preview'] });
  fake.addPull(DOCS, { number: 4, user: { id: 1001, login: 'maintainer' }, commits: [D1], title: 'A new guide', headRef: 'guide' });
  const docsPage = (title: string, text: string) =>
    `<!doctype html><html lang="en"><head><title>${title}</title><link rel="stylesheet" href="/site.css"></head><body><main><h1>${title}</h1><p>${text}</p></main></body></html>`;
  expect((await server.upload(3, F, tarball({ 'index.html': docsPage('Docs', 'From a fork.') }))).status).toBe(201);
  const kept = docsPage('Kept', 'The same bytes in both builds, restyled by the new site.css.');
  expect((await server.upload(4, D1, tarball({ 'index.html': docsPage('Docs', 'Before.'), 'kept.html': kept, 'old.html': docsPage('Old', 'Gone soon.'), 'site.css': 'body{margin:0}' }))).status).toBe(202);
  await server.previews.settled();
  fake.change(DOCS, 4, { commits: [D1, D2] });
  expect((await server.upload(4, D2, tarball({ 'index.html': docsPage('Docs', 'After.'), 'kept.html': kept, 'guide/start.html': docsPage('Start', 'New.'), 'site.css': 'body{margin:1rem}' }))).status).toBe(202);
  fake.addRepo({ id: 7002, owner: { id: 9001, login: 'octo-org' }, name: 'empty' });
  fake.collaborators.set('7002:maintainer', 'write');
  await server.core.registry.ensureRepository('octo-org/empty');
  await server.previews.settled();

  const signedOut = await browser.newContext({ ignoreHTTPSErrors: true, bypassCSP: true });
  const visitor = await signedOut.newPage();
  // The check itself can fail: an image without a text alternative and a page without a language are found.
  await visitor.setContent('<!doctype html><html><head><title>x</title></head><body><main><img src="data:,"></main></body></html>');
  expect((await axeViolations(visitor)).map((v) => v.split(' ')[0])).toEqual(expect.arrayContaining(['html-has-lang', 'image-alt']));
  await expectNoViolations(visitor, 'sign-in page', `https://${MAIN_HOST}/`);
  await expectNoViolations(visitor, 'sign-in cancelled on GitHub', `https://${MAIN_HOST}/login/callback?error=access_denied`);

  const context = await browser.newContext({ ignoreHTTPSErrors: true, bypassCSP: true, viewport: { width: 1280, height: 1000 } });
  // The stand-in's avatar URLs lead nowhere: a plain disc instead of a broken image in the screenshot.
  await context.route('https://avatars.githubusercontent.test/**', (route) =>
    route.fulfill({ contentType: 'image/svg+xml', body: '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 20 20"><circle cx="10" cy="10" r="10" fill="#8c959f"/></svg>' }),
  );
  const page = await signedIn(context, 'maintainer');
  await page.getByRole('heading', { name: /#4 A new guide/ }).waitFor();
  const changed = page.getByRole('cell', { name: /pages 1 changed, 1 loading changed files, 1 added, 1 removed/ });
  expect(await changed.getByRole('listitem').filter({ hasText: /^loading changed files:/ }).getByRole('link').textContent()).toBe('kept.html');
  await expectNoViolations(page, 'dashboard (fork PR, hidden builds, changed pages, a repository folded)');
  // The README's screenshot: UPDATE_DOCS_SCREENSHOT=1 writes it into docs/ (other runs leave the tree clean).
  await page.screenshot({ path: path.join(SCREENSHOTS, 'dashboard-walk.png') });
  if (process.env.UPDATE_DOCS_SCREENSHOT) fs.copyFileSync(path.join(SCREENSHOTS, 'dashboard-walk.png'), path.resolve('docs', 'dashboard.png'));
  await expectNoViolations(page, 'search results', `https://${MAIN_HOST}/?q=guide`);
  await expectNoViolations(page, 'filters matching nothing', `https://${MAIN_HOST}/?visibility=public&mine=1`);
  await expectNoViolations(page, 'an error page', `https://${MAIN_HOST}/repos/${DOCS}/pulls/99/commits/${D2}/view`);

  // Publish and Hide from the keyboard: each confirmation page.
  await page.goto(`https://${MAIN_HOST}/?q=%234`);
  await page.getByRole('button', { name: 'Publish #4 (add the label)' }).focus();
  await Promise.all([page.waitForURL(/done=published-4/), page.keyboard.press('Enter')]);
  await expectNoViolations(page, 'confirmation after Publish');
  await page.getByRole('button', { name: 'Hide #4 (remove the label)' }).focus();
  await Promise.all([page.waitForURL(/done=hidden-4/), page.keyboard.press('Enter')]);
  await expectNoViolations(page, 'confirmation after Hide');

  // The hidden preview: only the banner is preview-gate's (the rest of the page is the PR author's).
  await page.goto(`https://${MAIN_HOST}/?q=%234`);
  await Promise.all([page.waitForURL(`https://pr4-${D2.slice(0, 7)}--docs.previews.test/`), page.getByRole('link', { name: 'open the hidden preview' }).first().click()]);
  const banner = page.getByRole('note', { name: 'preview-gate' });
  await expectNoViolations(page, 'hidden preview, banner open', undefined, '[aria-label="preview-gate"]');
  await banner.locator('summary').click();
  await page.waitForFunction(() => sessionStorage.getItem('preview-gate-banner') === 'closed');
  await expectNoViolations(page, 'hidden preview, banner collapsed', undefined, '[aria-label="preview-gate"]');

  // Paging: more than 20 pull requests with builds.
  for (let n = 5; n <= 22; n++) {
    fake.addPull(DOCS, { number: n, user: { id: 555, login: 'contributor' }, commits: [sha(`e${n}`)], title: `Docs change ${n}` });
    expect((await server.upload(n, sha(`e${n}`), tarball({ 'index.html': docsPage('Docs', `Change ${n}.`) }))).status).toBe(202);
  }
  await server.previews.settled();
  await expectNoViolations(page, 'first of two pages', `https://${MAIN_HOST}/`);
  await page.getByRole('link', { name: 'Next page' }).waitFor();
  await expectNoViolations(page, 'second page', `https://${MAIN_HOST}/?page=2`);
  await page.getByRole('link', { name: 'Previous page' }).waitFor();
  await context.close();

  // Someone who collaborates on no installed repository: the empty dashboard.
  fake.addUser({ id: 1009, login: 'newcomer' });
  const empty = await browser.newContext({ ignoreHTTPSErrors: true, bypassCSP: true });
  const newcomer = await signedIn(empty, 'newcomer');
  await newcomer.getByText('No repository with the app installed is one you collaborate on.').waitFor();
  await expectNoViolations(newcomer, 'empty dashboard');
  fake.signInAs = 'maintainer';
  await Promise.all([signedOut.close(), empty.close()]);
}, 120_000);

/** A page of `context` signed in on the dashboard as `login` (through the stand-in's OAuth flow). */
async function signedIn(context: BrowserContext, login: string): Promise<Page> {
  fake.signInAs = login;
  const page = await context.newPage();
  await page.goto(`https://${MAIN_HOST}/`);
  await page.getByRole('link', { name: 'Sign in with GitHub' }).click();
  await page.waitForURL(`https://${MAIN_HOST}/`);
  return page;
}

/**
 * axe-core (every rule it runs by default — WCAG 2.0–2.2 A and AA, and its best practices — and target-size) on the page as it is,
 * or after going to `url`; `include`: only that part of the page. The failure names the page and each rule broken.
 */
async function expectNoViolations(page: Page, name: string, url?: string, include?: string): Promise<void> {
  if (url) await page.goto(url);
  expect({ page: name, violations: await axeViolations(page, include) }).toEqual({ page: name, violations: [] });
}

/** axe-core's violations on `page` (or the part `include` selects), one line each: rule, impact, help, the elements. */
async function axeViolations(page: Page, include?: string): Promise<string[]> {
  await page.addScriptTag({ path: AXE });
  return page.evaluate(async (selector) => {
    const axe = (window as unknown as { axe: { run: (context: unknown, options: unknown) => Promise<AxeResults> } }).axe;
    // target-size is WCAG 2.2 AA (2.5.8) but off in axe by default.
    const results = await axe.run(selector ? { include: [selector] } : document, { resultTypes: ['violations'], rules: { 'target-size': { enabled: true } } });
    return results.violations.map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => `${n.target.join(' ')}: ${n.failureSummary}`).join(' | ')}`);
  }, include);
}

interface AxeResults {
  violations: { id: string; impact: string; help: string; nodes: { target: string[]; failureSummary: string }[] }[];
}

/** WCAG's contrast ratio of two CSS rgb() colours. */
function contrast(a: string, b: string): number {
  const luminance = (css: string) => {
    const [r, g, bl] = css.match(/[\d.]+/g)!.slice(0, 3).map((v) => {
      const c = Number(v) / 255;
      return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r! + 0.7152 * g! + 0.0722 * bl!;
  };
  const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
  return (hi! + 0.05) / (lo! + 0.05);
}
