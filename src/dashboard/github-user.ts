import type { Config } from '../config.js';
import { HttpError } from '../errors.js';

/** What GitHub's OAuth token endpoint gives a GitHub App's user authorization. */
export interface UserTokens {
  accessToken: string;
  /** Absent when the app does not expire user tokens. */
  accessExpiresAt?: Date;
  refreshToken?: string;
}

export interface GitHubUser {
  id: number;
  login: string;
}

/** GitHub's repository roles, weakest first. */
const ROLES = ['none', 'read', 'triage', 'write', 'maintain', 'admin'] as const;
export type Role = (typeof ROLES)[number];
export const atLeast = (role: Role, needed: Role) => ROLES.indexOf(role) >= ROLES.indexOf(needed);

/** A user's roles on repositories, by GitHub's repository id and by lower-cased full name. */
export interface RepoRoles {
  byId: Map<number, Role>;
  byName: Map<string, Role>;
}

interface RepoWithPermissions {
  id?: unknown;
  full_name?: unknown;
  permissions?: Partial<Record<'admin' | 'maintain' | 'push' | 'triage' | 'pull', boolean>>;
}

const PER_PAGE = 100;
/** 10,000 repositories in one installation: more pages are not asked for. */
const MAX_PAGES = 100;

/** The strongest role a repository's `permissions` grant (`push` is GitHub's word for write). */
function roleOfPermissions(p: RepoWithPermissions['permissions']): Role {
  if (!p) return 'none';
  if (p.admin) return 'admin';
  if (p.maintain) return 'maintain';
  if (p.push) return 'write';
  if (p.triage) return 'triage';
  return p.pull ? 'read' : 'none';
}

function addRole(roles: RepoRoles, repo: RepoWithPermissions): void {
  const role = roleOfPermissions(repo.permissions);
  if (typeof repo.id === 'number') roles.byId.set(repo.id, role);
  if (typeof repo.full_name === 'string') roles.byName.set(repo.full_name.toLowerCase(), role);
}

/**
 * GitHub asked as a signed-in user (their own token, so GitHub's answers and its timeline are theirs): the
 * OAuth code exchange and refresh, who they are, their role on a repository, labels added or removed.
 * Every failure is one HttpError: 503 when GitHub could not be asked, its own status otherwise.
 */
export class GitHubUserApi {
  constructor(private readonly config: Config) {}

  authorizeUrl(state: string, codeChallenge: string, redirectUri: string): string {
    const url = new URL('/login/oauth/authorize', this.config.githubWebUrl);
    url.searchParams.set('client_id', this.config.githubClientId!);
    url.searchParams.set('redirect_uri', redirectUri);
    url.searchParams.set('state', state);
    url.searchParams.set('code_challenge', codeChallenge);
    url.searchParams.set('code_challenge_method', 'S256');
    return url.href;
  }

  exchangeCode(code: string, codeVerifier: string, redirectUri: string): Promise<UserTokens> {
    return this.tokenRequest({ code, code_verifier: codeVerifier, redirect_uri: redirectUri });
  }

  refresh(refreshToken: string): Promise<UserTokens> {
    return this.tokenRequest({ grant_type: 'refresh_token', refresh_token: refreshToken });
  }

  async user(token: string): Promise<GitHubUser> {
    const body = (await this.api(token, 'GET', '/user')) as { id?: unknown; login?: unknown };
    if (typeof body.id !== 'number' || typeof body.login !== 'string') throw new HttpError(502, 'GitHub did not say who you are.');
    return { id: body.id, login: body.login };
  }

  /**
   * The user's role on every repository of one installation they can reach, from GitHub's list of them (with the
   * user's token, so GitHub answers for the token's own user, never for a login): one request per 100
   * repositories instead of one per repository. GitHub refusing the installation (403/404) is no access; a rate
   * limit or a 5xx is an HttpError 503, never taken for "no access".
   */
  async installationRoles(token: string, installationId: number): Promise<RepoRoles> {
    const roles: RepoRoles = { byId: new Map(), byName: new Map() };
    const page = (n: number) => this.api(token, 'GET', `/user/installations/${installationId}/repositories?per_page=${PER_PAGE}&page=${n}`) as Promise<{ total_count?: unknown; repositories?: unknown }>;
    let first: Awaited<ReturnType<typeof page>>;
    try {
      first = await page(1);
    } catch (err) {
      if (err instanceof HttpError && (err.status === 403 || err.status === 404)) return roles;
      throw err;
    }
    // The first page says how many there are: the others are asked at once (two round trips for any size).
    const total = typeof first.total_count === 'number' ? first.total_count : 0;
    const pages = Math.min(MAX_PAGES, Math.ceil(total / PER_PAGE));
    const rest = await Promise.all(Array.from({ length: Math.max(0, pages - 1) }, (_, i) => page(i + 2)));
    for (const body of [first, ...rest]) {
      for (const repo of Array.isArray(body.repositories) ? (body.repositories as RepoWithPermissions[]) : []) addRole(roles, repo);
    }
    return roles;
  }

