import type { Probot, ProbotOctokit } from 'probot';
import { badRequest, forbidden, HttpError } from './errors.js';
import { decideTrust, settingsSchema, type RepoSettings, type TrustDecision } from './trust.js';

export type Octokit = InstanceType<typeof ProbotOctokit>;

export const SETTINGS_PATH = '.github/preview-gate.yml';

/** What GitHub says about one pull request now, plus the decision that follows from it. */
export interface PrFacts {
  owner: string;
  repo: string;
  number: number;
  state: 'open' | 'closed';
  headSha: string;
  author: { id: number; login: string };
  labels: string[];
  settings: RepoSettings;
  decision: TrustDecision;
  /**
   * GitHub's `updated_at` of the pull request these facts describe: an older read never overrules a newer one
   * (a late or replayed delivery, or an API answer older than evidence already applied).
   */
  at: Date;
  /** GitHub's id of the repository (the PR's base repository). */
  repositoryId?: number;
  /** What the dashboard shows about the PR (absent when GitHub's answer did not carry it). */
  context?: PrContext;
}

/** The PR's own words and origin, as GitHub said them: shown on the dashboard, never used for a decision. */
export interface PrContext {
  title: string;
  headRef: string;
  /** The head branch lives in another repository (a fork), or in one since deleted. */
  fork: boolean;
  authorAvatarUrl: string | null;
}

/** The fields of a pull request (REST answer or webhook payload) that trust depends on. */
export interface PullRequestLike {
  number: number;
  state: string;
  /** null for a deleted account ("ghost"). */
  user: { id: number; login: string; avatar_url?: string } | null;
  labels: { name: string }[];
  title?: string;
  head: { sha: string; ref?: string; repo?: { full_name: string } | null };
  updated_at?: string;
  base?: { repo?: { id: number; full_name: string } | null };
}

/** An error from GitHub (or from reaching it) turned into what the caller should answer. */
export function githubError(err: unknown, what: string): HttpError {
  if (err instanceof HttpError) return err;
  const status = (err as { status?: number }).status;
  // The original error stays as `cause`: the work queue reads GitHub's `retry-after` from it.
  if (status === undefined || status >= 500 || status === 429) {
    return new HttpError(503, `GitHub could not be asked ${what}; retry later.`, { cause: err });
  }
  if (status === 403 && /rate limit/i.test(String((err as Error).message))) {
    return new HttpError(503, `GitHub's rate limit was hit while asking ${what}; retry later.`, { cause: err });
  }
  return new HttpError(503, `GitHub refused to answer ${what} (HTTP ${status}); retry later.`, { cause: err });
}

export const isNotFound = (err: unknown) => (err as { status?: number }).status === 404;

/** The few GitHub questions preview-gate asks, through the installation's Octokit from Probot. */
export class GitHub {
  /** Settings per repository (lower-case owner/name), read from GitHub at most once per `settingsCacheMs`. */
  private readonly settingsCache = new Map<string, { settings: RepoSettings; expires: number }>();

  constructor(
    private readonly probot: Probot,
    /** 0: always ask GitHub. Otherwise a push that changes the file forgets the entry at once (`forgetSettings`). */
    private readonly settingsCacheMs = 0,
  ) {}

  /** Forgets cached settings of one repository, or of every repository of `owner` (its `.github` changed). */
  forgetSettings(owner: string, repo?: string): void {
    const prefix = `${owner}/`.toLowerCase();
    for (const key of this.settingsCache.keys()) {
      if (repo === undefined ? key.startsWith(prefix) : key === `${owner}/${repo}`.toLowerCase()) this.settingsCache.delete(key);
    }
  }

  /** The installation's Octokit for a repository; 403 when the app is not installed there. */
  async forRepository(owner: string, repo: string): Promise<{ octokit: Octokit; installationId: number; accountId: number }> {
    const app = await this.probot.auth();
    let installation;
    try {
      installation = (await app.rest.apps.getRepoInstallation({ owner, repo })).data;
    } catch (err) {
      if (isNotFound(err)) throw forbidden(`The preview-gate app is not installed on ${owner}/${repo}.`);
      throw githubError(err, `whether the app is installed on ${owner}/${repo}`);
    }
    const octokit = await this.probot.auth(installation.id);
    return { octokit, installationId: installation.id, accountId: installation.account?.id ?? 0 };
  }

  /** The Octokit of one installation (Probot caches its token). */
  async forInstallation(installationId: number): Promise<Octokit> {
    return (await this.probot.auth(installationId)) as Octokit;
  }

  /** The app's own Octokit (JWT): installations, and requests that do not count against an installation. */
  async asApp(): Promise<Octokit> {
    return (await this.probot.auth()) as Octokit;
  }

  async settings(octokit: Octokit, owner: string, repo: string): Promise<RepoSettings> {
    const key = `${owner}/${repo}`.toLowerCase();
    const cached = this.settingsCache.get(key);
    if (cached && cached.expires > Date.now()) return cached.settings;
    const settings = await this.readSettings(octokit, owner, repo);
    if (this.settingsCacheMs > 0) this.settingsCache.set(key, { settings, expires: Date.now() + this.settingsCacheMs });
    return settings;
  }

