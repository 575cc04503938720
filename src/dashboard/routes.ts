import crypto from 'node:crypto';
import { and, desc, eq, inArray } from '../db/orm.js';
import { parse as parseCookies } from 'cookie';
import express, { Router, type Request, type Response } from 'express';
import { EncryptJWT, jwtDecrypt } from 'jose';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import type { Database } from '../db/database.js';
import { accounts, builds, pullRequests, users, visibilityChanges } from '../db/tables.js';
import { HttpError } from '../errors.js';
import { buildUrl, latestUrl } from '../notify.js';
import type { Previews } from '../previews.js';
import type { Registry, Repository } from '../registry.js';
import { atLeast, type GitHubUserApi, type RepoRoles, type Role } from './github-user.js';
import { changesOfBuilds, describeChanges, type BuildChanges, type ChangedFile, type LoadsChanged } from '../previews/changed-pages.js';
import { html, page, problemPage, signInPage, type Html } from './pages.js';
import type { Session, Sessions } from './sessions.js';

export interface DashboardDeps {
  config: Config;
  db: Database;
  registry: Registry;
  previews: Previews;
  sessions: Sessions;
  api: GitHubUserApi;
  log: Logger;
}

/** A user's role on a repository is asked again after this long: a removed collaborator loses access within it. */
const ROLE_CACHE_MS = 5 * 60_000;
/** How long a sign-in may take between /login and GitHub's callback. */
const STATE_SECONDS = 10 * 60;
/** The paths of a preview host that nginx hands to Node (a build cannot use them). */
export const PREVIEW_TICKET_PATH = '/.preview-gate/ticket';
export const PREVIEW_AUTH_PATH = '/.preview-gate/auth';

/** Cookie names: `__Host-` (Secure, host-only, Path=/) whenever PUBLIC_URL is https, as in production. */
const cookieNames = (config: Config) => {
  const secure = config.publicUrl.startsWith('https:');
  const name = (base: string) => (secure ? `__Host-${base}` : base);
  return { secure, session: name('preview-gate'), view: name('preview-gate-view'), signIn: name('preview-gate-signin') };
};

