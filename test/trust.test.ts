/**
 * Trust against a GitHub that behaves like github.com (test/helpers/fake-github.ts): deliveries replayed,
 * late, out of order or lost; repositories renamed; GitHub down, hanging or rate-limiting. One story per
 * bullet of issue 11's "Bad input and faults", each against the real server with its real SQLite queue.
 */
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { eq } from '../src/db/orm.js';
import nock from 'nock';
import { jobs, pullRequests } from '../src/db/tables.js';
import { FakeGitHub } from './helpers/fake-github.js';
import { startServerProcess } from '../bench/server-process.mjs';
import { appPrivateKey } from './helpers/github.js';
import { cleanStops, forgetCleanStop, sha, startTestServer, UPLOAD_SECRET, WEBHOOK_SECRET, type TestServer, dataEnv } from './helpers/server.js';
import { siteTarball } from './helpers/tarballs.js';
import { sendWebhook } from './helpers/webhooks.js';
import { eventually } from './helpers/eventually.js';

const LABEL = 'safe for preview';
const OWNER = { id: 9001, login: 'octo-org' };
const DOCS = 7001;
const CONTRIBUTOR = { id: 555, login: 'contributor' };
const A = sha('a1');
const B = sha('b2');

let fake: FakeGitHub;
let server: TestServer;
const servers: TestServer[] = [];

beforeEach(async () => {
  nock.enableNetConnect('127.0.0.1');
  fake = await new FakeGitHub().start();
  fake.addRepo({ id: DOCS, owner: OWNER, name: 'docs' });
  server = await startTestServer(fake.env);
  servers.push(server);
});

afterEach(async () => {
  for (const s of servers.splice(0)) await s.close().catch(() => undefined);
  await fake.close();
});

const prRow = async (number: number, repositoryId?: number) =>
  (await server.core.db.orm
    .select()
    .from(pullRequests)
    .where(eq(pullRequests.number, number)))
    .find((p) => repositoryId === undefined || p.repositoryId === repositoryId)!;
const prDir = (site: string, number: number, visibility: 'public' | 'hidden') =>
  path.join(server.config.buildsDir, site, visibility === 'public' ? String(number) : `hidden--${number}`);

/** An open PR on the stand-in GitHub and one upload of its head (hidden unless labelled). */
async function openAndUpload(number: number, commits: string[], labels: string[] = []) {
  fake.addPull(DOCS, { number, user: CONTRIBUTOR, commits, labels });
  const res = await server.upload(number, commits.at(-1)!, siteTarball(`pr ${number}`));
  await server.previews.settled();
  if (res.status >= 400) throw new Error(`upload refused: ${res.status} ${await res.text()}`);
  return res;
}

async function deliver(event: string, payload: object) {
  const res = await sendWebhook(server.url, event, payload);
  expect(res.status).toBe(200);
  await server.previews.settled();
}

const queued = () => server.core.db.orm.select().from(jobs);

