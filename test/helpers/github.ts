import crypto from 'node:crypto';
import nock from 'nock';

export const API = 'https://api.github.com';

/** A real RSA key for the app's JWT (Probot signs with it; nock does not check it). */
export const appPrivateKey = crypto
  .generateKeyPairSync('rsa', { modulusLength: 2048 })
  .privateKey.export({ type: 'pkcs1', format: 'pem' })
  .toString();

export interface FakePr {
  owner?: string;
  repo?: string;
  number: number;
  state?: 'open' | 'closed';
  labels?: string[];
  author?: { id: number; login: string };
  commits?: string[];
}

export const OWNER = 'octo-org';
export const REPO = 'docs';

/** GitHub as Probot sees it for one installed repository, with exactly the calls an upload makes. */
export function githubFor(pr: FakePr, options: { settings?: string; teams?: Record<string, string[]>; installationId?: number } = {}) {
  const owner = pr.owner ?? OWNER;
  const repo = pr.repo ?? REPO;
  const installationId = options.installationId ?? 42;
  const scope = nock(API);
  scope
    .get(`/repos/${owner}/${repo}/installation`)
    .reply(200, { id: installationId, account: { login: owner, id: 9001, type: 'Organization' } });
  // An upload asks GitHub several things at once: each may fetch the installation token before it is cached.
  nock(API)
    .post(`/app/installations/${installationId}/access_tokens`)
    .times(4)
    .optionally()
    .reply(201, { token: 'ghs_test', expires_at: new Date(Date.now() + 3600_000).toISOString() });
  scope
    .get(`/repos/${owner}/${repo}/contents/${encodeURIComponent('.github/preview-gate.yml')}`)
    .reply(options.settings === undefined ? 404 : 200, options.settings ?? { message: 'Not Found' });
  if (options.settings === undefined) {
    // Probot's config convention: without a repository file, the organization's `.github` repository is asked.
    scope.get(`/repos/${owner}/.github/contents/${encodeURIComponent('.github/preview-gate.yml')}`).reply(404, { message: 'Not Found' });
  }
  scope.get(`/repos/${owner}/${repo}/pulls/${pr.number}`).reply(200, pullRequestJson(pr));
  for (const [team, members] of Object.entries(options.teams ?? {})) {
    scope
      .get(new RegExp(`^/orgs/${owner}/teams/${team}/memberships/[^/]+$`))
      .optionally()
      .reply((uri) => {
        const user = decodeURIComponent(uri.split('/').pop()!);
        return members.includes(user) ? [200, { state: 'active', role: 'member' }] : [404, { message: 'Not Found' }];
      });
  }
  return scope;
}

/** The commits listing of a PR (the upload's "is this SHA in the PR" question). */
export function commitsOf(pr: FakePr) {
  return nock(API)
    .get(`/repos/${pr.owner ?? OWNER}/${pr.repo ?? REPO}/pulls/${pr.number}/commits`)
    .query(true)
    .reply(200, (pr.commits ?? []).map((sha) => ({ sha })));
}

/** GitHub's id of the test repository (also in the webhook payloads' `repository`). */
export const REPO_ID = 7001;

export function pullRequestJson(pr: FakePr & { updatedAt?: string; repoId?: number }) {
  const author = pr.author ?? { id: 555, login: 'contributor' };
  return {
    number: pr.number,
    state: pr.state ?? 'open',
    user: { id: author.id, login: author.login },
    labels: (pr.labels ?? []).map((name, i) => ({ id: i + 1, name })),
    head: { sha: pr.commits?.at(-1) ?? 'f'.repeat(40), ref: 'feature' },
    base: { ref: 'main', repo: { id: pr.repoId ?? REPO_ID, full_name: `${pr.owner ?? OWNER}/${pr.repo ?? REPO}` } },
    updated_at: pr.updatedAt ?? new Date().toISOString(),
  };
}

/** One read of the PR by a queued decision (the installation is known from the webhook: no /installation call). */
export function prRead(pr: FakePr & { updatedAt?: string }) {
  return nock(API).get(`/repos/${pr.owner ?? OWNER}/${pr.repo ?? REPO}/pulls/${pr.number}`).reply(200, pullRequestJson(pr));
}

/**
 * Only local connections: GitHub is what nock answers, and its feedback endpoints (commit statuses, deployments,
 * comments) are answered for the whole test (a beforeEach; nock.cleanAll() after each).
 */
export function githubThroughNock(): void {
  nock.disableNetConnect();
  nock.enableNetConnect('127.0.0.1');
  nock(API).persist().post(/statuses|deployments|comments/).reply(201, { id: 1 }).get(/comments/).reply(200, []);
}