/** Sign-in, the dashboard, and the hidden-preview grants (tickets, host cookies, nginx's auth sub-request). */
export function dashboardRouter(deps: DashboardDeps, roles = new RoleCache(deps.api, deps.sessions, deps.registry)): Router {
  const { config, sessions, api } = deps;
  const names = cookieNames(config);
  const router = Router({ caseSensitive: true, strict: true }); // as the app's routing (server.ts)
  const form = express.urlencoded({ extended: false, limit: '4kb' });
  const signInState = new SignInState(config);
  const hiddenPreview = hiddenPreviewCheck(deps, roles);
  const redirectUri = `${config.publicUrl}/login/callback`;

  // --- signing in -------------------------------------------------------------------------------------------
  const signInCookie = { httpOnly: true, secure: names.secure, sameSite: 'lax' as const, path: '/' };
  router.get('/login', async (req, res) => {
    if (!config.githubClientId) {
      return void res.status(503).type('html').send(problemPage('Sign-in is not set up', 'The operator has not given GITHUB_CLIENT_ID and GITHUB_CLIENT_SECRET (the GitHub App\'s client id and secret).'));
    }
    const state = crypto.randomBytes(24).toString('base64url');
    const verifier = crypto.randomBytes(32).toString('base64url');
    const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
    // The state lives in this browser only (RFC 6749 §10.12): a callback URL finished in another browser fails.
    const sealed = await signInState.seal({ state, verifier, next: safeNext(req.query.next) });
    res.cookie(names.signIn, sealed, { ...signInCookie, maxAge: STATE_SECONDS * 1000 });
    res.redirect(302, api.authorizeUrl(state, challenge, redirectUri));
  });

  router.get('/login/callback', async (req, res) => {
    const state = typeof req.query.state === 'string' ? req.query.state : '';
    const pending = await signInState.open(cookieOf(req, names.signIn));
    res.clearCookie(names.signIn, signInCookie);
    if (req.query.error === 'access_denied') {
      return void res.status(400).type('html').send(signInPage('You cancelled the sign-in on GitHub; nothing was changed. Sign in again whenever you like.'));
    }
    if (!pending || !safeEqual(pending.state, state) || typeof req.query.code !== 'string') {
      return void res.status(400).type('html').send(signInPage('The sign-in could not be completed: it expired or did not start here. Sign in again.'));
    }
    try {
      const tokens = await api.exchangeCode(req.query.code, pending.verifier, redirectUri);
      const user = await api.user(tokens.accessToken);
      const cookie = await sessions.open(user, tokens);
      res.cookie(names.session, cookie, { httpOnly: true, secure: names.secure, sameSite: 'lax', path: '/', maxAge: config.sessionMs });
      res.redirect(303, pending.next);
    } catch (err) {
      if (!(err instanceof HttpError)) throw err;
      deps.log.info({ status: err.status }, `sign-in failed: ${err.message}`);
      res.status(err.status === 503 ? 503 : 401).type('html').send(signInPage(`Sign-in failed: ${err.message}`));
    }
  });

  router.post('/logout', form, async (req, res) => {
    const session = await withCsrf(req, res);
    if (!session) return;
    await sessions.revoke(session.id);
    await sessions.audit(session.userId, 'sign-out', session.user.login);
    res.clearCookie(names.session, { path: '/', secure: names.secure, httpOnly: true, sameSite: 'lax' });
    res.redirect(303, '/');
  });

  // --- the dashboard ----------------------------------------------------------------------------------------
  router.get('/', async (req, res) => {
    const session = await sessions.find(cookieOf(req, names.session));
    res.set('Cache-Control', 'private, no-store');
    if (!session) return void res.type('html').send(signInPage());
    const access = await repositoryAccess(deps, roles, session);
    const visible = access.flatMap((a) => ('role' in a && atLeast(a.role, 'read') ? [a] : []));
    const failed = access.flatMap((a) => ('failure' in a ? [a] : []));
    const body = await dashboardBody(deps, visible, session, dashboardQuery(req.query), flashOf(req.query.done));
    res.type('html').send(page('Dashboard', html`${await notCheckedNote(deps, failed)}${body}`, { login: session.user.login, csrf: session.csrf }));
  });

  // The first path (row ids) is the old form's: pages already open keep working.
  router.post(['/repos/:githubRepoId/pulls/:number/:action', '/pulls/:repositoryId/:number/:action'], form, async (req, res) => {
    const session = await withCsrf(req, res);
    if (!session) return;
    const params = req.params as Record<string, string | undefined>; // two path forms: typed loosely by Express
    const action = params.action;
    const repo = await repositoryOf(deps, params);
    const number = Number(params.number);
    if ((action !== 'publish' && action !== 'hide') || !repo || !Number.isSafeInteger(number)) {
      return void res.status(404).type('html').send(problemPage('Not found', 'There is no such pull request here.'));
    }
    try {
      const needed = action === 'publish' ? 'write' : 'triage';
      if (!atLeast(await roles.role(session, repo), needed)) {
        const what = action === 'publish' ? 'Publishing needs write access (the role that can open the hidden preview)' : 'Hiding needs the triage role or more';
        return void res.status(403).type('html').send(problemPage('Not allowed', `${what} on ${repo.fullName}.`));
      }
      const token = await sessions.accessToken(session);
      const settings = deps.previews.decisions.storedSettings(repo);
      const label = settings?.trustedLabel ?? 'safe for preview';
      // As the signed-in user, with their token: GitHub's timeline names them, not the app.
      if (action === 'publish') {
        const given: unknown = (req.body as Record<string, unknown> | undefined)?.sha;
        const reviewed = typeof given === 'string' && /^[0-9a-f]{40}$/.test(given) ? given : undefined;
        if (!reviewed) {
          return void res.status(400).type('html').send(problemPage('Which commit?', 'The form did not say which commit you reviewed; open the dashboard again and publish from there.'));
        }
        // The label vouches for what the reviewer saw: a head moved since the page was shown publishes nothing.
        const head = await api.pullHead(token, repo.fullName, number);
        if (head !== reviewed) {
          return void res.status(409).type('html').send(problemPage('The pull request has moved on', `Pull request #${number} now ends at ${head.slice(0, 7)}, not at ${reviewed.slice(0, 7)} that this page showed: nothing was published and the label was not added. Review the newer commits, then publish again.`));
        }
        // Bound before the label is added: a push racing the click is then another commit than the one vouched for.
        if (settings && !settings.labelTrustsNewCommits) await bindReviewedSha(deps.db, repo.id, number, reviewed);
        await api.addLabel(token, repo.fullName, number, label);
      } else {
        await api.removeLabel(token, repo.fullName, number, label);
      }
      await sessions.audit(session.userId, action, `${repo.fullName}#${number}`, `label '${label}' ${action === 'publish' ? 'added' : 'removed'}`);
      await deps.previews.reconcile(repo, number, { event: `dashboard.${action}`, actor: { id: session.user.githubId, login: session.user.login } });
      res.redirect(303, `/?done=${action === 'publish' ? 'published' : 'hidden'}-${number}#${anchorOf(repo, number)}`);
    } catch (err) {
      if (!(err instanceof HttpError)) throw err;
      res.status(err.status >= 500 ? 503 : err.status).type('html').send(problemPage('That did not work', err.message));
    }
  });

  // --- hidden previews --------------------------------------------------------------------------------------
  /** From the dashboard to a hidden preview: a one-time ticket in a redirect to that host. */
  // GitHub's ids (repository id, PR number, commit SHA); the old form with our row id keeps working.
  router.get(['/repos/:githubRepoId/pulls/:number/commits/:sha/view', '/view/:repositoryId/:number/:sha7'], async (req, res) => {
    const session = await sessions.find(cookieOf(req, names.session));
    if (!session) return void res.redirect(302, `/login?next=${encodeURIComponent(req.originalUrl)}`);
    const params = req.params as Record<string, string | undefined>; // two path forms: typed loosely by Express
    const repo = await repositoryOf(deps, params);
    const pr = repo && (await deps.registry.findPullRequest(repo.id, Number(params.number)));
    const given = params.sha7 ?? params.sha ?? '';
    const sha7 = (params.sha7 ? /^[0-9a-f]{7}$/ : /^[0-9a-f]{7,40}$/).test(given) ? given.slice(0, 7) : undefined;
    if (!repo || !pr || !sha7) return void res.status(404).type('html').send(problemPage('Not found', 'There is no such preview.'));
    const url = buildUrl(config, (await deps.previews.decisions.currentRepo(repo)).site, pr.number, sha7);
    if (pr.visibility === 'public') return void res.redirect(302, url);
    try {
      if (!atLeast(await roles.role(session, repo), 'write')) {
        return void res.status(403).type('html').send(problemPage('Not allowed', `Hidden previews of ${repo.fullName} are for people who can push to it.`));
      }
    } catch (err) {
      if (!(err instanceof HttpError)) throw err;
      return void res.status(503).type('html').send(problemPage('GitHub could not be asked', err.message));
    }
    const ticket = await sessions.issueTicket(session, new URL(url).host);
    // Where on the preview to land (a changed page's link): checked here and again where the ticket is redeemed.
    const path = safeLocalPath(req.query.path);
    const landing = path === '/' ? '' : `&path=${encodeURIComponent(path)}`;
    res.redirect(302, `${url.replace(/\/$/, '')}${PREVIEW_TICKET_PATH}?t=${encodeURIComponent(ticket)}${landing}`);
  });

  /** On the preview host (through nginx): the ticket becomes a cookie for this host only. */
  router.get(PREVIEW_TICKET_PATH, async (req, res) => {
    const host = previewHost(config, req);
    const ticket = typeof req.query.t === 'string' ? req.query.t : '';
    const grant = host && (await sessions.redeemTicket(ticket, host.name));
    res.set('Cache-Control', 'private, no-store');
    if (!host || !grant) return void res.status(404).type('text').send('Not Found');
    res.cookie(names.view, grant.cookie, { httpOnly: true, secure: names.secure, sameSite: 'lax', path: '/', maxAge: grant.maxAgeSeconds * 1000 });
    const session = await sessions.grant(grant.cookie, host.name);
    await sessions.audit(session?.userId ?? null, 'view-hidden', host.name);
    // Only a path on this same host: the query is anyone's text (an open redirect would lend the preview's name).
    res.redirect(303, safeLocalPath(req.query.path));
  });

  /** nginx's auth_request for a hidden preview: 204 lets it serve, anything else is its usual 404. */
  router.get(PREVIEW_AUTH_PATH, async (req, res) => {
    res.set('Cache-Control', 'private, no-store');
    const granted = await hiddenPreview(req);
    // nginx links the hidden preview's banner to the pull request.
    if (granted) res.set('X-Preview-Gate-Pr', granted.prLink);
    res.status(granted ? 204 : 403).end();
  });

  async function withCsrf(req: Request, res: Response): Promise<Session | undefined> {
    const session = await sessions.find(cookieOf(req, names.session));
    const origin = req.headers.origin;
    const given = typeof req.body?.csrf === 'string' ? req.body.csrf : '';
    const ok = session && safeEqual(given, session.csrf) && (!origin || origin === new URL(config.publicUrl).origin);
    if (!ok) {
      res.status(403).type('html').send(problemPage('Not allowed', 'This form did not come from your dashboard (or your session ended); open the dashboard and try again.'));
      return undefined;
    }
    return session;
  }

  return router;
}

