import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import nock from 'nock';
import { API, OWNER, pullRequestJson, REPO } from './helpers/github.js';
import { serverPerTest, sha, type TestServer } from './helpers/server.js';
import { siteTarball } from './helpers/tarballs.js';
import { CONTRIBUTOR, feedback, installationToken, repositoryJson, sendWebhook, settingsFile } from './helpers/webhooks.js';
import { makeZip, type ZipEntry } from './helpers/zips.js';

let server: TestServer;
const STORAGE = 'https://pipelines.actions.githubusercontent.com';
const FORK = { owner: 'fork-user', fullName: 'fork-user/docs', branch: 'fix-typo' };
const RUN_ID = 8001;
const ARTIFACT_ID = 77;
const HEAD = sha('d4');
const SETTINGS = 'workflow: preview.yml\n';

serverPerTest((s) => (server = s));

const site: ZipEntry[] = [
  { name: 'index.html', body: '<h1>from a fork</h1>' },
  { name: 'assets/', mode: 0o040755 },
  { name: 'assets/app.js', body: 'console.log(1)' },
];

/** A `workflow_run.completed` payload as GitHub sends it for a fork's pull_request run (no pull_requests listed). */
function workflowRun(run: Partial<Record<string, unknown>> = {}) {
  return {
    action: 'completed',
    workflow_run: {
      id: RUN_ID,
      name: 'Preview',
      path: '.github/workflows/preview.yml',
      event: 'pull_request',
      status: 'completed',
      conclusion: 'success',
      head_sha: HEAD,
      head_branch: FORK.branch,
      head_repository: { full_name: FORK.fullName, owner: { login: FORK.owner } },
      pull_requests: [],
      ...run,
    },
    repository: repositoryJson,
    sender: CONTRIBUTOR,
    installation: { id: 42 },
  };
}

/** GitHub's side of one pull: the fork PR, its commits, the run's artifact and the redirect to storage. */
function github(options: { pr?: number; state?: 'open' | 'closed'; labels?: string[]; zip?: Buffer; artifacts?: object[]; openPrs?: object[] } = {}) {
  const number = options.pr ?? 60;
  const zip = options.zip ?? makeZip(site);
  installationToken();
  settingsFile(SETTINGS);
  const api = nock(API);
  api
    .get(`/repos/${OWNER}/${REPO}/pulls`)
    .query({ state: 'open', head: `${FORK.owner}:${FORK.branch}`, per_page: '100' })
    .optionally()
    .reply(200, options.openPrs ?? [{ number, head: { sha: HEAD, repo: { full_name: FORK.fullName } } }]);
  api
    .get(`/repos/${OWNER}/${REPO}/pulls/${number}`)
    .optionally()
    .reply(200, pullRequestJson({ number, state: options.state, labels: options.labels, commits: [HEAD] }));
  api.get(`/repos/${OWNER}/${REPO}/pulls/${number}/commits`).query(true).optionally().reply(200, [{ sha: HEAD }]);
  api
    .get(`/repos/${OWNER}/${REPO}/actions/runs/${RUN_ID}/artifacts`)
    .query(true)
    .optionally()
    .reply(200, () => {
      const artifacts = options.artifacts ?? [{ id: ARTIFACT_ID, name: 'preview', size_in_bytes: zip.length, expired: false }];
      return { total_count: artifacts.length, artifacts };
    });
  api
    .get(`/repos/${OWNER}/${REPO}/actions/artifacts/${ARTIFACT_ID}/zip`)
    .optionally()
    .reply(302, '', { location: `${STORAGE}/artifacts/${ARTIFACT_ID}.zip?sig=abc` });
  // The installation token must not follow the redirect to the storage host.
  const storage = nock(STORAGE, { badheaders: ['authorization'] })
    .get(`/artifacts/${ARTIFACT_ID}.zip`)
    .query(true)
    .optionally()
    .reply(200, zip, { 'content-type': 'application/zip' });
  return { api, storage };
}

async function deliver(payload: object) {
  const res = await sendWebhook(server.url, 'workflow_run', payload);
  await server.previews.settled();
  return res;
}

const buildDir = (pr: number, visibility: 'public' | 'hidden') =>
  path.join(server.config.buildsDir, 'docs', visibility === 'public' ? String(pr) : `hidden--${pr}`, HEAD.slice(0, 7));
const pullLog = () => server.logs.filter((l) => /workflow run/.test(l.msg)).map((l) => l.msg);