describe('deliveries replayed, late or out of order never publish on payload evidence', () => {
  test('a replayed labeled delivery after the label was removed publishes nothing, not even a commit uploaded since', async () => {
    expect((await openAndUpload(1, [A])).status).toBe(202);
    fake.change(DOCS, 1, { labels: [LABEL] });
    const labeled = fake.pullRequestEvent(DOCS, 1, 'labeled', { label: { name: LABEL } });
    await deliver('pull_request', labeled);
    expect((await prRow(1)).visibility).toBe('public');

    fake.change(DOCS, 1, { labels: [] });
    await deliver('pull_request', fake.pullRequestEvent(DOCS, 1, 'unlabeled', { label: { name: LABEL } }));
    expect((await prRow(1)).visibility).toBe('hidden');

    fake.change(DOCS, 1, { commits: [A, B] });
    expect((await server.upload(1, B, siteTarball('unreviewed'))).status).toBe(202);

    await deliver('pull_request', labeled); // the same delivery again, hours later
    expect((await prRow(1))).toMatchObject({ visibility: 'hidden', trusted: false });
    expect(fs.existsSync(path.join(prDir('docs', 1, 'hidden'), B.slice(0, 7), 'index.html'))).toBe(true);
    expect(fs.existsSync(prDir('docs', 1, 'public'))).toBe(false);
  });

  test('unlabeled handled before a late labeled: hidden', async () => {
    await openAndUpload(2, [A]);
    fake.change(DOCS, 2, { labels: [LABEL] });
    const labeled = fake.pullRequestEvent(DOCS, 2, 'labeled', { label: { name: LABEL } });
    fake.change(DOCS, 2, { labels: [] });
    const unlabeled = fake.pullRequestEvent(DOCS, 2, 'unlabeled', { label: { name: LABEL } });
    await deliver('pull_request', unlabeled);
    await deliver('pull_request', labeled);
    expect((await prRow(2)).visibility).toBe('hidden');
    expect(fs.existsSync(prDir('docs', 2, 'public'))).toBe(false);
  });

  test('stale synchronize and reopened carrying the old label: GitHub, which no longer has it, decides', async () => {
    await openAndUpload(3, [A], [LABEL]);
    expect((await prRow(3)).visibility).toBe('public');
    const oldSynchronize = fake.pullRequestEvent(DOCS, 3, 'synchronize');
    const oldReopened = fake.pullRequestEvent(DOCS, 3, 'reopened');
    fake.change(DOCS, 3, { labels: [] }); // its unlabeled delivery is lost
    await deliver('pull_request', oldSynchronize);
    expect((await prRow(3)).visibility).toBe('hidden');
    await deliver('pull_request', oldReopened);
    expect((await prRow(3))).toMatchObject({ visibility: 'hidden', trusted: false });
  });
});

describe('ids, not names', () => {
  test('renamed, then unlabeled under the new name: hidden; the site and builds stay with the repository', async () => {
    await openAndUpload(4, [A], [LABEL]);
    fake.rename(DOCS, 'handbook'); // the repository.renamed delivery never arrives
    fake.change(DOCS, 4, { labels: [] });
    await deliver('pull_request', fake.pullRequestEvent(DOCS, 4, 'unlabeled', { label: { name: LABEL } }));
    expect((await prRow(4)).visibility).toBe('hidden');
    const repo = (await server.core.registry.findRepositoryById(DOCS))!;
    expect(repo).toMatchObject({ fullName: 'octo-org/handbook', site: 'docs' });
    expect(fs.existsSync(path.join(prDir('docs', 4, 'hidden'), A.slice(0, 7)))).toBe(true);
  });

  test('a new repository that takes a freed name inherits nothing: not the site, the PR, the hidden build or the secret', async () => {
    await openAndUpload(5, [A]); // hidden, never approved
    fake.rename(DOCS, 'handbook');
    await deliver('repository', { action: 'renamed', changes: { repository: { name: { from: 'docs' } } }, repository: fake.repositoryPayload(DOCS), installation: { id: 42 }, sender: { id: 1001, login: 'maintainer' } });
    expect((await server.core.registry.findRepositoryById(DOCS))!.fullName).toBe('octo-org/handbook');

    const NEW = 7002;
    fake.addRepo({ id: NEW, owner: OWNER, name: 'docs' });
    await deliver('installation_repositories', {
      action: 'added',
      installation: { id: 42, account: OWNER },
      repositories_added: [{ id: NEW, name: 'docs', full_name: 'octo-org/docs' }],
      repositories_removed: [],
      sender: { id: 1001, login: 'maintainer' },
    });
    const newRow = (await server.core.registry.findRepositoryById(NEW))!;
    expect(newRow.site).toBe(`docs-${NEW}`);

    // Labelling the new repository's PR #5 touches nothing of the old one.
    fake.addPull(NEW, { number: 5, user: CONTRIBUTOR, commits: [B], labels: [LABEL] });
    await deliver('pull_request', fake.pullRequestEvent(NEW, 5, 'labeled', { label: { name: LABEL } }));
    expect((await prRow(5, (await server.core.registry.findRepositoryById(DOCS))!.id)).visibility).toBe('hidden');
    expect(fs.existsSync(path.join(prDir('docs', 5, 'hidden'), A.slice(0, 7)))).toBe(true);
    expect(fs.existsSync(prDir('docs', 5, 'public'))).toBe(false);

    // The old repository's upload secret does not work for the newcomer.
    const refused = await server.upload(5, B, siteTarball('newcomer'));
    expect(refused.status).toBe(403);
    await server.core.secrets.set(newRow.accountId, newRow.id, 'upload-key', Buffer.from(UPLOAD_SECRET));
    const stored = await server.upload(5, B, siteTarball('newcomer'));
    expect(stored.status).toBe(201);
    expect((await stored.json()).url).toBe(`https://pr5-${B.slice(0, 7)}--docs-${NEW}.previews.test/`);
  });
});