/**
 * The question behind nginx's auth sub-request (and, with STORAGE=s3, behind each hidden file it resolves): does
 * this preview host's view cookie belong to a live grant for this host, of someone who may push to the repository
 * of the host's PR, which is hidden now? The PR's link for the banner if so.
 */
export function hiddenPreviewCheck(deps: DashboardDeps, roles: RoleCache): (req: Request) => Promise<{ prLink: string } | undefined> {
  const names = cookieNames(deps.config);
  return async (req) => {
    const host = previewHost(deps.config, req);
    const session = host && (await deps.sessions.grant(cookieOf(req, names.view), host.name));
    // The rows are read now: each one's site is its current one.
    const repo = host && (await deps.registry.installedRepositories()).find((r) => r.site === host.site);
    const pr = repo && (await deps.registry.findPullRequest(repo.id, host!.pr));
    if (!session || !repo || !pr || pr.visibility !== 'hidden') return undefined;
    try {
      if (!atLeast(await roles.role(session, repo), 'write')) return undefined;
    } catch {
      return undefined; // GitHub could not say: the preview stays hidden
    }
    return { prLink: `${deps.config.githubWebUrl}/${repo.fullName}/pull/${pr.number}` };
  };
}

/**
 * A user's roles on repositories, asked with their own token: one list per installation (or, for a repository
 * whose installation is not known yet, that repository alone), kept ≤ 5 minutes. Concurrent questions share one
 * request; a failed answer is never kept, so a rate limit or a 5xx is asked again at the next request.
 */
export class RoleCache {
  private readonly answers = new Map<string, { roles: Promise<RepoRoles>; at: number }>();

