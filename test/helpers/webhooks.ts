import crypto from 'node:crypto';
import nock from 'nock';
import { API, OWNER, REPO } from './github.js';
import { WEBHOOK_SECRET } from './server.js';

export const INSTALLATION_ID = 42;
export const MAINTAINER = { id: 1001, login: 'maintainer' };
export const CONTRIBUTOR = { id: 555, login: 'contributor' };

/** A webhook as GitHub sends it: JSON body and headers, signed with HMAC-SHA256 of the webhook secret. */
export function signedWebhook(event: string, payload: object, secret = WEBHOOK_SECRET) {
  const body = JSON.stringify(payload);
  const headers = {
    'content-type': 'application/json',
    'x-github-event': event,
    'x-github-delivery': crypto.randomUUID(),
    'x-hub-signature-256': `sha256=${crypto.createHmac('sha256', secret).update(body).digest('hex')}`,
  };
  return { body, headers };
}

export async function sendWebhook(baseUrl: string, event: string, payload: object, secret = WEBHOOK_SECRET): Promise<Response> {
  return fetch(`${baseUrl}/api/github/webhooks`, { method: 'POST', ...signedWebhook(event, payload, secret) });
}

export const repositoryJson = { id: 7001, name: REPO, full_name: `${OWNER}/${REPO}`, owner: { login: OWNER, id: 9001 }, default_branch: 'main', private: false };

/** A trimmed `pull_request` event payload with GitHub's field names. */
export function pullRequestEvent(
  action: string,
  pr: { number: number; labels?: string[]; state?: 'open' | 'closed'; head?: string; author?: { id: number; login: string } },
  extra: object = {},
) {
  const author = pr.author ?? CONTRIBUTOR;
  return {
    action,
    number: pr.number,
    pull_request: {
      number: pr.number,
      state: pr.state ?? 'open',
      user: { id: author.id, login: author.login },
      labels: (pr.labels ?? []).map((name, i) => ({ id: i + 1, name })),
      head: { sha: pr.head ?? 'f'.repeat(40), ref: 'feature' },
      base: { ref: 'main' },
    },
    repository: repositoryJson,
    sender: MAINTAINER,
    installation: { id: INSTALLATION_ID },
    ...extra,
  };
}

/** The installation token Probot asks for before acting on a webhook (cached per Probot instance). */
export function installationToken() {
  return nock(API)
    .post(`/app/installations/${INSTALLATION_ID}/access_tokens`)
    .optionally()
    .reply(201, { token: 'ghs_webhook', expires_at: new Date(Date.now() + 3600_000).toISOString() });
}

/** `.github/preview-gate.yml` as Probot's config plugin asks for it (repository, then the org's `.github`). */
export function settingsFile(yaml?: string) {
  const scope = nock(API);
  const file = encodeURIComponent('.github/preview-gate.yml');
  if (yaml === undefined) {
    scope.get(`/repos/${OWNER}/${REPO}/contents/${file}`).reply(404, { message: 'Not Found' });
    scope.get(`/repos/${OWNER}/.github/contents/${file}`).reply(404, { message: 'Not Found' });
  } else {
    scope.get(`/repos/${OWNER}/${REPO}/contents/${file}`).reply(200, yaml);
  }
  return scope;
}

/** Records what preview-gate tells GitHub: statuses, deployments, comments. */
export function feedback() {
  const calls = { statuses: [] as any[], deployments: [] as any[], deploymentStatuses: [] as any[], comments: [] as any[], commentEdits: [] as any[] };
  const scope = nock(API).persist();
  scope.post(/\/repos\/[^/]+\/[^/]+\/statuses\/[0-9a-f]{40}$/).reply(201, (_uri, body) => (calls.statuses.push(body), {}));
  scope.post(`/repos/${OWNER}/${REPO}/deployments`).reply(201, (_uri, body) => (calls.deployments.push(body), { id: 700 + calls.deployments.length }));
  scope.post(/\/repos\/[^/]+\/[^/]+\/deployments\/\d+\/statuses$/).reply(201, (uri, body) => (calls.deploymentStatuses.push({ uri, ...(body as object) }), {}));
  scope.get(/\/repos\/[^/]+\/[^/]+\/issues\/\d+\/comments/).reply(200, []);
  scope.post(/\/repos\/[^/]+\/[^/]+\/issues\/\d+\/comments$/).reply(201, (_uri, body) => (calls.comments.push(body), { id: 9000 + calls.comments.length }));
  scope.patch(/\/repos\/[^/]+\/[^/]+\/issues\/comments\/\d+$/).reply(200, (uri, body) => (calls.commentEdits.push({ uri, ...(body as object) }), {}));
  return calls;
}