/** Nothing stored, the reason logged on one line, the server still answering. */
async function expectRefused(res: Response, reason: RegExp) {
  expect(res.status).toBe(200);
  expect(server.buildsTree().filter((p) => !p.startsWith('.staging'))).toEqual([]);
  expect(fs.readdirSync(path.join(server.config.buildsDir, '.staging'))).toEqual([]);
  expect(pullLog()).toEqual([expect.stringMatching(reason)]);
  expect((await fetch(`${server.url}/health`)).status).toBe(200);
}

test("a fork PR's artifact is found through the API, downloaded across the redirect and stored hidden", async () => {
  const calls = feedback();
  const { storage } = github();
  const res = await deliver(workflowRun());
  expect(res.status).toBe(200);
  expect(storage.isDone()).toBe(true);
  expect(fs.readFileSync(path.join(buildDir(60, 'hidden'), 'index.html'), 'utf8')).toBe('<h1>from a fork</h1>');
  expect(fs.readFileSync(path.join(buildDir(60, 'hidden'), 'assets/app.js'), 'utf8')).toBe('console.log(1)');
  expect((fs.statSync(path.join(buildDir(60, 'hidden'), 'index.html')).mode & 0o777).toString(8)).toBe('444');
  // Stored into the repository's objects like an upload: the build's file is a link to its content's object.
  const hash = crypto.createHash('sha256').update('<h1>from a fork</h1>').digest('hex');
  const repo = (await server.core.registry.findRepository('octo-org/docs'))!;
  const object = path.join(server.config.dataDir, 'objects', String(repo.id), hash.slice(0, 2), hash);
  expect(fs.statSync(object).ino).toBe(fs.statSync(path.join(buildDir(60, 'hidden'), 'index.html')).ino);
  expect(calls.statuses).toEqual([expect.objectContaining({ state: 'pending', context: 'preview-gate' })]);
  expect(pullLog()).toEqual([expect.stringMatching(/stored the preview artifact of workflow run 8001 \(hidden\)/)]);
});

test('a labelled PR is public at once; a zip holding one .tgz is extracted like an upload', async () => {
  const calls = feedback();
  github({ labels: ['safe for preview'], zip: makeZip([{ name: 'site.tgz', body: siteTarball('packed'), store: true }]) });
  await deliver(workflowRun());
  expect(fs.readFileSync(path.join(buildDir(60, 'public'), 'index.html'), 'utf8')).toContain('packed');
  expect(calls.deployments).toHaveLength(1);
});

test('a same-repository run names its PR; the PR is taken from pull_requests without searching', async () => {
  feedback();
  const { api } = github({ pr: 61 });
  await deliver(workflowRun({ pull_requests: [{ number: 61, head: { sha: HEAD } }], head_repository: repositoryJson }));
  expect(fs.existsSync(path.join(buildDir(61, 'hidden'), 'index.html'))).toBe(true);
  expect(api.activeMocks().some((m) => /\/pulls(\?|$)/.test(m))).toBe(true); // the search was never made
});

test('a redelivered event stores nothing twice', async () => {
  feedback();
  github();
  await deliver(workflowRun());
  github();
  const again = await deliver(workflowRun());
  expect(again.status).toBe(200);
  expect(pullLog()[1]).toMatch(/not stored: A build of d4d4d4d already exists/);
});