  constructor(
    private readonly api: GitHubUserApi,
    private readonly sessions: Sessions,
    private readonly registry: Registry,
  ) {}

  /** `installationId`: the repository's, when the caller already knows it (undefined: read it). */
  async role(session: Session, repo: Repository, known?: number | null): Promise<Role> {
    const installationId = known !== undefined ? known : (await this.registry.accountOf(repo)).installationId;
    const roles = await this.rolesOf(session, installationId, repo);
    // By GitHub's id only: a name GitHub lists under another id is another repository (this one was deleted or
    // renamed and the name taken). A repository whose id is not known yet has only its name to go by.
    if (repo.githubId !== null) return roles.byId.get(repo.githubId) ?? 'none';
    return roles.byName.get(repo.fullName.toLowerCase()) ?? 'none';
  }

  private rolesOf(session: Session, installationId: number | null, repo: Repository): Promise<RepoRoles> {
    const key = installationId ? `${session.userId}:installation:${installationId}` : `${session.userId}:repository:${repo.id}`;
    const cached = this.answers.get(key);
    if (cached && Date.now() - cached.at < ROLE_CACHE_MS) return cached.roles;
    const roles = this.sessions
      .accessToken(session)
      .then((token) => (installationId ? this.api.installationRoles(token, installationId) : this.api.repositoryRoles(token, repo.fullName)));
    const entry = { roles, at: Date.now() };
    if (this.answers.size > 10_000) this.answers.clear();
    this.answers.set(key, entry);
    roles.catch(() => {
      if (this.answers.get(key) === entry) this.answers.delete(key);
    });
    return roles;
  }
}

/** `labelTrustsNewCommits: false`: the trusted label is given at this (reviewed) commit and vouches for it only. */
async function bindReviewedSha(db: Database, repositoryId: number, number: number, sha: string): Promise<void> {
  await db.orm.update(pullRequests).set({ labelSha: sha }).where(and(eq(pullRequests.repositoryId, repositoryId), eq(pullRequests.number, number)));
}

/** The installed repository a link names: by GitHub's id (`githubRepoId`), or by our row id (old links). */
async function repositoryOf(deps: DashboardDeps, params: Record<string, string | undefined>): Promise<Repository | undefined> {
  const installed = await deps.registry.installedRepositories();
  if (params.githubRepoId !== undefined) return installed.find((r) => r.githubId !== null && r.githubId === Number(params.githubRepoId));
  return installed.find((r) => r.id === Number(params.repositoryId));
}

/** Links carry GitHub's ids; a repository whose GitHub id is not known yet falls back to the old row-id form. */
const pullPath = (repo: Repository, number: number) => (repo.githubId !== null ? `/repos/${repo.githubId}/pulls/${number}` : `/pulls/${repo.id}/${number}`);
const viewPath = (repo: Repository, number: number, sha: string) =>
  repo.githubId !== null ? `/repos/${repo.githubId}/pulls/${number}/commits/${sha}/view` : `/view/${repo.id}/${number}/${sha.slice(0, 7)}`;
const anchorOf = (repo: Repository, number: number) => `pr-${repo.githubId ?? `r${repo.id}`}-${number}`;

type RepositoryAccess = { repo: Repository; role: Role } | { repo: Repository; failure: string };

/** Each repository decided on its own: one that GitHub could not be asked about does not blank the others. */
async function repositoryAccess(deps: DashboardDeps, roles: RoleCache, session: Session): Promise<RepositoryAccess[]> {
  const repos = (await deps.registry.installedRepositories()).sort((a, b) => a.fullName.localeCompare(b.fullName));
  const installationOf = new Map((await deps.db.orm.select({ id: accounts.id, installationId: accounts.installationId }).from(accounts)).map((a) => [a.id, a.installationId]));
  return Promise.all(
    repos.map(async (repo): Promise<RepositoryAccess> => {
      try {
        return { repo, role: await roles.role(session, repo, installationOf.get(repo.accountId) ?? null) };
      } catch (err) {
        if (!(err instanceof HttpError)) throw err;
        return { repo, failure: err.message };
      }
    }),
  );
}

/**
 * The repositories GitHub could not be asked about, by installation, without their names (the user may have no
 * access to them): a note with a retry link, above the sections that could be decided.
 */
async function notCheckedNote(deps: DashboardDeps, failed: { repo: Repository; failure: string }[]) {
  if (!failed.length) return '';
  const byAccount = new Map<string, { count: number; failure: string }>();
  for (const { repo, failure } of failed) {
    const { login } = await deps.registry.accountOf(repo);
    byAccount.set(login, { count: (byAccount.get(login)?.count ?? 0) + 1, failure });
  }
  return html`<section aria-labelledby="not-checked"><h2 id="not-checked">Not checked</h2>${[...byAccount].map(
    ([login, { count, failure }]) =>
      html`<p role="alert">GitHub could not be asked which of ${count} ${count === 1 ? 'repository' : 'repositories'} of ${login} you can reach (${failure}) — <a href="/">retry</a>.</p>`,
  )}</section>`;
}

/** The dashboard's GET form: search and filters (any bad or unknown value is taken as absent), and the page. */
export interface DashboardQuery {
  q: string;
  repo: string;
  visibility: '' | 'public' | 'hidden';
  review: boolean;
  mine: boolean;
  page: number;
}

