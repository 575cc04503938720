/**
 * A stand-in for GitHub's REST API (GitHub Enterprise paths, `/api/v3`), reached by the real server through
 * GHE_HOST / GHE_PROTOCOL=http on 127.0.0.1, and as unkind as github.com where it matters to trust:
 * - state changes only through the test (labels, state, pushes, renames) and `updated_at` moves with them;
 * - every GET carries an ETag and a matching `If-None-Match` gets 304 (not counted against the rate limit);
 * - it can be down (502), hang (time out), or answer 403 secondary rate limit with `retry-after`;
 * - repositories are renamed keeping their id (the old name stops answering);
 * - it never redelivers a webhook: deliveries are the test's to send, late, twice or never.
 */
import crypto from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { manifestError } from './manifest-rules.js';

export interface FakeRepo {
  id: number;
  owner: { id: number; login: string };
  name: string;
  /** Files on the default branch (`.github/preview-gate.yml`). */
  files: Record<string, string>;
}

export interface FakePull {
  number: number;
  state: 'open' | 'closed';
  user: { id: number; login: string };
  labels: string[];
  commits: string[];
  updatedAt: Date;
  /** GitHub's title (default `Pull request <n>`), head branch (default `feature`), and whether the head is a fork. */
  title?: string;
  headRef?: string;
  fork?: boolean;
}

type Fault = { kind: 'down'; everything?: boolean } | { kind: 'hang' } | { kind: 'secondary-rate-limit'; retryAfter: number };

/** GitHub's `permissions` object of a repository for a role. */
function permissionsOf(role: string) {
  const at = (r: string) => ['read', 'triage', 'write', 'maintain', 'admin'].indexOf(role) >= ['read', 'triage', 'write', 'maintain', 'admin'].indexOf(r);
  return { admin: at('admin'), maintain: at('maintain'), push: at('write'), triage: at('triage'), pull: at('read') };
}

export class FakeGitHub {
  readonly repos = new Map<number, FakeRepo>();
  readonly pulls = new Map<string, FakePull>();
  /** `org/team` → member logins. */
  readonly teams = new Map<string, string[]>();
  readonly installations = new Map<number, { id: number; account: { id: number; login: string }; repoIds: number[] }>();
  /** Requests that count against an installation's rate limit (authenticated by an installation token, not 304). */
  counted = 0;
  notModified = 0;
  /** Every write, with when it arrived (ms). */
  readonly writes: { method: string; path: string; body: any; at: number }[] = [];
  /** Every request as `METHOD /path` (without /api/v3). */
  readonly requests: string[] = [];
  fault?: Fault;
  /** Milliseconds every answer waits before it is made (github.com answers in seconds when it is slow). */
  latencyMs = 0;
  /** The private key the manifest flow hands out. */
  appPem = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs1', format: 'pem' }).toString();
  private server!: http.Server;
  private clock = Date.now();
  private nextCommentId = 1;
  private readonly comments = new Map<number, string>();
  /** The issue (pull request) each comment was posted on, by comment id. */
  readonly commentIssues = new Map<number, { repoId: number; number: number }>();
  private readonly hanging = new Set<http.ServerResponse>();
  /** People who can sign in (OAuth), by login. */
  readonly users = new Map<string, { id: number; login: string }>();
  /** `<repository id>:<login>` → role (`read`, `triage`, `write`, `maintain`, `admin`). */
  readonly collaborators = new Map<string, string>();
  /** Who GitHub's authorize page signs in (the person at the browser); undefined: they deny. */
  signInAs?: string;
  /**
   * Faults of `GET /user/installations/{id}/repositories` (the dashboard's role lookup with a user's token), by
   * installation id: down (502), hang (the server's timeout), or a secondary rate limit (403 + retry-after).
   */
  readonly userFaults = new Map<number, Fault>();
  /** How long GitHub takes to answer that lookup (ms), for figures. */
  userLatencyMs = 0;
  /** Show GitHub's consent page (an "Authorize" link to the callback) instead of redirecting at once. */
  consentPage = false;
  /** The app's OAuth client (the manifest conversion hands out the same). */
  readonly client = { id: 'Iv1.abc', secret: 'cs-secret' };
  private readonly codes = new Map<string, { login: string; challenge: string; redirectUri: string }>();
  private readonly userTokens = new Map<string, string>();

