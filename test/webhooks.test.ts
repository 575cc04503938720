import fs from 'node:fs';
import path from 'node:path';
import { eq } from '../src/db/orm.js';
import { PassThrough } from 'node:stream';
import nock from 'nock';
import { runCli } from '../src/cli.js';
import { pullRequests, users, visibilityChanges } from '../src/db/tables.js';
import { COMMENT_MARKER } from '../src/notify.js';
import { API, appPrivateKey, commitsOf, githubFor, OWNER, prRead, REPO } from './helpers/github.js';
import { jobs } from '../src/db/tables.js';
import { serverPerTest, sha, startTestServer, type TestServer, dataEnv } from './helpers/server.js';
import { siteTarball } from './helpers/tarballs.js';
import { eventually } from './helpers/eventually.js';
import { CONTRIBUTOR, feedback, installationToken, MAINTAINER, pullRequestEvent, repositoryJson, sendWebhook, settingsFile } from './helpers/webhooks.js';

let server: TestServer;
const LABEL = 'safe for preview';

serverPerTest((s) => (server = s));

const prFolder = (pr: number, visibility: 'public' | 'hidden') =>
  path.join(server.config.buildsDir, 'docs', visibility === 'public' ? String(pr) : `hidden--${pr}`);
const prRow = async (number: number) => (await server.core.db.orm.select().from(pullRequests).where(eq(pullRequests.number, number)))[0]!;

/** A signed webhook, answered, and everything it made preview-gate tell GitHub sent. */
async function send(event: string, payload: object, secret?: string) {
  const res = await sendWebhook(server.url, event, payload, secret);
  await server.previews.settled();
  return res;
}

/** An upload of `sha` to PR `number` with GitHub saying the PR carries `labels`. */
async function upload(number: number, commit: string, labels: string[] = []) {
  const pr = { number, commits: [commit], labels };
  githubFor(pr);
  commitsOf(pr);
  const res = await server.upload(number, commit, siteTarball(`pr ${number}`));
  await server.previews.settled();
  return res;
}

const SHA1 = sha('c3');