/** PRs shown per page of the dashboard. */
const PRS_PER_PAGE = 20;

export function dashboardQuery(query: Request['query']): DashboardQuery {
  const one = (name: string, max: number) => {
    const value = query[name];
    return typeof value === 'string' && value.length <= max ? value.trim() : '';
  };
  const visibility = one('visibility', 6);
  const pageNumber = Number(one('page', 5));
  return {
    q: one('q', 200),
    repo: one('repo', 200),
    visibility: visibility === 'public' || visibility === 'hidden' ? visibility : '',
    review: one('review', 1) === '1',
    mine: one('mine', 1) === '1',
    page: Number.isSafeInteger(pageNumber) && pageNumber >= 1 ? pageNumber : 1,
  };
}

/** The query string of `query` with `page` replaced (empty fields left out), for the paging links. */
function queryString(query: DashboardQuery, page: number): string {
  const params = new URLSearchParams();
  if (query.q) params.set('q', query.q);
  if (query.repo) params.set('repo', query.repo);
  if (query.visibility) params.set('visibility', query.visibility);
  if (query.review) params.set('review', '1');
  if (query.mine) params.set('mine', '1');
  if (page > 1) params.set('page', String(page));
  const text = params.toString();
  return text ? `?${text}` : '';
}

type PrRow = typeof pullRequests.$inferSelect & { author: string | null };
type BuildRow = typeof builds.$inferSelect;
const needsReview = (pr: PrRow) => pr.visibility === 'hidden';

/** Whether a PR (that has builds) matches the search and the filters. */
function matches(query: DashboardQuery, repo: Repository, pr: PrRow, login: string): boolean {
  if (query.repo && repo.fullName.toLowerCase() !== query.repo.toLowerCase()) return false;
  if (query.visibility && pr.visibility !== query.visibility) return false;
  if (query.review && !needsReview(pr)) return false;
  if (query.mine && pr.author?.toLowerCase() !== login.toLowerCase()) return false;
  if (!query.q) return true;
  const q = query.q.toLowerCase();
  const number = /^#?(\d+)$/.exec(q);
  if (number) return pr.number === Number(number[1]);
  return (pr.title ?? '').toLowerCase().includes(q) || (pr.author ?? '').toLowerCase().includes(q);
}

async function dashboardBody(deps: DashboardDeps, visible: { repo: Repository; role: Role }[], session: Session, query: DashboardQuery, flash: Html | '') {
  const db = deps.db.orm;
  // Two queries for the whole page (not two per repository): 200 repositories must not cost 400 round trips.
  const openPrs: PrRow[] = visible.length
    ? (
        await db
          .select({ pr: pullRequests, author: users.login })
          .from(pullRequests)
          .leftJoin(users, eq(pullRequests.authorUserId, users.id))
          .where(and(inArray(pullRequests.repositoryId, visible.map((v) => v.repo.id)), eq(pullRequests.state, 'open')))
          .orderBy(desc(pullRequests.number))
      ).map(({ pr, author }) => ({ ...pr, author }))
    : [];
  const readyBuilds = openPrs.length
    ? await db.select().from(builds).where(and(inArray(builds.pullRequestId, openPrs.map((p) => p.id)), eq(builds.status, 'ready'))).orderBy(desc(builds.id))
    : [];
  const buildsOf = new Map<number, BuildRow[]>();
  for (const b of readyBuilds) buildsOf.set(b.pullRequestId, [...(buildsOf.get(b.pullRequestId) ?? []), b]);
  const withBuilds = visible.map(({ repo, role }) => ({ repo, role, prs: openPrs.filter((pr) => pr.repositoryId === repo.id && buildsOf.has(pr.id)) }));
  const empty = withBuilds.filter((r) => !r.prs.length).map((r) => r.repo);
  // Needs review (hidden, with a build) first across all repositories, then by repository name, newest first.
  // withBuilds is in name order: a repository's heading can appear once in each group.
  const found = withBuilds
    .flatMap(({ repo, role, prs }, order) => prs.filter((pr) => matches(query, repo, pr, session.user.login)).map((pr) => ({ repo, role, pr, order })))
    .sort((a, b) => Number(needsReview(b.pr)) - Number(needsReview(a.pr)) || a.order - b.order || b.pr.number - a.pr.number);
  const pages = Math.max(1, Math.ceil(found.length / PRS_PER_PAGE));
  const current = Math.min(query.page, pages);
  const shown = found.slice((current - 1) * PRS_PER_PAGE, current * PRS_PER_PAGE);
  const toReview = withBuilds.reduce((n, r) => n + r.prs.filter(needsReview).length, 0);

  const sections: Html[] = [];
  for (const [i, { repo, role, pr }] of shown.entries()) {
    if (shown[i - 1]?.repo.id !== repo.id) sections.push(html`<h2>${repo.fullName}</h2>`);
    sections.push(await prSection(deps, repo, role, pr, buildsOf.get(pr.id)!, session));
  }
  const filtering = query.q || query.repo || query.visibility || query.review || query.mine;
  return html`<h1>Previews</h1>
${flash}
${visible.length ? filterForm(query, visible.map((v) => v.repo)) : ''}
${toReview && !query.review ? html`<p>${toReview} pull ${toReview === 1 ? 'request needs' : 'requests need'} review: <a href="/?review=1">show only ${toReview === 1 ? 'it' : 'them'}</a>.</p>` : ''}
${visible.length
  ? html`<p role="status">${found.length ? html`Showing ${(current - 1) * PRS_PER_PAGE + 1}–${(current - 1) * PRS_PER_PAGE + shown.length} of ${found.length} pull ${found.length === 1 ? 'request' : 'requests'} with builds.` : filtering ? 'No pull request matches these filters.' : 'No open pull request has a preview.'}</p>`
  : html`<p>No repository with the app installed is one you collaborate on.</p>`}
${sections}
${pages > 1 ? html`<nav aria-label="Pages"><p>${current > 1 ? html`<a href="/${queryString(query, current - 1)}" rel="prev">Previous page</a> ` : ''}Page ${current} of ${pages}${current < pages ? html` <a href="/${queryString(query, current + 1)}" rel="next">Next page</a>` : ''}</p></nav>` : ''}
${empty.length ? html`<details class="empty"><summary>${empty.length} ${empty.length === 1 ? 'repository' : 'repositories'} without open pull requests with builds</summary><ul>${empty.map((r) => html`<li>${r.fullName}</li>`)}</ul></details>` : ''}`;
}