describe('revocations fail closed; grants wait for GitHub, without any redelivery', () => {
  const faults = [
    ['502', { kind: 'down' }],
    ['a timeout', { kind: 'hang' }],
    ['403 secondary rate limit', { kind: 'secondary-rate-limit', retryAfter: 1 }],
  ] as const;

  test.each(faults)('GitHub answering %s during unlabeled: hidden at once', async (_name, fault) => {
    await openAndUpload(6, [A], [LABEL]);
    expect((await prRow(6)).visibility).toBe('public');
    fake.fault = fault;
    fake.change(DOCS, 6, { labels: [] });
    const res = await sendWebhook(server.url, 'pull_request', fake.pullRequestEvent(DOCS, 6, 'unlabeled', { label: { name: LABEL } }));
    expect(res.status).toBe(200);
    expect((await prRow(6)).visibility).toBe('hidden');
    expect(fs.existsSync(prDir('docs', 6, 'public'))).toBe(false);
  });

  test.each(faults)('GitHub answering %s during labeled: stays hidden, published by the retry once GitHub answers', async (_name, fault) => {
    await openAndUpload(7, [A]);
    fake.fault = fault;
    fake.change(DOCS, 7, { labels: [LABEL] });
    await deliver('pull_request', fake.pullRequestEvent(DOCS, 7, 'labeled', { label: { name: LABEL } }));
    await eventually(async () => (await queued()).some((j) => j.kind === 'decide' && j.attempts >= 1));
    expect((await prRow(7)).visibility).toBe('hidden');
    fake.fault = undefined;
    await eventually(async () => (await prRow(7)).visibility === 'public');
    expect(fs.existsSync(path.join(prDir('docs', 7, 'public'), A.slice(0, 7), 'index.html'))).toBe(true);
    await eventually(async () => (await queued()).length === 0);
  });

  test('a server stopped with queued work does it after the restart', async () => {
    await openAndUpload(8, [A]);
    fake.fault = { kind: 'down' };
    fake.change(DOCS, 8, { labels: [LABEL] });
    await deliver('pull_request', fake.pullRequestEvent(DOCS, 8, 'labeled', { label: { name: LABEL } }));
    await server.stop();
    fake.fault = undefined;
    server = await startTestServer(fake.env, server.tmp, { seedSecret: false });
    servers.push(server);
    await eventually(async () => (await prRow(8)).visibility === 'public');
    await eventually(() => fake.commentText()?.includes(`https://pr8-${A.slice(0, 7)}--docs.previews.test/`) === true);
  });
});

test('a server process killed (SIGKILL) with a queued decision takes it after the restart', async () => {
  await openAndUpload(16, [A]);
  await server.stop();
  const port = 30000 + Math.floor(Math.random() * 20000);
  const env = {
    ...process.env,
    ...fake.env,
    NODE_OPTIONS: '',
    ...dataEnv(server),
    PORT: String(port),
    HOST: '127.0.0.1',
    APP_ID: '1',
    PRIVATE_KEY: appPrivateKey,
    WEBHOOK_SECRET,
    GITHUB_RETRIES: '0',
    GITHUB_THROTTLE: 'false',
    GITHUB_TIMEOUT_MS: '1500',
    RECONCILE_INTERVAL_MINUTES: '0',
    LOG_LEVEL: 'silent' as const,
  };
  let child = await startServerProcess(env, port, { stdio: 'ignore' });
  try {
    fake.fault = { kind: 'down' };
    fake.change(DOCS, 16, { labels: [LABEL] });
    const res = await sendWebhook(`http://127.0.0.1:${port}`, 'pull_request', fake.pullRequestEvent(DOCS, 16, 'labeled', { label: { name: LABEL } }));
    expect(res.status).toBe(200);
    await eventually(() => fake.counted > 0); // the decision was tried, and failed
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    expect(fs.existsSync(prDir('docs', 16, 'public'))).toBe(false);

    fake.fault = undefined;
    child = await startServerProcess(env, port, { stdio: 'ignore' });
    await eventually(() => fs.existsSync(path.join(prDir('docs', 16, 'public'), A.slice(0, 7), 'index.html')));
  } finally {
    child.kill('SIGKILL');
  }
});

