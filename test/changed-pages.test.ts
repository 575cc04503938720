/**
 * The pages a commit changed (issue 27, item 4), through the real server and the stand-in GitHub: each build is
 * compared with the PR's previous build from the stored file lists, and the PR comment lists the pages with
 * direct links.
 */
import fs from 'node:fs';
import path from 'node:path';
import nock from 'nock';
import { eq } from '../src/db/orm.js';
import { buildContents, builds } from '../src/db/tables.js';
import { changesOfBuilds, compareContents, decodeContents, encodeContents, fileUrl } from '../src/previews/changed-pages.js';
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
  });
  expect(decodeContents(encodeContents(new Map())!).paths).toEqual([]);
  // Too long to list (MAX_BUILD_FILES paths of 1,024 characters would be 50 MB to decode at each comment edit): not kept.
  const huge = new Map(Array.from({ length: 4200 }, (_, i) => [`${String(i).padStart(1000, 'x')}.html`, h('1')]));
  expect(encodeContents(huge)).toBeUndefined();
  expect((await changesOfBuilds(server.core.db.orm, server.config, 'docs', 9, [])).size).toBe(0);
});