/** The search and filters: a GET form (works without JavaScript; the URL can be bookmarked and shared). */
function filterForm(query: DashboardQuery, repos: Repository[]) {
  const option = (value: string, label: string, selected: boolean) => html`<option value="${value}"${selected ? html` selected` : ''}>${label}</option>`;
  return html`<form method="get" action="/" role="search" aria-label="Pull requests" class="filters">
<p><label for="f-q">Title, author or number</label> <input id="f-q" name="q" type="search" value="${query.q}" maxlength="200"></p>
<p><label for="f-repo">Repository</label> <select id="f-repo" name="repo">${option('', 'All', !query.repo)}${repos.map((r) => option(r.fullName, r.fullName, r.fullName.toLowerCase() === query.repo.toLowerCase()))}</select>
<label for="f-visibility">Visibility</label> <select id="f-visibility" name="visibility">${option('', 'Any', !query.visibility)}${option('hidden', 'Hidden', query.visibility === 'hidden')}${option('public', 'Public', query.visibility === 'public')}</select></p>
<p><label><input type="checkbox" name="review" value="1"${query.review ? html` checked` : ''}> Needs review only</label>
<label><input type="checkbox" name="mine" value="1"${query.mine ? html` checked` : ''}> Opened by me</label>
<button type="submit">Show</button> <a href="/">Clear</a></p>
</form>`;
}

/** One PR: its context, the Publish or Hide button, its builds with the pages each changed, and its history. */
async function prSection(deps: DashboardDeps, repo: Repository, role: Role, pr: PrRow, prBuilds: BuildRow[], session: Session): Promise<Html> {
  const { config } = deps;
  const db = deps.db.orm;
  const site = repo.site; // the row was read for this request (installedRepositories)
  const history = await db
    .select({ change: visibilityChanges, actor: users.login })
    .from(visibilityChanges)
    .leftJoin(users, eq(visibilityChanges.actorUserId, users.id))
    .where(eq(visibilityChanges.pullRequestId, pr.id))
    .orderBy(desc(visibilityChanges.id))
    .limit(10);
  // The newest build is what the reviewer can look at: Publish vouches for its commit (builds are newest first).
  const newest = prBuilds[0];
  const action = pr.visibility === 'hidden' ? 'publish' : 'hide';
  const changes = await changesOfBuilds(db, config, site, pr.number, prBuilds);
  const canOpenHidden = atLeast(role, 'write');
  const stable = pr.visibility === 'public' ? latestUrl(config, site, pr.number) : undefined;
  return html`<section aria-labelledby="${anchorOf(repo, pr.number)}">
<h3 id="${anchorOf(repo, pr.number)}"><a href="${config.githubWebUrl}/${repo.fullName}/pull/${pr.number}">#${pr.number}${pr.title ? html` ${pr.title}` : ''}</a> — <span class="${pr.visibility}">${pr.visibility === 'hidden' ? 'hidden, needs review' : 'public'}</span></h3>
${prContext(pr, newest)}
<p>${pr.reason ?? ''}</p>
${stable ? html`<p>Always the newest build: <a href="${stable}">${stable}</a></p>` : ''}
${actionForm(repo, pr.number, action, role, newest?.sha, session)}
<div class="table-scroll" role="region" aria-label="Builds of #${pr.number}" tabindex="0"><table><caption class="note">Builds</caption>
<thead><tr><th scope="col">Commit</th><th scope="col">Preview</th><th scope="col">Pages changed</th><th scope="col">Size</th><th scope="col">Stored</th></tr></thead>
<tbody>${prBuilds.map((b) => {
    const url = buildUrl(config, site, pr.number, b.sha7);
    const link = pr.visibility === 'public' ? html`<a href="${url}">${url}</a>` : canOpenHidden ? html`<a href="${viewPath(repo, pr.number, b.sha)}">open the hidden preview</a>` : html`<span class="note">hidden</span>`;
    const opener = (file: ChangedFile, sha7: string) => pageLink(file, pr.visibility === 'public' ? 'direct' : canOpenHidden ? viewPath(repo, pr.number, sha7) : undefined);
    return html`<tr><td><code>${b.sha7}</code></td><td>${link}</td><td>${changesCell(changes.get(b.id), b.sha7, opener)}</td><td>${size(b.bytes)}</td><td><time datetime="${b.createdAt.toISOString()}">${age(b.createdAt)}</time></td></tr>`;
  })}</tbody></table></div>
<h4>History</h4>
<ul>${history.map((h) => html`<li>${h.change.createdAt.toISOString().slice(0, 16).replace('T', ' ')} UTC: ${h.change.from} → ${h.change.to} (${h.change.cause}${h.actor ? html`, by ${h.actor}` : ''}): ${h.change.reason}</li>`)}</ul>
</section>`;
}