describe('the sweep catches what no webhook said', () => {
  test('a PR closed without a delivery is found closed and its builds removed after the retention', async () => {
    await openAndUpload(9, [A], [LABEL]);
    fake.change(DOCS, 9, { state: 'closed' });
    const report = await server.sweep!.run();
    expect(report).toMatchObject({ installations: 1, pullRequests: 1, changed: 1 });
    expect((await prRow(9))).toMatchObject({ state: 'closed', visibility: 'hidden' });
    expect(await server.previews.cleanup(new Date(Date.now() + 25 * 3600_000))).toMatchObject({ removedPrs: 1, skipped: 0, why: [] });
    expect(fs.existsSync(prDir('docs', 9, 'hidden'))).toBe(false);
  });

  test("a change of the organization's .github settings (no webhook reaches us) re-decides the PR", async () => {
    fake.addRepo({ id: 7100, owner: OWNER, name: '.github', files: { '.github/preview-gate.yml': 'trustedLabel: first\n' } }, null);
    await openAndUpload(10, [A], ['reviewed']);
    expect((await prRow(10)).visibility).toBe('hidden');
    fake.repos.get(7100)!.files['.github/preview-gate.yml'] = 'trustedLabel: reviewed\n';
    await server.sweep!.run();
    expect((await prRow(10)).visibility).toBe('public');
  });

  test('a rename and a removal from the installation are caught by id', async () => {
    await openAndUpload(11, [A], [LABEL]);
    fake.rename(DOCS, 'handbook');
    await server.sweep!.run();
    expect((await server.core.registry.findRepositoryById(DOCS))!.fullName).toBe('octo-org/handbook');
    fake.installations.get(42)!.repoIds = [];
    await server.sweep!.run();
    expect((await server.core.registry.findRepositoryById(DOCS))!.installed).toBe(false);
    expect((await prRow(11)).visibility).toBe('hidden');
  });

  test('100 open PRs with builds and nothing changed: the sweep costs at most 5 requests against the rate limit', async () => {
    for (let n = 100; n < 200; n++) await openAndUpload(n, [sha(n.toString(16))], n % 2 ? [LABEL] : []);
    await server.sweep!.run(); // learns the ETags
    fake.counted = 0;
    fake.notModified = 0;
    const report = await server.sweep!.run();
    expect(report).toMatchObject({ pullRequests: 100, changed: 0, queued: 0 });
    expect(fake.notModified).toBeGreaterThanOrEqual(100);
    if (process.env.PRINT_FIGURES) process.stderr.write(`sweep of 100 unchanged PRs: ${fake.counted} counted requests, ${fake.notModified} answered 304\n`);
    expect(fake.counted).toBeLessThanOrEqual(5);
  }, 60_000);
});

describe('labelTrustsNewCommits: false binds the label to the commit it was given at', () => {
  test('a commit uploaded before its synchronize delivery is hidden, and the label removed on GitHub', async () => {
    fake.repos.get(DOCS)!.files['.github/preview-gate.yml'] = 'labelTrustsNewCommits: false\n';
    expect((await openAndUpload(12, [A], [LABEL])).status).toBe(201);
    fake.change(DOCS, 12, { commits: [A, B] }); // pushed; the synchronize delivery is late
    const res = await server.upload(12, B, siteTarball('unreviewed'));
    expect(res.status).toBe(202);
    expect((await res.json()).reason).toMatch(/commit b2b2b2b came after the 'safe for preview' label/);
    await server.previews.settled();
    expect((await prRow(12)).visibility).toBe('hidden');
    expect(fake.pull(DOCS, 12).labels).toEqual([]);
    expect(fs.existsSync(prDir('docs', 12, 'public'))).toBe(false);
  });
});

test('an upload answered 409 still applies the current decision (its label webhook was lost)', async () => {
  await openAndUpload(13, [A]);
  fake.change(DOCS, 13, { labels: [LABEL] });
  const res = await server.upload(13, A, siteTarball('again'));
  expect(res.status).toBe(409);
  expect((await prRow(13)).visibility).toBe('public');
  expect(fs.readFileSync(path.join(prDir('docs', 13, 'public'), A.slice(0, 7), 'index.html'), 'utf8')).toContain('pr 13');
});