test('the full story: hidden upload → labelled → public with comment → unlabelled → hidden → closed → cleaned up', async () => {
  const calls = feedback();
  installationToken();

  // 1. An outsider's upload is stored hidden; GitHub is told it waits for the label.
  expect((await upload(30, SHA1)).status).toBe(202);
  expect(fs.existsSync(path.join(prFolder(30, 'hidden'), SHA1.slice(0, 7), 'index.html'))).toBe(true);
  expect(calls.statuses).toEqual([expect.objectContaining({ state: 'pending', context: 'preview-gate', description: "Waiting for the 'safe for preview' label" })]);
  expect(calls.comments).toHaveLength(1);
  expect(calls.comments[0].body).toContain(COMMENT_MARKER);
  expect(calls.comments[0].body).toMatch(/hidden.*\n\n.*add the label `safe for preview`/s);
  expect(calls.deployments).toHaveLength(0);

  // 2. A maintainer adds the label: GitHub confirms it, the folder moves, GitHub shows the preview.
  settingsFile();
  prRead({ number: 30, labels: [LABEL], commits: [SHA1] });
  let res = await send('pull_request', pullRequestEvent('labeled', { number: 30, labels: [LABEL], head: SHA1 }, { label: { name: LABEL } }));
  expect(res.status).toBe(200);
  expect(fs.existsSync(prFolder(30, 'hidden'))).toBe(false);
  expect(fs.readFileSync(path.join(prFolder(30, 'public'), SHA1.slice(0, 7), 'index.html'), 'utf8')).toContain('pr 30');
  expect((await prRow(30))).toMatchObject({ visibility: 'public', trusted: true });
  const url = `https://pr30-${SHA1.slice(0, 7)}--docs.previews.test/`;
  expect(calls.statuses[1]).toMatchObject({ state: 'success', target_url: url });
  expect(calls.deployments[0]).toMatchObject({ ref: SHA1, environment: 'preview/pr-30' });
  expect(calls.deploymentStatuses[0]).toMatchObject({ state: 'success', environment_url: url });
  expect(calls.comments).toHaveLength(1); // edited in place, not a second comment
  expect(calls.commentEdits[0].uri).toMatch(/\/issues\/comments\/9001$/);
  expect(calls.commentEdits[0].body).toContain(url);
  expect(calls.commentEdits[0].body).toContain('https://pr30--docs.previews.test/');
  const change = (await server.core.db.orm.select().from(visibilityChanges).innerJoin(users, eq(visibilityChanges.actorUserId, users.id))).at(-1)!;
  expect(change.visibility_changes).toMatchObject({ from: 'hidden', to: 'public', cause: 'pull_request.labeled' });
  expect(change.users).toMatchObject({ provider: 'github', providerId: String(MAINTAINER.id) });

  // 3. The label is removed: hidden again at once, deployment inactive; GitHub's facts confirm it.
  settingsFile();
  prRead({ number: 30, labels: [], commits: [SHA1] });
  res = await send('pull_request', pullRequestEvent('unlabeled', { number: 30, labels: [], head: SHA1 }, { label: { name: LABEL } }));
  expect(res.status).toBe(200);
  expect(fs.existsSync(prFolder(30, 'public'))).toBe(false);
  expect(fs.existsSync(path.join(prFolder(30, 'hidden'), SHA1.slice(0, 7)))).toBe(true);
  expect(calls.deploymentStatuses[1]).toMatchObject({ state: 'inactive' });
  expect(calls.statuses[2]).toMatchObject({ state: 'pending' });
  expect(calls.commentEdits).toHaveLength(2);

  // 4. The same delivery again: same end state, nothing new told to GitHub.
  settingsFile();
  prRead({ number: 30, labels: [], commits: [SHA1] });
  res = await send('pull_request', pullRequestEvent('unlabeled', { number: 30, labels: [], head: SHA1 }, { label: { name: LABEL } }));
  expect(res.status).toBe(200);
  expect(calls.commentEdits).toHaveLength(2);
  expect(calls.comments).toHaveLength(1);

  // 5. Closed: kept until the retention has passed.
  settingsFile();
  prRead({ number: 30, state: 'closed', commits: [SHA1] });
  res = await send('pull_request', pullRequestEvent('closed', { number: 30, state: 'closed', head: SHA1 }));
  expect(res.status).toBe(200);
  expect((await prRow(30)).state).toBe('closed');
  expect(await server.previews.cleanup()).toMatchObject({ removedPrs: 0, skipped: 0, why: [] });
  expect(fs.existsSync(prFolder(30, 'hidden'))).toBe(true);

  // 6. After the retention, and with GitHub confirming the PR is still closed, the builds are removed.
  githubFor({ number: 30, state: 'closed', commits: [SHA1] });
  const later = new Date(Date.now() + 25 * 3600_000);
  expect(await server.previews.cleanup(later)).toMatchObject({ removedPrs: 1, skipped: 0, why: [] });
  expect(fs.existsSync(prFolder(30, 'hidden'))).toBe(false);
  expect(fs.existsSync(prFolder(30, 'public'))).toBe(false);
});