/**
 * Publish needs write (the role that can open the hidden build: nobody vouches for a build they cannot see);
 * Hide needs triage (hiding only takes a preview away). GitHub lets triage add labels; the dashboard does not
 * offer it, and the POST route refuses it.
 */
function actionForm(repo: Repository, number: number, action: 'publish' | 'hide', role: Role, sha: string | undefined, session: Session) {
  if (action === 'publish' && !atLeast(role, 'write')) return html`<p class="note">Publishing needs write access (the role that can open the hidden preview).</p>`;
  if (action === 'hide' && !atLeast(role, 'triage')) return html`<p class="note">Hiding needs the triage role.</p>`;
  return html`<form method="post" action="${pullPath(repo, number)}/${action}"><input type="hidden" name="csrf" value="${session.csrf}">${action === 'publish' ? html`<input type="hidden" name="sha" value="${sha ?? ''}">` : ''}<button type="submit">${action === 'publish' ? `Publish #${number} (add the label)` : `Hide #${number} (remove the label)`}</button></form>`;
}

/** The confirmation after Publish or Hide (`?done=published-12`): a status sentence, nothing else from the URL. */
function flashOf(done: unknown): Html | '' {
  const m = typeof done === 'string' ? /^(published|hidden)-([1-9][0-9]{0,8})$/.exec(done) : null;
  if (!m) return '';
  return html`<p role="status" class="flash">${m[1] === 'published' ? `Published #${m[2]}: the label was added on GitHub.` : `Hidden #${m[2]}: the label was removed on GitHub.`}</p>`;
}

/** Who opened the PR, from which branch (and whether from a fork), and how old its head commit is (and whether it is built). */
function prContext(pr: { author: string | null; authorAvatarUrl: string | null; headRef: string | null; fork: boolean | null; headSha: string | null; headAt: Date | null }, newest: { sha: string } | undefined) {
  // The avatar is decorative: the login follows it (alt="" keeps screen readers from reading a URL).
  const avatar = pr.authorAvatarUrl ? html`<img src="${pr.authorAvatarUrl}" alt="" width="20" height="20" class="avatar" referrerpolicy="no-referrer"> ` : '';
  const parts = [
    pr.author ? html`<span>by ${avatar}${pr.author}</span>` : '',
    pr.headRef ? html`<span>from <code>${pr.headRef}</code></span>` : '',
    pr.fork ? html`<span class="fork">fork</span>` : '',
    pr.headSha && pr.headAt
      ? html`<span>head <code>${pr.headSha.slice(0, 7)}</code> pushed <time datetime="${pr.headAt.toISOString()}">${age(pr.headAt)}</time>${newest && newest.sha !== pr.headSha ? ' (not built yet)' : ''}</span>`
      : '',
  ].filter((p) => p !== '');
  return parts.length ? html`<p class="pr-context">${parts.map((p, i) => html`${i ? ' · ' : ''}${p}`)}</p>` : '';
}

/** Per kind of change, this many pages are linked; the rest are counted. */
const PAGES_LISTED = 10;

/**
 * A build's changed pages: the sentence, then the added, changed and removed pages linked (a removed page on the
 * build before it, where it still is). `open` makes each link for the viewer (undefined: the path, not linked).
 */