  /** Manifests posted to /settings/apps/new, accepted or not, with GitHub's refusal. */
  readonly manifests: { manifest: Record<string, unknown>; error?: string }[] = [];
  private readonly manifestCodes = new Set<string>();

  /** An accepted manifest sends the browser to its redirect_url with a one-time code; a refused one gets GitHub's words. */
  private registerFromManifest(res: http.ServerResponse, body: string, state: string | null): void {
    let manifest: Record<string, unknown>;
    try {
      manifest = JSON.parse(new URLSearchParams(body).get('manifest') ?? '') as Record<string, unknown>;
    } catch {
      return void res.writeHead(422, { 'content-type': 'text/plain' }).end('Invalid manifest');
    }
    const error = manifestError(manifest);
    this.manifests.push({ manifest, error });
    if (error) return void res.writeHead(422, { 'content-type': 'text/plain' }).end(error);
    const code = crypto.randomBytes(10).toString('hex');
    this.manifestCodes.add(code);
    const back = new URL(String(manifest.redirect_url));
    back.searchParams.set('code', code);
    // GitHub hands the `state` of the form's URL back with the code, as in its OAuth flow.
    if (state !== null) back.searchParams.set('state', state);
    res.writeHead(302, { location: back.href }).end();
  }

  async start(): Promise<this> {
    this.server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => setTimeout(() => this.handle(req, res, Buffer.concat(chunks).toString()), this.latencyMs));
    });
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return this;
  }

  /** GHE_HOST / GHE_PROTOCOL for the server under test. */
  get env(): Record<string, string> {
    return { GHE_HOST: `127.0.0.1:${(this.server.address() as AddressInfo).port}`, GHE_PROTOCOL: 'http' };
  }

  async close(): Promise<void> {
    for (const res of this.hanging) res.destroy();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  // --- the world, as the test changes it -------------------------------------------------------------------

  /** A repository, in installation `installationId` (null: not installed, like an org's `.github`). */
  addRepo(repo: Omit<FakeRepo, 'files'> & { files?: Record<string, string> }, installationId: number | null = 42): FakeRepo {
    const full: FakeRepo = { files: {}, ...repo };
    this.repos.set(repo.id, full);
    if (installationId === null) return full;
    const inst = this.installations.get(installationId) ?? { id: installationId, account: repo.owner, repoIds: [] };
    inst.repoIds.push(repo.id);
    this.installations.set(installationId, inst);
    return full;
  }

  addPull(repoId: number, pull: Omit<FakePull, 'updatedAt' | 'state' | 'labels'> & Partial<FakePull>): FakePull {
    const full: FakePull = { state: 'open', labels: [], ...pull, updatedAt: this.tick() };
    this.pulls.set(`${repoId}#${pull.number}`, full);
    return full;
  }

  pull(repoId: number, number: number): FakePull {
    return this.pulls.get(`${repoId}#${number}`)!;
  }

  /** Changes a PR the way GitHub does: `updated_at` moves on. */
  change(repoId: number, number: number, change: Partial<Omit<FakePull, 'updatedAt'>>): FakePull {
    const pull = this.pull(repoId, number);
    Object.assign(pull, change, { updatedAt: this.tick() });
    return pull;
  }

  rename(repoId: number, name: string): void {
    this.repos.get(repoId)!.name = name;
  }

  // --- webhook payloads built from the current state (keep one to replay it later) ---------------------------

  repositoryPayload(repoId: number) {
    const r = this.repos.get(repoId)!;
    return { id: r.id, name: r.name, full_name: `${r.owner.login}/${r.name}`, owner: { id: r.owner.id, login: r.owner.login }, default_branch: 'main', private: false };
  }

  pullRequestEvent(repoId: number, number: number, action: string, extra: object = {}) {
    const installation = [...this.installations.values()].find((i) => i.repoIds.includes(repoId))!;
    return {
      action,
      number,
      pull_request: this.pullJson(repoId, this.pull(repoId, number)),
      repository: this.repositoryPayload(repoId),
      installation: { id: installation.id },
      sender: { id: 1001, login: 'maintainer' },
      ...extra,
    };
  }

  // --- the API --------------------------------------------------------------------------------------------

  private tick(): Date {
    // updated_at has whole seconds on GitHub; each change here is a second later than the previous one.
    this.clock = Math.max(this.clock + 1000, Math.floor(Date.now() / 1000) * 1000);
    return new Date(this.clock);
  }

  private repoByName(owner: string, name: string): FakeRepo | undefined {
    return [...this.repos.values()].find((r) => r.owner.login.toLowerCase() === owner.toLowerCase() && r.name.toLowerCase() === name.toLowerCase());
  }

  private pullJson(repoId: number, p: FakePull) {
    const r = this.repos.get(repoId)!;
    return {
      number: p.number,
      state: p.state,
      title: p.title ?? `Pull request ${p.number}`,
      user: { ...p.user, avatar_url: `https://avatars.githubusercontent.test/u/${p.user.id}?v=4` },
      labels: p.labels.map((name, i) => ({ id: i + 1, name })),
      head: { sha: p.commits.at(-1), ref: p.headRef ?? 'feature', repo: { full_name: p.fork ? `${p.user.login}/${r.name}` : `${r.owner.login}/${r.name}` } },
      base: { ref: 'main', repo: { id: r.id, full_name: `${r.owner.login}/${r.name}` } },
      updated_at: p.updatedAt.toISOString().replace(/\.\d+Z$/, 'Z'),
    };
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse, body: string): void {
    const url = new URL(req.url!, 'http://fake');
    const path = url.pathname.replace(/^\/api\/v3/, '');
    const method = req.method!;
    const installationToken = /^token ghs_/i.test(req.headers.authorization ?? '');
    const free = !installationToken || path === '/rate_limit';
    this.requests.push(`${method} ${path}`);

    // `everything`: the app's own (JWT) requests fail too, as when GitHub is unreachable.
    if (this.fault && (!free || (this.fault.kind === 'down' && this.fault.everything))) {
      if (this.fault.kind === 'hang') {
        this.hanging.add(res);
        return;
      }
      this.counted++;
      if (this.fault.kind === 'down') return this.send(res, 502, { message: 'Bad Gateway' });
      return this.send(res, 403, { message: 'You have exceeded a secondary rate limit. Please wait a few minutes before you try again.' }, { 'retry-after': String(this.fault.retryAfter) });
    }

    const answer = (status: number, data: unknown): void => {
      if (method === 'GET' && status === 200) {
        const etag = `"${crypto.createHash('sha1').update(JSON.stringify(data)).digest('hex')}"`;
        if (req.headers['if-none-match'] === etag) {
          this.notModified++;
          res.writeHead(304, { etag }).end();
          return;
        }
        if (!free) this.counted++;
        return this.send(res, status, data, { etag });
      }
      if (!free) this.counted++;
      return this.send(res, status, data);
    };
    // GitHub's "Register GitHub App" form (the setup page posts the manifest here): checked as GitHub checks it.
    if (path === '/settings/apps/new' && method === 'POST') return this.registerFromManifest(res, body, url.searchParams.get('state'));
    if (method !== 'GET') this.writes.push({ method, path, body: body ? JSON.parse(body) : undefined, at: Date.now() });

    let m: RegExpExecArray | null;
    // GitHub's OAuth web flow (user authorization of the GitHub App), with PKCE.
    if (path === '/login/oauth/authorize') {
      const q = url.searchParams;
      const redirect = new URL(q.get('redirect_uri') ?? '');
      if (q.get('client_id') !== this.client.id || q.get('code_challenge_method') !== 'S256' || !this.signInAs) {
        redirect.searchParams.set('error', 'access_denied');
      } else {
        const code = crypto.randomBytes(10).toString('hex');
        this.codes.set(code, { login: this.signInAs, challenge: q.get('code_challenge') ?? '', redirectUri: redirect.href });
        redirect.searchParams.set('code', code);
      }
      redirect.searchParams.set('state', q.get('state') ?? '');
      if (this.consentPage) {
        const href = redirect.href.replace(/&/g, '&amp;').replace(/"/g, '&quot;');
        return this.send(res, 200, `<!doctype html><title>Authorize</title><a id="authorize" href="${href}">Authorize preview-gate</a>`, { 'content-type': 'text/html' });
      }
      res.writeHead(302, { location: redirect.href }).end();
      return;
    }
    if (path === '/login/oauth/access_token' && method === 'POST') {
      const form = (req.headers['content-type'] ?? '').includes('json') ? JSON.parse(body) : Object.fromEntries(new URLSearchParams(body));
      if (form.client_id !== this.client.id || form.client_secret !== this.client.secret) return this.send(res, 200, { error: 'incorrect_client_credentials' });
      if (form.grant_type === 'refresh_token') {
        // A refresh token is good once, as on GitHub: the answer carries the next one.
        const login = this.userTokens.get(`refresh:${form.refresh_token}`);
        this.userTokens.delete(`refresh:${form.refresh_token}`);
        return login ? this.send(res, 200, this.issueUserToken(login)) : this.send(res, 200, { error: 'bad_refresh_token' });
      }
      const grant = this.codes.get(form.code);
      this.codes.delete(form.code);
      if (!grant) return this.send(res, 200, { error: 'bad_verification_code' });
      const challenge = crypto.createHash('sha256').update(String(form.code_verifier ?? '')).digest('base64url');
      if (challenge !== grant.challenge) return this.send(res, 200, { error: 'invalid_grant', error_description: 'code_verifier does not match' });
      return this.send(res, 200, this.issueUserToken(grant.login));
    }
    const userLogin = this.userTokens.get(/^bearer (ghu_\w+)$/i.exec(req.headers.authorization ?? '')?.[1] ?? '');
    if (path === '/user') return userLogin ? answer(200, this.users.get(userLogin)) : answer(401, { message: 'Bad credentials' });
    if ((m = /^\/user\/installations\/(\d+)\/repositories$/.exec(path))) {
      if (!userLogin) return answer(401, { message: 'Bad credentials' });
      const fault = this.userFaults.get(Number(m[1]));
      if (fault?.kind === 'hang') return void this.hanging.add(res);
      if (fault?.kind === 'down') return this.send(res, 502, { message: 'Bad Gateway' });
      if (fault) return this.send(res, 403, { message: 'You have exceeded a secondary rate limit.' }, { 'retry-after': String(fault.retryAfter), 'x-ratelimit-remaining': '0' });
      const inst = this.installations.get(Number(m[1]));
      if (!inst) return answer(404, { message: 'Not Found' });
      // The repositories of the installation the user can reach, each with the user's `permissions`.
      const reachable = inst.repoIds.flatMap((id) => {
        const role = this.collaborators.get(`${id}:${userLogin}`);
        return role ? [{ ...this.repositoryPayload(id), permissions: permissionsOf(role) }] : [];
      });
      const perPage = Math.min(100, Number(url.searchParams.get('per_page') ?? 30));
      const page = Number(url.searchParams.get('page') ?? 1);
      const listed = { total_count: reachable.length, repositories: reachable.slice((page - 1) * perPage, page * perPage) };
      if (this.userLatencyMs) return void setTimeout(() => answer(200, listed), this.userLatencyMs);
      return answer(200, listed);
    }
    if ((m = /^\/app\/installations\/(\d+)\/access_tokens$/.exec(path))) {
      if (!this.installations.has(Number(m[1]))) return answer(404, { message: 'Not Found' });
      return answer(201, { token: `ghs_fake${m[1]}`, expires_at: new Date(Date.now() + 3600_000).toISOString() });
    }
    if ((m = /^\/app-manifests\/([^/]+)\/conversions$/.exec(path)) && method === 'POST') {
      // The manifest flow's last step: GitHub hands over the new app's credentials once, for the code.
      // good-code: a code of a manifest that tests take as registered without posting it.
      if (m[1] !== 'good-code' && !this.manifestCodes.delete(m[1]!)) return answer(404, { message: 'Not Found' });
      return answer(201, { id: 4242, slug: 'preview-gate', pem: this.appPem, webhook_secret: 'whsec-from-github', client_id: 'Iv1.abc', client_secret: 'cs-secret', html_url: 'https://github.example/apps/preview-gate' });
    }
    if (path === '/app/installations') {
      return answer(200, [...this.installations.values()].map((i) => ({ id: i.id, account: { ...i.account, type: 'Organization' }, suspended_at: null })));
    }
    if (path === '/rate_limit') return answer(200, { resources: { core: { limit: 5000, remaining: 5000 - this.counted, reset: 0, used: this.counted } } });
    if (path === '/installation/repositories') {
      const token = /ghs_fake(\d+)/.exec(req.headers.authorization ?? '');
      const inst = this.installations.get(Number(token?.[1]));
      const repositories = (inst?.repoIds ?? []).map((id) => this.repositoryPayload(id));
      return answer(200, { total_count: repositories.length, repositories });
    }
    if ((m = /^\/orgs\/([^/]+)\/teams\/([^/]+)\/memberships\/([^/]+)$/.exec(path))) {
      const members = this.teams.get(`${m[1]}/${m[2]}`) ?? [];
      return members.includes(decodeURIComponent(m[3]!)) ? answer(200, { state: 'active', role: 'member' }) : answer(404, { message: 'Not Found' });
    }
    if (!(m = /^\/repos\/([^/]+)\/([^/]+)(\/.*)?$/.exec(path))) return answer(404, { message: `fake GitHub has no ${method} ${path}` });
    const repo = this.repoByName(m[1]!, m[2]!);
    if (!repo) return answer(404, { message: 'Not Found' });
    const rest = m[3] ?? '';
    if (rest === '/installation') {
      const inst = [...this.installations.values()].find((i) => i.repoIds.includes(repo.id));
      return inst ? answer(200, { id: inst.id, account: { ...inst.account, type: 'Organization' } }) : answer(404, { message: 'Not Found' });
    }
    if (rest === '') {
      // With a user's token, GitHub adds that user's `permissions` (and hides a private repository they cannot see).
      const role = userLogin ? this.collaborators.get(`${repo.id}:${userLogin}`) : undefined;
      return answer(200, { ...this.repositoryPayload(repo.id), ...(role ? { permissions: permissionsOf(role) } : {}) });
    }
    if ((m = /^\/contents\/(.+)$/.exec(rest))) {
      const file = repo.files[decodeURIComponent(m[1]!)];
      return file === undefined ? answer(404, { message: 'Not Found' }) : answer(200, file);
    }
    if ((m = /^\/pulls\/(\d+)$/.exec(rest))) {
      const pull = this.pulls.get(`${repo.id}#${m[1]}`);
      return pull ? answer(200, this.pullJson(repo.id, pull)) : answer(404, { message: 'Not Found' });
    }
    if ((m = /^\/pulls\/(\d+)\/commits$/.exec(rest))) {
      const pull = this.pulls.get(`${repo.id}#${m[1]}`);
      return answer(200, (pull?.commits ?? []).map((sha) => ({ sha })));
    }
    if ((m = /^\/collaborators\/([^/]+)\/permission$/.exec(rest))) {
      if (!userLogin) return answer(401, { message: 'Bad credentials' });
      const role = this.collaborators.get(`${repo.id}:${decodeURIComponent(m[1]!)}`);
      if (!role) return answer(404, { message: 'Not Found' });
      return answer(200, { permission: ['maintain', 'triage'].includes(role) ? (role === 'maintain' ? 'write' : 'read') : role, role_name: role });
    }
    if ((m = /^\/issues\/(\d+)\/labels$/.exec(rest)) && method === 'POST') {
      const pull = this.pulls.get(`${repo.id}#${m[1]}`);
      if (!pull) return answer(404, { message: 'Not Found' });
      const role = userLogin ? this.collaborators.get(`${repo.id}:${userLogin}`) : 'app';
      if (!role || role === 'read') return answer(403, { message: 'Must have triage access' });
      const added = (JSON.parse(body).labels as string[]).filter((l) => !pull.labels.includes(l));
      this.change(repo.id, pull.number, { labels: [...pull.labels, ...added] });
      return answer(200, pull.labels.map((name) => ({ name })));
    }
    if ((m = /^\/issues\/(\d+)\/labels\/(.+)$/.exec(rest)) && method === 'DELETE') {
      const pull = this.pulls.get(`${repo.id}#${m[1]}`)!;
      const label = decodeURIComponent(m[2]!);
      if (!pull.labels.includes(label)) return answer(404, { message: 'Label does not exist' });
      this.change(repo.id, pull.number, { labels: pull.labels.filter((l) => l !== label) });
      return answer(200, []);
    }
    if ((m = /^\/issues\/(\d+)\/comments$/.exec(rest))) {
      if (method === 'GET') return answer(200, []);
      const id = this.nextCommentId++;
      this.comments.set(id, JSON.parse(body).body);
      this.commentIssues.set(id, { repoId: repo.id, number: Number(m[1]) });
      return answer(201, { id });
    }
    if ((m = /^\/issues\/comments\/(\d+)$/.exec(rest))) {
      this.comments.set(Number(m[1]), JSON.parse(body).body);
      return answer(200, { id: Number(m[1]) });
    }
    if (/^\/statuses\/[0-9a-f]{40}$/.test(rest)) return answer(201, {});
    if (rest === '/deployments') return answer(201, { id: this.nextCommentId++ });
    if (/^\/deployments\/\d+\/statuses$/.test(rest)) return answer(201, {});
    return answer(404, { message: `fake GitHub has no ${method} ${path}` });
  }

  private issueUserToken(login: string) {
    const access = `ghu_${crypto.randomBytes(12).toString('hex')}`;
    const refresh = `ghr_${crypto.randomBytes(12).toString('hex')}`;
    this.userTokens.set(access, login);
    this.userTokens.set(`refresh:${refresh}`, login);
    return { access_token: access, token_type: 'bearer', expires_in: 28800, refresh_token: refresh, refresh_token_expires_in: 15897600, scope: '' };
  }

  /** A person who can sign in, and their role on a repository. */
  addUser(user: { id: number; login: string }, roles: Record<number, string> = {}): void {
    this.users.set(user.login, user);
    for (const [repoId, role] of Object.entries(roles)) this.collaborators.set(`${repoId}:${user.login}`, role);
  }

  /** The text of the preview comment, as GitHub would show it now. */
  commentText(): string | undefined {
    return [...this.comments.values()].at(-1);
  }

  private send(res: http.ServerResponse, status: number, data: unknown, headers: Record<string, string> = {}): void {
    const raw = typeof data === 'string';
    res.writeHead(status, { 'content-type': raw ? 'text/plain; charset=utf-8' : 'application/json; charset=utf-8', ...headers });
    res.end(raw ? data : JSON.stringify(data));
  }
}