test('a PR found in both folders after a crash is repaired into the one the decision names', async () => {
  await openAndUpload(14, [A, B], [LABEL]);
  const stray = path.join(prDir('docs', 14, 'hidden'), 'c0ffee0');
  fs.mkdirSync(stray, { recursive: true });
  fs.writeFileSync(path.join(stray, 'index.html'), 'stray');
  fake.change(DOCS, 14, { labels: [] });
  await deliver('pull_request', fake.pullRequestEvent(DOCS, 14, 'unlabeled', { label: { name: LABEL } }));
  expect((await prRow(14)).visibility).toBe('hidden');
  expect(fs.existsSync(prDir('docs', 14, 'public'))).toBe(false);
  expect(fs.readdirSync(prDir('docs', 14, 'hidden')).sort()).toEqual(['.latest', B.slice(0, 7), 'c0ffee0']);
});

test('/metrics shows the queue depth and the age of its oldest row', async () => {
  await openAndUpload(15, [A]);
  fake.fault = { kind: 'down' };
  fake.change(DOCS, 15, { labels: [LABEL] });
  await deliver('pull_request', fake.pullRequestEvent(DOCS, 15, 'labeled', { label: { name: LABEL } }));
  const text = await (await fetch(`${server.url}/metrics`)).text();
  expect(text).toMatch(/^preview_gate_queue_jobs 1$/m);
  expect(text).toMatch(/^preview_gate_queue_oldest_seconds \d/m);
});

describe('site: in the settings', () => {
  test('a free site is taken with one rename of the builds folder; the comment shows the new URLs', async () => {
    await openAndUpload(17, [A], [LABEL]);
    expect(fs.existsSync(prDir('docs', 17, 'public'))).toBe(true);
    fake.repos.get(DOCS)!.files['.github/preview-gate.yml'] = 'site: handbook\n';
    await server.sweep!.run();
    await server.previews.settled();
    expect((await server.core.registry.findRepositoryById(DOCS))!.site).toBe('handbook');
    expect(fs.existsSync(path.join(prDir('handbook', 17, 'public'), A.slice(0, 7), 'index.html'))).toBe(true);
    expect(fs.existsSync(path.join(server.config.buildsDir, 'docs'))).toBe(false);
    expect(fake.commentText()).toContain(`https://pr17-${A.slice(0, 7)}--handbook.previews.test/`);
  });

  test('a site held by another repository is refused: the repository keeps its own and the answer says why', async () => {
    await server.core.registry.resolveRepository({ id: 7300, fullName: 'octo-org/angular', ownerId: OWNER.id });
    fake.repos.get(DOCS)!.files['.github/preview-gate.yml'] = 'site: angular\n';
    fake.addPull(DOCS, { number: 18, user: CONTRIBUTOR, commits: [A] });
    const res = await server.upload(18, A, siteTarball('mine'));
    expect(res.status).toBe(202);
    expect((await res.json()).reason).toMatch(/the site 'angular' named in .github\/preview-gate.yml is used by another repository, so previews stay at 'docs'/);
    await server.previews.settled();
    expect((await server.core.registry.findRepositoryById(DOCS))!.site).toBe('docs');
    expect(fs.existsSync(path.join(prDir('docs', 18, 'hidden'), A.slice(0, 7)))).toBe(true);
  });
});

test('after an unclean stop, a recent build whose files did not all reach the disk is dropped and uploads again; intact ones stay', async () => {
  await openAndUpload(19, [A], [LABEL]);
  fake.addPull(DOCS, { number: 20, user: CONTRIBUTOR, commits: [B], labels: [LABEL] });
  expect((await server.upload(20, B, siteTarball('intact'))).status).toBe(201);
  await server.stop();
  // What a power loss leaves: the clean-stop marker never written, a file of the last build empty.
  await forgetCleanStop(server.config);
  const damaged = path.join(prDir('docs', 19, 'public'), A.slice(0, 7), 'assets', 'app.js');
  fs.chmodSync(damaged, 0o644);
  fs.truncateSync(damaged, 0);

  server = await startTestServer(fake.env, server.tmp, { seedSecret: false });
  servers.push(server);
  expect(server.logs.some((l) => /incomplete on disk; dropped/.test(l.msg) && (l as { sha?: string }).sha === A.slice(0, 7))).toBe(true);
  expect(fs.existsSync(path.join(prDir('docs', 19, 'public'), A.slice(0, 7)))).toBe(false);
  expect(fs.readFileSync(path.join(prDir('docs', 20, 'public'), B.slice(0, 7), 'index.html'), 'utf8')).toContain('intact');
  expect((await server.upload(19, A, siteTarball('again'))).status).toBe(201);
});