function changesCell(entry: BuildChanges | undefined, sha7: string, open: (file: ChangedFile, sha7: string) => Html) {
  if (!entry) return html`<span class="note">changes not known</span>`;
  const sentence = describeChanges(entry);
  if (entry.kind !== 'compared') return html`<span class="note">${sentence}</span>`;
  const kinds = [
    ['changed', entry.pages.changed, sha7],
    ['added', entry.pages.added, sha7],
    ['removed', entry.pages.removed, entry.previousSha7],
  ] as const;
  const lists = kinds.flatMap(([kind, files, at]) =>
    files.length
      ? [html`<li>${kind}: <ul>${files.slice(0, PAGES_LISTED).map((f) => html`<li>${open(f, at)}</li>`)}${files.length > PAGES_LISTED ? html`<li>and ${files.length - PAGES_LISTED} more ${kind} pages</li>` : ''}</ul></li>`]
      : [],
  );
  // Pages whose bytes are the same but whose stylesheets, scripts or images changed: each with what it loads that changed.
  const loads = entry.loadsChanged;
  if (loads.length) {
    const through = (f: LoadsChanged) => html` (${f.through.slice(0, 3).map((t, i) => html`${i ? ', ' : ''}<code>${t}</code>`)}${f.through.length > 3 ? ` and ${f.through.length - 3} more` : ''})`;
    lists.splice(entry.pages.changed.length ? 1 : 0, 0, html`<li>loading changed files: <ul>${loads.slice(0, PAGES_LISTED).map((f) => html`<li>${open(f, sha7)}${through(f)}</li>`)}${loads.length > PAGES_LISTED ? html`<li>and ${loads.length - PAGES_LISTED} more pages loading changed files</li>` : ''}</ul></li>`);
  }
  return html`${sentence}${lists.length ? html`<ul class="changes">${lists}</ul>` : ''}`;
}

/** A changed page's link: the preview's own URL (public), through the ticket with the page's path (hidden), or none. */
function pageLink(file: ChangedFile, via: 'direct' | string | undefined): Html {
  if (via === undefined) return html`<code>${file.path}</code>`;
  const href = via === 'direct' ? file.url : `${via}?path=${encodeURIComponent(new URL(file.url).pathname)}`;
  return html`<a href="${href}"><code>${file.path}</code></a>`;
}

const size = (bytes: number) => (bytes < 1e6 ? `${Math.max(1, Math.round(bytes / 1e3))} kB` : `${(bytes / 1e6).toFixed(1)} MB`);

function age(at: Date): string {
  const minutes = Math.round((Date.now() - at.getTime()) / 60_000);
  const plural = (n: number, unit: string) => `${n} ${unit}${n === 1 ? '' : 's'} ago`;
  if (minutes < 1) return 'less than a minute ago';
  if (minutes < 60) return plural(minutes, 'minute');
  const hours = Math.round(minutes / 60);
  return hours < 48 ? plural(hours, 'hour') : plural(Math.round(hours / 24), 'day');
}

/**
 * A path on this host, or `/`: never another host (`//evil`, `/\evil`, `https:…`), and nothing a browser or a
 * header could read otherwise (backslash, whitespace, control characters).
 */
export function safeLocalPath(value: unknown): string {
  // eslint-disable-next-line no-control-regex
  if (typeof value !== 'string' || value.length > 1024 || !/^\/(?![/\\])[^\\\s\x00-\x1f\x7f]*$/.test(value)) return '/';
  return value;
}

/** Where to go after signing in: a local path (see safeLocalPath). */
export const safeNext = safeLocalPath;

/** The preview host a request names (nginx passes it as Host), split into its parts. */
function previewHost(config: Config, req: Request): { name: string; site: string; pr: number } | undefined {
  const name = (req.headers.host ?? '').replace(/:\d+$/, '').toLowerCase();
  const suffix = `.${config.previewDomain}`;
  if (!name.endsWith(suffix)) return undefined;
  const m = /^pr([1-9][0-9]{0,8})(?:-[0-9a-f]{7})?--([a-z0-9-]+)$/.exec(name.slice(0, -suffix.length));
  return m ? { name, site: m[2]!, pr: Number(m[1]) } : undefined;
}

/** One cookie's value (the `cookie` package: a malformed %-escape is left as is, never thrown). */
function cookieOf(req: Request, name: string): string | undefined {
  return parseCookies(req.headers.cookie ?? '')[name];
}

/**
 * A sign-in in progress (state, PKCE verifier, where to go next), sealed into the browser's own cookie with a key
 * derived from the GitHub App's client secret (every replica has it): no server-side table, nothing a flood of
 * /login can fill, and only the browser that started the sign-in can finish it.
 */
class SignInState {
  private readonly key: Uint8Array;

  constructor(config: Config) {
    this.key = new Uint8Array(crypto.hkdfSync('sha256', config.githubClientSecret ?? '', 'preview-gate', 'sign-in state cookie v1', 32));
  }

  seal(value: { state: string; verifier: string; next: string }): Promise<string> {
    return new EncryptJWT(value).setProtectedHeader({ alg: 'dir', enc: 'A256GCM' }).setExpirationTime(`${STATE_SECONDS}s`).encrypt(this.key);
  }

  /** The sign-in this cookie holds, or undefined (absent, expired, forged, sealed with another secret). */
  async open(cookie: string | undefined): Promise<{ state: string; verifier: string; next: string } | undefined> {
    if (!cookie) return undefined;
    try {
      const { payload } = await jwtDecrypt(cookie, this.key, { keyManagementAlgorithms: ['dir'], contentEncryptionAlgorithms: ['A256GCM'] });
      const { state, verifier, next } = payload;
      if (typeof state !== 'string' || typeof verifier !== 'string' || typeof next !== 'string') return undefined;
      return { state, verifier, next: safeNext(next) };
    } catch {
      return undefined;
    }
  }
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}