  /** The user's role on one repository (`GET /repos/{owner}/{repo}` with their token carries `permissions`). */
  async repositoryRoles(token: string, fullName: string): Promise<RepoRoles> {
    const roles: RepoRoles = { byId: new Map(), byName: new Map() };
    try {
      addRole(roles, (await this.api(token, 'GET', `/repos/${fullName}`)) as RepoWithPermissions);
    } catch (err) {
      if (!(err instanceof HttpError && (err.status === 403 || err.status === 404))) throw err;
    }
    return roles;
  }

  /** The pull request's head commit as GitHub says it is now. */
  async pullHead(token: string, fullName: string, number: number): Promise<string> {
    const body = (await this.api(token, 'GET', `/repos/${fullName}/pulls/${number}`)) as { head?: { sha?: unknown } };
    if (typeof body.head?.sha !== 'string') throw new HttpError(502, 'GitHub did not say which commit the pull request ends at.');
    return body.head.sha;
  }

  async addLabel(token: string, fullName: string, number: number, label: string): Promise<void> {
    await this.api(token, 'POST', `/repos/${fullName}/issues/${number}/labels`, { labels: [label] });
  }

  async removeLabel(token: string, fullName: string, number: number, label: string): Promise<void> {
    try {
      await this.api(token, 'DELETE', `/repos/${fullName}/issues/${number}/labels/${encodeURIComponent(label)}`);
    } catch (err) {
      if (!(err instanceof HttpError && err.status === 404)) throw err; // not there: already hidden by that rule
    }
  }

  private async tokenRequest(fields: Record<string, string>): Promise<UserTokens> {
    const body = (await this.send(new URL('/login/oauth/access_token', this.config.githubWebUrl).href, 'POST', undefined, {
      client_id: this.config.githubClientId,
      client_secret: this.config.githubClientSecret,
      ...fields,
    })) as { access_token?: string; expires_in?: number; refresh_token?: string; error?: string };
    // GitHub answers 200 with an `error` field for a bad or used code, a PKCE mismatch, an expired refresh token.
    if (!body.access_token) throw new HttpError(401, `GitHub refused the sign-in (${body.error ?? 'no token'}).`);
    return {
      accessToken: body.access_token,
      accessExpiresAt: body.expires_in ? new Date(Date.now() + body.expires_in * 1000) : undefined,
      refreshToken: body.refresh_token,
    };
  }

  private api(token: string, method: string, path: string, payload?: object): Promise<unknown> {
    return this.send(`${this.config.githubApiUrl}${path}`, method, token, payload);
  }

  private async send(url: string, method: string, token: string | undefined, payload?: object): Promise<unknown> {
    let res: Response;
    try {
      res = await fetch(url, {
        method,
        headers: {
          accept: 'application/json',
          'user-agent': 'preview-gate',
          ...(token ? { authorization: `Bearer ${token}` } : {}),
          ...(payload ? { 'content-type': 'application/json' } : {}),
        },
        body: payload ? JSON.stringify(payload) : undefined,
        signal: AbortSignal.timeout(this.config.githubTimeoutMs),
      });
    } catch {
      throw new HttpError(503, 'GitHub could not be reached; try again in a moment.');
    }
    const body = await res.json().catch(() => ({}));
    // A rate limit (primary or secondary) says nothing about access: never let a caller read it as a refusal.
    if (res.status === 429 || (res.status === 403 && (res.headers.has('retry-after') || res.headers.get('x-ratelimit-remaining') === '0'))) {
      throw new HttpError(503, 'GitHub is limiting how often it is asked; try again in a minute.');
    }
    if (res.status >= 500) throw new HttpError(503, 'GitHub could not answer; try again in a moment.');
    if (!res.ok) throw new HttpError(res.status, `GitHub answered ${res.status} (${(body as { message?: string }).message ?? 'no reason given'}).`);
    return body;
  }
}