test('after a clean stop nothing is re-checked or dropped', async () => {
  await openAndUpload(21, [A], [LABEL]);
  await server.stop();
  expect(await cleanStops(server.config)).toBe(1);
  server = await startTestServer(fake.env, server.tmp, { seedSecret: false });
  servers.push(server);
  expect(server.logs.some((l) => /dropped/.test(l.msg))).toBe(false);
  expect(fs.existsSync(path.join(prDir('docs', 21, 'public'), A.slice(0, 7), 'index.html'))).toBe(true);
});

test('GitHub is asked while the body streams in: the PR is read before the body has ended, and published only after', async () => {
  fake.addPull(DOCS, { number: 22, user: CONTRIBUTOR, commits: [A], labels: [LABEL] });
  const token = await server.token({ 'pull-request': 22 });
  const body = siteTarball('streamed');
  const port = Number(new URL(server.url).port);
  const answer = new Promise<number>((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: `/create-build/22/${A}`, headers: { authorization: `Token ${token}`, 'content-length': body.length } });
    req.on('response', (res) => (res.resume(), resolve(res.statusCode!)));
    req.on('error', reject);
    req.write(body.subarray(0, 64));
    eventually(() => fake.requests.includes('GET /repos/octo-org/docs/pulls/22') && fake.requests.some((r) => r.startsWith('GET /repos/octo-org/docs/pulls/22/commits')))
      .then(() => {
        expect(fs.existsSync(prDir('docs', 22, 'public'))).toBe(false); // asked, not published: the body is not complete
        req.end(body.subarray(64));
      })
      .catch(reject);
  });
  expect(await answer).toBe(201);
  expect(fs.existsSync(path.join(prDir('docs', 22, 'public'), A.slice(0, 7), 'index.html'))).toBe(true);
});

test('a repository removed from the installation has its builds removed after the retention (GitHub confirms it is gone)', async () => {
  await openAndUpload(23, [A], [LABEL]);
  fake.installations.get(42)!.repoIds = [];
  await deliver('installation_repositories', {
    action: 'removed',
    installation: { id: 42, account: OWNER },
    repositories_removed: [{ id: DOCS, name: 'docs', full_name: 'octo-org/docs' }],
    repositories_added: [],
    sender: { id: 1001, login: 'maintainer' },
  });
  expect((await prRow(23)).visibility).toBe('hidden');
  expect(await server.previews.cleanup(new Date(Date.now() + 25 * 3600_000))).toMatchObject({ removedPrs: 1, skipped: 0, why: [] });
  expect(fs.existsSync(prDir('docs', 23, 'hidden'))).toBe(false);
});

test('a feedback run whose comment body would not change sends no edit; one that changes it does', async () => {
  await openAndUpload(21, [A]);
  const edits = () => fake.writes.filter((w) => w.method === 'PATCH' && /\/issues\/comments\/\d+$/.test(w.path)).length;
  const posted = fake.writes.filter((w) => w.method === 'POST' && /\/issues\/21\/comments$/.test(w.path)).length;
  expect(posted).toBe(1);
  const editsBefore = edits();
  const repo = (await server.core.registry.findRepositoryById(DOCS))!;
  const pr = await prRow(21);
  // The same feedback again (another replica's run, a coalesced retry): the comment would read the same.
  await server.previews.decisions.enqueueFeedback(repo, pr, []);
  await server.previews.settled();
  expect(edits()).toBe(editsBefore);
  // The label makes it public: the comment changes, and is edited once.
  fake.change(DOCS, 21, { labels: [LABEL] });
  await server.previews.decisions.enqueue(repo, 21, { event: 'pull_request.labeled' });
  await server.previews.settled();
  expect((await prRow(21)).visibility).toBe('public');
  expect(edits()).toBe(editsBefore + 1);
});