describe('runs and artifacts that are not stored', () => {
  test('a failed run', async () => {
    github();
    await expectRefused(await deliver(workflowRun({ conclusion: 'failure' })), /not stored: the run's conclusion is failure/);
  });

  test('another workflow', async () => {
    github();
    await expectRefused(await deliver(workflowRun({ path: '.github/workflows/lint.yml' })), /the run is of lint.yml, not of the preview workflow preview.yml/);
  });

  test('a run not triggered by pull_request', async () => {
    github();
    await expectRefused(await deliver(workflowRun({ event: 'pull_request_target' })), /triggered by pull_request_target/);
  });

  test('pull mode not enabled in the settings', async () => {
    installationToken();
    settingsFile();
    await expectRefused(await deliver(workflowRun()), /no workflow is named in .github\/preview-gate.yml/);
  });

  test('the artifact is missing', async () => {
    github({ artifacts: [{ id: 5, name: 'coverage', size_in_bytes: 10, expired: false }] });
    await expectRefused(await deliver(workflowRun()), /the run has no artifact named "preview"/);
  });

  test('the artifact is larger than MAX_UPLOAD_BYTES (refused before downloading)', async () => {
    const { storage } = github({ artifacts: [{ id: ARTIFACT_ID, name: 'preview', size_in_bytes: server.config.maxUploadBytes + 1, expired: false }] });
    await expectRefused(await deliver(workflowRun()), /the artifact is larger than/);
    expect(storage.activeMocks()).toHaveLength(1); // never downloaded
  });

  test('a zip bomb: the entry declares more than MAX_BUILD_BYTES', async () => {
    github({ zip: makeZip([{ name: 'index.html', body: 'x', declaredSize: server.config.maxBuildBytes + 1 }]) });
    await expectRefused(await deliver(workflowRun()), /The build is larger than \d+ bytes once uncompressed/);
  });

  test('an entry whose real size is larger than it declares', async () => {
    github({ zip: makeZip([{ name: 'index.html', body: 'x'.repeat(5000), declaredSize: 10 }]) });
    await expectRefused(await deliver(workflowRun()), /not a valid zip file/);
  });

  test.each([
    ['a name climbing out', [{ name: '../../escape.html', body: 'x' }], /not a valid zip file|outside the build/],
    ['an absolute name', [{ name: '/etc/cron.d/x', body: 'x' }], /not a valid zip file|absolute path/],
    ['a backslash climbing out', [{ name: '..\\..\\escape.html', body: 'x' }], /not a valid zip file|outside the build|backslash/],
    ['a symbolic link', [{ name: 'index.html', body: '/etc/passwd', mode: 0o120777 }], /"index.html" is a symbolic link/],
    ['a file and a folder of one name', [{ name: 'a', body: 'x' }, { name: 'a/b', body: 'y' }], /conflicts with another entry/],
    ['the same file twice', [{ name: 'a.html', body: 'x' }, { name: 'a.html', body: 'y' }], /holds "a.html" more than once/],
    ['no files at all', [{ name: 'empty/', mode: 0o040755 }], /holds no files/],
    ['a tarball inside with a symlink', [{ name: 'site.tgz', body: 'not gzip', store: true }], /not gzip-compressed/],
  ] as [string, ZipEntry[], RegExp][])('unsafe or broken artifact: %s', async (_what, entries, reason) => {
    const calls = feedback();
    github({ zip: makeZip(entries) });
    await expectRefused(await deliver(workflowRun()), reason);
    // The PR shows why its preview is missing.
    expect(calls.statuses).toEqual([
      expect.objectContaining({ state: 'error', context: 'preview-gate', description: expect.stringMatching(/^Preview artifact refused: /) }),
    ]);
    expect(calls.statuses[0].description.length).toBeLessThanOrEqual(140);
  });

  test('not a zip at all', async () => {
    github({ zip: Buffer.from('<html>an error page from storage</html>') });
    await expectRefused(await deliver(workflowRun()), /not a valid zip file/);
  });

  test('the PR is already closed', async () => {
    github({ state: 'closed' });
    await expectRefused(await deliver(workflowRun()), /pull request #60 is closed/);
  });

  test('the head SHA is the head of no open PR (pushed again meanwhile, or another repository)', async () => {
    github({ openPrs: [{ number: 60, head: { sha: sha('e5'), repo: { full_name: FORK.fullName } } }] });
    await expectRefused(await deliver(workflowRun()), /commit d4d4.* is the head of no open pull request/);
  });

  test('an open PR of the same branch name from another fork is not matched', async () => {
    github({ openPrs: [{ number: 60, head: { sha: HEAD, repo: { full_name: 'someone-else/docs' } } }] });
    await expectRefused(await deliver(workflowRun()), /is the head of no open pull request/);
  });
});

test('GitHub failing while the artifact is listed: the webhook fails (GitHub redelivers) and nothing is stored', async () => {
  installationToken();
  settingsFile(SETTINGS);
  nock(API)
    .get(`/repos/${OWNER}/${REPO}/pulls`)
    .query(true)
    .reply(200, [{ number: 60, head: { sha: HEAD, repo: { full_name: FORK.fullName } } }]);
  nock(API).get(`/repos/${OWNER}/${REPO}/pulls/60`).reply(200, pullRequestJson({ number: 60, commits: [HEAD] }));
  nock(API).get(`/repos/${OWNER}/${REPO}/pulls/60/commits`).query(true).reply(200, [{ sha: HEAD }]);
  nock(API).get(`/repos/${OWNER}/${REPO}/actions/runs/${RUN_ID}/artifacts`).query(true).reply(502, 'bad gateway');
  const res = await deliver(workflowRun());
  expect(res.status).toBeGreaterThanOrEqual(500);
  expect(server.buildsTree().filter((p) => !p.startsWith('.staging'))).toEqual([]);
});