test('cleanup deletes nothing when GitHub cannot be asked', async () => {
  feedback();
  installationToken();
  expect((await upload(31, SHA1)).status).toBe(202);
  settingsFile();
  await send('pull_request', pullRequestEvent('closed', { number: 31, state: 'closed', head: SHA1 }));
  nock(API).get(`/repos/${OWNER}/${REPO}/installation`).reply(502, 'Bad Gateway');
  expect(await server.previews.cleanup(new Date(Date.now() + 25 * 3600_000))).toMatchObject({ removedPrs: 0, skipped: 1, why: [expect.stringMatching(/octo-org\/docs#31: GitHub could not be asked .*nothing was deleted/)] });
  expect(fs.existsSync(prFolder(31, 'hidden'))).toBe(true);
});

test('a webhook with a wrong signature is rejected and changes nothing', async () => {
  feedback();
  installationToken();
  expect((await upload(32, SHA1)).status).toBe(202);
  const res = await send('pull_request', pullRequestEvent('labeled', { number: 32, labels: [LABEL] }, { label: { name: LABEL } }), 'wrong-secret');
  expect(res.status).toBe(400);
  expect(fs.existsSync(prFolder(32, 'hidden'))).toBe(true);
  expect((await prRow(32)).visibility).toBe('hidden');
});

test('labels other than the trusted one, unknown actions and unknown repositories change nothing', async () => {
  const calls = feedback();
  installationToken();
  expect((await upload(33, SHA1)).status).toBe(202);
  const told = calls.statuses.length;

  settingsFile();
  let res = await send('pull_request', pullRequestEvent('labeled', { number: 33, labels: ['docs'] }, { label: { name: 'docs' } }));
  expect(res.status).toBe(200);
  res = await send('pull_request', pullRequestEvent('edited', { number: 33, labels: [LABEL] }));
  expect(res.status).toBe(200);
  res = await sendWebhook(
    server.url,
    'pull_request',
    pullRequestEvent('labeled', { number: 33, labels: [LABEL] }, { label: { name: LABEL }, repository: { ...repositoryJson, full_name: 'stranger/repo', name: 'repo' } }),
  );
  expect(res.status).toBe(200);
  expect((await prRow(33)).visibility).toBe('hidden');
  expect(fs.existsSync(prFolder(33, 'hidden'))).toBe(true);
  expect(calls.statuses.length).toBe(told);
});

test('a label on a PR without builds yet asks GitHub nothing; its first upload lands public', async () => {
  feedback();
  installationToken();
  const res = await send('pull_request', pullRequestEvent('labeled', { number: 34, labels: [LABEL] }, { label: { name: LABEL } }));
  expect(res.status).toBe(200);
  expect(await server.core.db.orm.select().from(jobs)).toEqual([]);
  expect((await upload(34, SHA1, [LABEL])).status).toBe(201);
});

test('a label flips the preview while the PR\'s feedback is still being written to GitHub (feedback does not hold the decision)', async () => {
  // GitHub takes the hidden upload's comment slowly (paced writes, a slow GitHub): it is answered only once the
  // preview is public, or after 1.4 s (under the tests' 1.5 s GitHub timeout) if it never becomes public.
  let commentStarted = false;
  let answeredWhileHidden = false;
  const scope = nock(API).persist();
  scope.post(/\/repos\/[^/]+\/[^/]+\/statuses\/[0-9a-f]{40}$/).reply(201, {});
  scope.get(/\/repos\/[^/]+\/[^/]+\/issues\/\d+\/comments/).reply(200, []);
  scope.post(/\/repos\/[^/]+\/[^/]+\/issues\/\d+\/comments$/).reply(201, async () => {
    commentStarted = true;
    const madePublic = await eventually(() => fs.existsSync(prFolder(38, 'public')), 1400).then(() => true, () => false);
    answeredWhileHidden = !madePublic;
    return { id: 9100 };
  });
  scope.post(`/repos/${OWNER}/${REPO}/deployments`).reply(201, { id: 701 });
  scope.post(/\/repos\/[^/]+\/[^/]+\/deployments\/\d+\/statuses$/).reply(201, {});
  scope.patch(/\/repos\/[^/]+\/[^/]+\/issues\/comments\/\d+$/).reply(200, {});
  installationToken();
  githubFor({ number: 38, commits: [SHA1], labels: [] });
  commitsOf({ number: 38, commits: [SHA1], labels: [] });
  expect((await server.upload(38, SHA1, siteTarball('pr 38'))).status).toBe(202);
  await eventually(() => commentStarted);

  settingsFile();
  prRead({ number: 38, labels: [LABEL], commits: [SHA1] });
  const res = await sendWebhook(server.url, 'pull_request', pullRequestEvent('labeled', { number: 38, labels: [LABEL], head: SHA1 }, { label: { name: LABEL } }));
  expect(res.status).toBe(200);
  await eventually(() => fs.existsSync(prFolder(38, 'public')));
  // Public while the comment was still being written: before, the decision waited for that feedback run to end.
  await server.previews.settled();
  expect(answeredWhileHidden).toBe(false);
});

test('unlabeled while GitHub fails hides the PR at once, answers 200 and keeps the decision queued', async () => {
  feedback();
  installationToken();
  expect((await upload(35, SHA1, [LABEL])).status).toBe(201);
  nock(API).get(`/repos/${OWNER}/${REPO}/contents/${encodeURIComponent('.github/preview-gate.yml')}`).reply(502, 'Bad Gateway');
  const res = await send('pull_request', pullRequestEvent('unlabeled', { number: 35, labels: [] }, { label: { name: LABEL } }));
  expect(res.status).toBe(200);
  expect((await prRow(35)).visibility).toBe('hidden');
  expect(fs.existsSync(path.join(prFolder(35, 'hidden'), SHA1.slice(0, 7)))).toBe(true);
  expect(fs.existsSync(prFolder(35, 'public'))).toBe(false);
  const decide = (await server.core.db.orm.select().from(jobs)).find((j) => j.kind === 'decide');
  expect(decide).toMatchObject({ attempts: 1, lastError: expect.stringMatching(/GitHub could not be asked/) });
});

test('labelTrustsNewCommits: false — a push after the label removes it and hides the PR, saying why', async () => {
  const calls = feedback();
  installationToken();
  const yaml = 'labelTrustsNewCommits: false\n';
  const pr = { number: 36, commits: [SHA1], labels: [LABEL] };
  githubFor(pr, { settings: yaml });
  commitsOf(pr);
  expect((await server.upload(36, SHA1, siteTarball())).status).toBe(201);

  settingsFile(yaml);
  prRead({ number: 36, labels: [LABEL], commits: [SHA1, sha('d4')] });
  const removed = nock(API).delete(`/repos/${OWNER}/${REPO}/issues/36/labels/${encodeURIComponent(LABEL)}`).reply(200, []);
  const res = await send('pull_request', pullRequestEvent('synchronize', { number: 36, labels: [LABEL], head: sha('d4') }, { sender: CONTRIBUTOR }));
  expect(res.status).toBe(200);
  expect(removed.isDone()).toBe(true);
  expect((await prRow(36))).toMatchObject({ visibility: 'hidden', headSha: sha('d4') });
  expect(calls.commentEdits.at(-1).body).toMatch(/commit d4d4d4d came after the 'safe for preview' label was given at c3c3c3c, so the label was removed/);
});

test('with the default labelTrustsNewCommits a push keeps a labelled PR public', async () => {
  feedback();
  installationToken();
  expect((await upload(37, SHA1, [LABEL])).status).toBe(201);
  settingsFile();
  prRead({ number: 37, labels: [LABEL], commits: [SHA1, sha('d4')] });
  const res = await send('pull_request', pullRequestEvent('synchronize', { number: 37, labels: [LABEL], head: sha('d4') }));
  expect(res.status).toBe(200);
  expect((await prRow(37))).toMatchObject({ visibility: 'public', headSha: sha('d4') });
});

test('membership.removed from a trusted team hides the open PRs of that user', async () => {
  feedback();
  installationToken();
  const yaml = 'trustedTeams: [docs-authors]\n';
  const member = { id: 77, login: 'teammate' };
  const pr = { number: 38, commits: [SHA1], author: member };
  githubFor(pr, { settings: yaml, teams: { 'docs-authors': ['teammate'] } });
  commitsOf(pr);
  expect((await server.upload(38, SHA1, siteTarball())).status).toBe(201);

  // GitHub now says: not a member any more.
  githubFor(pr, { settings: yaml, teams: { 'docs-authors': [] } });
  const res = await send('membership', {
    action: 'removed',
    scope: 'team',
    member,
    team: { slug: 'docs-authors-child', name: 'child' },
    organization: { login: OWNER, id: 9001 },
    sender: MAINTAINER,
    installation: { id: 42 },
  });
  expect(res.status).toBe(200);
  expect((await prRow(38)).visibility).toBe('hidden');
  expect(fs.existsSync(prFolder(38, 'hidden'))).toBe(true);
});

test('installation_repositories.removed hides every preview at once', async () => {
  feedback();
  installationToken();
  expect((await upload(39, SHA1, [LABEL])).status).toBe(201);
  const res = await send('installation_repositories', {
    action: 'removed',
    installation: { id: 42, account: { login: OWNER, id: 9001 } },
    repositories_removed: [{ id: 7001, name: REPO, full_name: `${OWNER}/${REPO}` }],
    repositories_added: [],
    sender: MAINTAINER,
  });
  expect(res.status).toBe(200);
  expect((await prRow(39)).visibility).toBe('hidden');
  expect(fs.existsSync(prFolder(39, 'public'))).toBe(false);
  expect(fs.existsSync(prFolder(39, 'hidden'))).toBe(true);
});

test('GET /can-have-public-preview tells CI whether a build would be public, from a decision at most 60 s old', async () => {
  installationToken();
  const repo = (await server.core.registry.findRepository(`${OWNER}/${REPO}`))!;
  await server.core.registry.resolveRepository({ id: 7001, fullName: repo.fullName, private: false });
  githubFor({ number: 40, labels: [] });
  let res = await fetch(`${server.url}/can-have-public-preview/${OWNER}/${REPO}/40`);
  expect(await res.json()).toEqual({ canHavePublicPreview: false, reason: "waiting for the 'safe for preview' label" });
  // Within 60 s the same decision answers, without asking GitHub again.
  const second = githubFor({ number: 40, labels: [LABEL] });
  res = await fetch(`${server.url}/can-have-public-preview/${OWNER}/${REPO}/40`);
  expect(await res.json()).toMatchObject({ canHavePublicPreview: false });
  expect(second.isDone()).toBe(false);
});

test('`preview-gate cleanup` removes builds of PRs closed longer than the retention, after asking GitHub', async () => {
  feedback();
  installationToken();
  expect((await upload(41, SHA1, [LABEL])).status).toBe(201);
  settingsFile();
  prRead({ number: 41, state: 'closed', labels: [LABEL], commits: [SHA1] });
  await send('pull_request', pullRequestEvent('closed', { number: 41, state: 'closed', labels: [LABEL], head: SHA1 }));
  await server.core.db.orm.update(pullRequests).set({ closedAt: new Date(Date.now() - 25 * 3600_000) }).where(eq(pullRequests.number, 41));

  githubFor({ number: 41, state: 'closed', labels: [LABEL], commits: [SHA1] });
  const out: string[] = [];
  const sink = new PassThrough().on('data', (d: Buffer) => out.push(d.toString()));
  const env = { ...dataEnv(server), APP_ID: '1', PRIVATE_KEY: appPrivateKey, WEBHOOK_SECRET: 'x', GITHUB_RETRIES: '0', GITHUB_THROTTLE: 'false', LOG_LEVEL: 'silent' as const };
  expect(await runCli(['cleanup'], { stdin: new PassThrough(), stdout: sink, stderr: sink, env })).toBe(0);
  expect(out.join('')).toMatch(/Removed the builds of 1 closed pull request/);
  expect(fs.existsSync(prFolder(41, 'public'))).toBe(false);
});

describe('settings cache (SETTINGS_CACHE_SECONDS)', () => {
  let cached: TestServer;
  beforeEach(async () => {
    cached = await startTestServer({ SETTINGS_CACHE_SECONDS: '60' });
  });
  afterEach(() => cached.close());

  const pushOf = (repository: object, files: string[]) => ({
    ref: 'refs/heads/main',
    repository,
    commits: [{ id: 'c'.repeat(40), added: [], modified: files, removed: [] }],
    installation: { id: 42 },
    sender: MAINTAINER,
  });

  test('a label webhook uses the settings read by the upload; a push changing them takes effect at once', async () => {
    feedback();
    installationToken();
    const commit = sha('c7');
    const pr = { number: 40, commits: [commit] };
    const reads = githubFor(pr, { settings: 'trustedLabel: ship it\n' });
    commitsOf(pr);
    expect((await cached.upload(40, commit, siteTarball('cached'))).status).toBe(202);
    expect(reads.isDone()).toBe(true);

    // No settings file is served now: the decision is made from the cache, asking GitHub only for the PR.
    prRead({ number: 40, labels: ['ship it'], commits: [commit] });
    let res = await sendWebhook(cached.url, 'pull_request', pullRequestEvent('labeled', { number: 40, labels: ['ship it'], head: commit }, { label: { name: 'ship it' } }));
    await cached.previews.settled();
    expect(res.status).toBe(200);
    expect(fs.existsSync(path.join(cached.config.buildsDir, 'docs', '40', commit.slice(0, 7), 'index.html'))).toBe(true);

    // A push to the default branch changes the trusted label: the cache is forgotten and the PR re-decided.
    settingsFile('trustedLabel: reviewed\n');
    prRead({ number: 40, labels: ['ship it'], commits: [commit] });
    res = await sendWebhook(cached.url, 'push', pushOf(repositoryJson, ['.github/preview-gate.yml']));
    await cached.previews.settled();
    expect(res.status).toBe(200);
    expect(fs.existsSync(path.join(cached.config.buildsDir, 'docs', 'hidden--40', commit.slice(0, 7), 'index.html'))).toBe(true);
  });

  test("a push to the organization's .github repository forgets the settings of all its repositories", async () => {
    feedback();
    installationToken();
    const commit = sha('c8');
    const pr = { number: 41, commits: [commit] };
    githubFor(pr, { settings: 'trustedLabel: first\n' });
    commitsOf(pr);
    expect((await cached.upload(41, commit, siteTarball('org'))).status).toBe(202);
    // The upload's feedback reads the settings too: done before the settings change below (on PostgreSQL it
    // otherwise ran beside the labeled decision and took the settings answer meant for it).
    await cached.previews.settled();

    const orgGithub = { ...repositoryJson, id: 7002, name: '.github', full_name: `${OWNER}/.github` };
    expect((await sendWebhook(cached.url, 'push', pushOf(orgGithub, ['.github/preview-gate.yml']))).status).toBe(200);

    // Read again: the label named by the new settings makes the PR public (the cached 'first' would ignore it).
    settingsFile('trustedLabel: second\n');
    prRead({ number: 41, labels: ['second'], commits: [commit] });
    const res = await sendWebhook(cached.url, 'pull_request', pullRequestEvent('labeled', { number: 41, labels: ['second'], head: commit }, { label: { name: 'second' } }));
    await cached.previews.settled();
    expect(res.status).toBe(200);
    expect(fs.existsSync(path.join(cached.config.buildsDir, 'docs', '41', commit.slice(0, 7), 'index.html'))).toBe(true);
  });
});