  private async readSettings(octokit: Octokit, owner: string, repo: string): Promise<RepoSettings> {
    let config: unknown;
    try {
      // Probot's config plugin reads the file from the default branch, so a PR cannot change its own rules.
      ({ config } = await octokit.config.get({ owner, repo, path: SETTINGS_PATH }));
    } catch (err) {
      if (/could not be parsed/.test((err as Error).message)) {
        throw badRequest(`${owner}/${repo}: ${SETTINGS_PATH} is not valid YAML.`);
      }
      throw githubError(err, `for ${SETTINGS_PATH} of ${owner}/${repo}`);
    }
    const parsed = settingsSchema.safeParse(config ?? {});
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      throw badRequest(`${owner}/${repo}: ${SETTINGS_PATH} is invalid: ${issue.path.join('.') || 'file'}: ${issue.message}.`);
    }
    return parsed.data;
  }

  /** Reads the PR, the settings and (when needed) team membership, and decides trust. */
  async prFacts(octokit: Octokit, owner: string, repo: string, number: number, settings?: RepoSettings): Promise<PrFacts> {
    // The settings and the PR are asked in parallel: one round trip to GitHub instead of two.
    const readPr = octokit.rest.pulls.get({ owner, repo, pull_number: number }).then(
      (answer) => answer.data,
      (err: unknown) => {
        if (isNotFound(err)) throw forbidden(`Pull request #${number} does not exist in ${owner}/${repo}.`);
        throw githubError(err, `about pull request #${number}`);
      },
    );
    // Both settle before this returns or throws: no request of this read outlives it.
    const [settingsRead, prRead] = await Promise.allSettled([settings ?? this.settings(octokit, owner, repo), readPr]);
    if (settingsRead.status === 'rejected') throw settingsRead.reason;
    if (prRead.status === 'rejected') throw prRead.reason;
    return this.factsFrom(octokit, owner, repo, prRead.value, settingsRead.value);
  }

  /**
   * Facts from a pull request object GitHub already sent (a webhook payload, whose labels are the ones
   * after the event), completed by settings and team membership.
   */
  async factsFrom(
    octokit: Octokit,
    owner: string,
    repo: string,
    pr: PullRequestLike,
    settings?: RepoSettings,
  ): Promise<PrFacts> {
    settings ??= await this.settings(octokit, owner, repo);
    const labels = pr.labels.map((l) => l.name);
    const state = pr.state === 'open' ? 'open' : 'closed';
    const author = pr.user ? { id: pr.user.id, login: pr.user.login } : { id: 0, login: 'ghost' };
    const authorTrustedTeam =
      labels.includes(settings.trustedLabel) || !pr.user
        ? undefined
        : await this.firstTrustedTeam(octokit, owner, settings.trustedTeams, author.login);
    return {
      owner,
      repo,
      number: pr.number,
      state,
      headSha: pr.head.sha,
      author,
      labels,
      settings,
      decision: decideTrust({ state, labels, authorTrustedTeam }, settings),
      at: pr.updated_at ? new Date(pr.updated_at) : new Date(),
      repositoryId: pr.base?.repo?.id,
      context: contextOf(pr),
    };
  }

  /** Whether `sha` is one of the PR's commits (GitHub lists at most 250 commits of a PR). */
  async prHasCommit(octokit: Octokit, owner: string, repo: string, number: number, sha: string): Promise<boolean> {
    try {
      for await (const page of octokit.paginate.iterator(octokit.rest.pulls.listCommits, {
        owner,
        repo,
        pull_number: number,
        per_page: 100,
      })) {
        if (page.data.some((c) => c.sha === sha)) return true;
      }
      return false;
    } catch (err) {
      throw githubError(err, `for the commits of pull request #${number}`);
    }
  }

  /**
   * The first trusted team in which the user is an active member. GitHub's membership API counts members
   * of child teams as members of the parent. A 404 means "not a member".
   */
  async firstTrustedTeam(octokit: Octokit, org: string, teams: string[], username: string): Promise<string | undefined> {
    for (const team of teams) {
      try {
        const { data } = await octokit.rest.teams.getMembershipForUserInOrg({ org, team_slug: team, username });
        if (data.state === 'active') return team;
      } catch (err) {
        if (isNotFound(err)) continue;
        throw githubError(err, `whether ${username} is a member of ${org}/${team}`);
      }
    }
    return undefined;
  }
}

/** The PR's title, branch, fork marker and author avatar, when the answer has them (an https avatar only). */
function contextOf(pr: PullRequestLike): PrContext | undefined {
  if (typeof pr.title !== 'string' || typeof pr.head.ref !== 'string') return undefined;
  const avatar = pr.user?.avatar_url;
  return {
    title: pr.title.slice(0, 512),
    headRef: pr.head.ref.slice(0, 255),
    fork: !pr.head.repo || !pr.base?.repo || pr.head.repo.full_name.toLowerCase() !== pr.base.repo.full_name.toLowerCase(),
    authorAvatarUrl: typeof avatar === 'string' && /^https:\/\/[^\s"'<>]+$/.test(avatar) ? avatar : null,
  };
}
