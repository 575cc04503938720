/**
 * The pages a commit changed (issue 27, item 4), through the real server and the stand-in GitHub: each build is
 * compared with the PR's previous build from the stored file lists, and the PR comment lists the pages with
 * direct links.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import nock from 'nock';
import { runCli } from '../src/cli.js';
import { eq } from '../src/db/orm.js';
import { buildContents, builds, objects } from '../src/db/tables.js';
import { changesOfBuilds, compareContents, decodeContents, encodeContents, fileUrl, loadedReferences, resolveReference } from '../src/previews/changed-pages.js';
import { FakeGitHub } from './helpers/fake-github.js';
import { sha, startTestServer, type TestServer } from './helpers/server.js';
import { tarball } from './helpers/tarballs.js';

const DOCS = 7001;
const A = sha('a1');
const B = sha('b2');
const C = sha('c3');
const host = (s: string, pr = 1) => `https://pr${pr}-${s.slice(0, 7)}--docs.previews.test`;

let fake: FakeGitHub;
let server: TestServer;

beforeAll(async () => {
  nock.enableNetConnect('127.0.0.1');
  fake = await new FakeGitHub().start();
  fake.addRepo({ id: DOCS, owner: { id: 9001, login: 'octo-org' }, name: 'docs' });
  server = await startTestServer({ ...fake.env, PUBLIC_URL: 'https://uploads.test', GITHUB_CLIENT_ID: fake.client.id, GITHUB_CLIENT_SECRET: fake.client.secret });
});
afterAll(async () => {
  await server?.close();
  await fake?.close();
});

const page = (text: string) => `<html><body><h1>${text}</h1></body></html>`;

test('the comment lists exactly the pages a commit changed, added and removed, with direct links', async () => {
  fake.addPull(DOCS, { number: 1, user: { id: 555, login: 'contributor' }, commits: [A], labels: ['safe for preview'] });
  const first = { 'index.html': page('home'), 'guide/index.html': page('guide'), 'old.html': page('old'), 'same.html': page('same'), 'app.css': 'a{}' };
  expect((await server.upload(1, A, tarball(first))).status).toBe(201);
  await server.previews.settled();
  const afterFirst = fake.commentText()!;
  expect(afterFirst).toContain(`\`${A.slice(0, 7)}\`: the first build of this pull request (nothing to compare with)`);
  expect(afterFirst).not.toMatch(/changed: |added: |removed: /);

  fake.change(DOCS, 1, { commits: [A, B] });
  const second = { 'index.html': page('home'), 'guide/index.html': page('guide, edited'), 'new page.html': page('new'), 'w`<img src=x>@octo-org/team.html': page('odd name'), 'same.html': page('same'), 'app.css': 'a{color:red}' };
  expect((await server.upload(1, B, tarball(second))).status).toBe(201);
  await server.previews.settled();
  const comment = fake.commentText()!;
  const entries = comment.split('\n').filter((l) => /^ {2}- (changed|added|removed): /.test(l));
  expect(entries).toEqual([
    `  - changed: [\`guide/index.html\`](${host(B)}/guide/)`,
    `  - added: [\`new page.html\`](${host(B)}/new%20page.html)`,
    // A name is the PR author's text: a code span (no HTML, no mention), percent-encoded in the link.
    `  - added: [\`\`w\`<img src=x>@octo-org/team.html\`\`](${host(B)}/w%60%3Cimg%20src%3Dx%3E%40octo-org/team.html)`,
    `  - removed: [\`old.html\`](${host(A)}/old.html)`,
  ]);
  expect(comment).toContain(`\`${B.slice(0, 7)}\`: pages 1 changed, 2 added, 1 removed; 1 other file (CSS, scripts, images…) differ (since \`${A.slice(0, 7)}\`)`);
  // Newest first; the first build still says it is the first.
  expect(comment.indexOf(B.slice(0, 7))).toBeLessThan(comment.indexOf(`\`${A.slice(0, 7)}\`: the first build`));
  // The direct links answer: the files are where the links say.
  const dir = path.join(server.config.buildsDir, 'docs', '1', B.slice(0, 7));
  expect(fs.readFileSync(path.join(dir, 'guide', 'index.html'), 'utf8')).toContain('guide, edited');
  expect(fs.existsSync(path.join(dir, 'new page.html'))).toBe(true);
});

test('more than 10 changed pages: the first 10 are linked, then "and N more" links to the dashboard; a hidden PR says its links 404 for others', async () => {
  fake.addPull(DOCS, { number: 2, user: { id: 555, login: 'contributor' }, commits: [A] });
  const pages = (text: string) => Object.fromEntries(Array.from({ length: 13 }, (_, i) => [`p${String(i).padStart(2, '0')}.html`, page(`${text} ${i}`)]));
  expect((await server.upload(2, A, tarball(pages('one')))).status).toBe(202);
  fake.change(DOCS, 2, { commits: [A, B] });
  expect((await server.upload(2, B, tarball(pages('two')))).status).toBe(202);
  await server.previews.settled();
  const comment = fake.commentText()!;
  const entries = comment.split('\n').filter((l) => /^ {2}- changed: /.test(l));
  expect(entries).toHaveLength(10);
  expect(entries[0]).toBe(`  - changed: [\`p00.html\`](${host(B, 2)}/p00.html)`);
  expect(comment).toContain('  - and 3 more on the [dashboard](https://uploads.test/)');
  expect(comment).toMatch(/These previews are hidden: their links answer 404, except to people who can push/);
});

test('a build or its predecessor without a stored file list: "not known", never a wrong list', async () => {
  fake.addPull(DOCS, { number: 3, user: { id: 555, login: 'contributor' }, commits: [A], labels: ['safe for preview'] });
  expect((await server.upload(3, A, tarball({ 'index.html': page('a') }))).status).toBe(201);
  await server.previews.settled();
  // As if A had been stored before builds kept their file lists.
  const { db } = server.core;
  const stored = (await db.orm.select().from(builds)).filter((b) => b.sha === A).at(-1)!;
  expect(await db.orm.delete(buildContents).where(eq(buildContents.buildId, stored.id)).returning({ id: buildContents.buildId })).toHaveLength(1);
  fake.change(DOCS, 3, { commits: [A, C] });
  expect((await server.upload(3, C, tarball({ 'index.html': page('c'), 'x.html': page('x') }))).status).toBe(201);
  await server.previews.settled();
  const comment = fake.commentText()!;
  expect(comment).toContain(`\`${C.slice(0, 7)}\`: changes not known`);
  expect(comment).toContain(`\`${A.slice(0, 7)}\`: changes not known`);
  expect(comment).not.toMatch(/added: /);
});

test('links are percent-encoded, index.html is its folder; the comparison splits pages from other files', async () => {
  expect(fileUrl('https://h.test/', 'a/index.html')).toBe('https://h.test/a/');
  expect(fileUrl('https://h.test/', 'index.html')).toBe('https://h.test/');
  expect(fileUrl('https://h.test/', 'x)(y [z].html')).toBe('https://h.test/x%29%28y%20%5Bz%5D.html');
  const h = (c: string) => c.repeat(64);
  const before = new Map([['a.html', h('1')], ['b.js', h('2')], ['gone.htm', h('3')], ['z/é.html', h('5')]]);
  const after = new Map([['a.html', h('9')], ['b.js', h('2')], ['c.png', h('4')], ['z/é.html', h('5')], ['z/Z.html', h('6')]]);
  expect(compareContents(decodeContents(encodeContents(before)!), decodeContents(encodeContents(after)!))).toEqual({
    pages: { added: ['z/Z.html'], changed: ['a.html'], removed: ['gone.htm'] },
    assets: { added: ['c.png'], changed: [], removed: [] },
    samePages: [4], // after's sorted paths: a.html, b.js, c.png, z/Z.html, z/é.html
    differingAssets: new Set([2]),
  });
  expect(decodeContents(encodeContents(new Map())!).paths).toEqual([]);
  // Which files each page loads: kept per build up to MAX_LOAD_PAIRS pairs; past it, not kept ("not known").
  const site = new Map([...Array.from({ length: 500 }, (_, i) => [`a${i}.css`, h('2')] as const), ...Array.from({ length: 1000 }, (_, i) => [`p${i}.html`, h('1')] as const)]);
  const loadsAll = new Map([[h('1'), Array.from({ length: 500 }, (_, i) => `a${i}.css`)]]);
  expect(encodeContents(new Map([...site].slice(0, 600)), loadsAll)!.loads).not.toBeNull(); // 100 pages × 500
  expect(encodeContents(site, loadsAll)!.loads).toBeNull(); // 1,000 pages × 500 > MAX_LOAD_PAIRS
  // Too long to list (MAX_BUILD_FILES paths of 1,024 characters would be 50 MB to decode at each comment edit): not kept.
  const huge = new Map(Array.from({ length: 4200 }, (_, i) => [`${String(i).padStart(1000, 'x')}.html`, h('1')]));
  expect(encodeContents(huge)).toBeUndefined();
  expect((await changesOfBuilds(server.core.db.orm, server.config, 'docs', 9, [])).size).toBe(0);
});

test('the files a page loads: scripts, stylesheets, images (srcset too), media, frames — local ones only, links to pages are not loads', () => {
  const html = `<!doctype html><html><head><link rel="stylesheet" href="style.css?v=2"><link rel=icon href=/favicon.ico><script src='../app.js#x'></script>
    <link rel="preconnect" href="https://cdn.example"><script src="//cdn.example/x.js"></script></head>
    <body><a href="about.html">About</a><img alt="" src="data:image/png;base64,AA" srcset="img/a.png 1x, img/b%20c.png 2x">
    <video poster="poster.jpg"><source src="v.webm"></video><iframe src="javascript:void(0)"></iframe><object data="o.svg"></object></body></html>`;
  expect(loadedReferences(Buffer.from(html)).sort()).toEqual(['../app.js', '/favicon.ico', 'img/a.png', 'img/b%20c.png', 'o.svg', 'poster.jpg', 'style.css', 'v.webm']);
  expect(loadedReferences(Buffer.from('<p>no loads</p>'))).toEqual([]);
  // A page made to be slow to scan (tags that never close) is one pass; a page naming too many files keeps the first ones.
  const started = performance.now();
  expect(loadedReferences(Buffer.from('<img src=a.png '.repeat(65_000)))).toEqual([]);
  expect(performance.now() - started).toBeLessThan(1000);
  expect(loadedReferences(Buffer.from(Array.from({ length: 900 }, (_, i) => `<img src="f${i}.png">`).join('')))).toHaveLength(500);
  expect(loadedReferences(Buffer.from(Array.from({ length: 100 }, (_, i) => `<img src="${String(i).padStart(1000, 'x')}.png">`).join(''))).length).toBeLessThan(70);
  // Resolved against the page's own path, in the build: a folder is its index.html, escapes are decoded.
  expect(resolveReference('guide/a b.html', 'img/b%20c.png')).toBe('guide/img/b c.png');
  expect(resolveReference('guide/index.html', '../')).toBe('index.html');
  expect(resolveReference('x.html', '/docs/')).toBe('docs/index.html');
  expect(resolveReference('a/b.html', './c.css')).toBe('a/c.css');
  expect(resolveReference('a.html', '%E0%A4%A')).toBeUndefined();
});

test('a page whose own bytes did not change but whose stylesheet or image did is listed as loading changed files, also when a digest upload did not send it', async () => {
  const [P1, P2, P3] = [sha('d1'), sha('d2'), sha('d3')];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-loads-'));
  const write = (rel: string, text: string) => {
    fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    fs.writeFileSync(path.join(dir, rel), text);
  };
  write('index.html', '<link rel="stylesheet" href="style.css"><img alt="" src="img/a.png" srcset="img/a.png 1x, img/b.png 2x"><a href="about.html">about</a>');
  write('guide/index.html', '<link href="../style.css" rel="stylesheet"><script src="/app.js?v=1"></script>');
  write('about.html', '<script src="/app.js"></script><a href="style.css">the stylesheet (a link, not a load)</a>');
  write('cdn.html', '<link rel="stylesheet" href="https://cdn.example/style.css">');
  write('style.css', 'a{}');
  write('app.js', '1');
  write('img/a.png', 'a');
  write('img/b.png', 'b');
  fake.addPull(DOCS, { number: 5, user: { id: 555, login: 'contributor' }, commits: [P1], labels: ['safe for preview'] });
  const env = { PREVIEW_GATE_TOKEN: await server.token({ 'pull-request': 5 }) };
  const upload = async (commit: string) => {
    const stderr = new PassThrough();
    const said: string[] = [];
    stderr.on('data', (c) => said.push(String(c)));
    const code = await runCli(['upload', dir, '--pr', '5', '--sha', commit, '--url', server.url], { stdin: new PassThrough(), stdout: new PassThrough(), stderr, env, retryDelayMs: 5 });
    expect([code, said.join('')]).toEqual([0, expect.any(String)]);
    return said.join('');
  };
  await upload(P1);
  write('style.css', 'a{color:rebeccapurple}');
  write('img/b.png', 'B');
  fake.change(DOCS, 5, { commits: [P1, P2] });
  // Only the two changed files go: the server never sees the pages' bytes this time.
  expect(await upload(P2)).toContain('(2 of 8 files; the server had the others)');
  await server.previews.settled();

  const comment = fake.commentText()!;
  expect(comment).toContain(`\`${P2.slice(0, 7)}\`: pages 2 loading changed files; 2 other files (CSS, scripts, images…) differ (since \`${P1.slice(0, 7)}\`)`);
  const { db } = server.core;
  const prBuilds = (await db.orm.select().from(builds)).filter((b) => b.sha === P1 || b.sha === P2);
  const newest = prBuilds.find((b) => b.sha === P2)!;
  const entry = (await changesOfBuilds(db.orm, server.config, 'docs', 5, prBuilds)).get(newest.id)!;
  expect(entry.kind === 'compared' && entry.loadsChanged).toEqual([
    { path: 'guide/index.html', url: `${host(P2, 5)}/guide/`, through: ['style.css'] },
    { path: 'index.html', url: `${host(P2, 5)}/`, through: ['style.css', 'img/b.png'] },
  ]);
  // Contents whose loaded files were never read (stored before they were kept): a page the next digest upload does
  // not send is then not listed, never guessed.
  await db.orm.update(objects).set({ pageRefs: null });
  write('style.css', 'a{color:papayawhip}');
  fake.change(DOCS, 5, { commits: [P1, P2, P3] });
  expect(await upload(P3)).toContain('(1 of 8 files; the server had the others)');
  await server.previews.settled();
  fs.rmSync(dir, { recursive: true, force: true });
  const third = (await db.orm.select().from(builds)).filter((b) => [P1, P2, P3].includes(b.sha));
  const unknown = (await changesOfBuilds(db.orm, server.config, 'docs', 5, third)).get(third.find((b) => b.sha === P3)!.id)!;
  expect(unknown.kind === 'compared' && unknown.loadsChanged).toEqual([]);
  expect(fake.commentText()).toContain(`\`${P3.slice(0, 7)}\`: no page changed; 1 other file (CSS, scripts, images…) differ`);
});
