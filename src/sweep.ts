import type { Logger } from 'pino';
import type { GitHub, Octokit } from './github.js';
import type { Previews } from './previews.js';
import type { Registry, Repository } from './registry.js';
import type { RepoSettings } from './trust.js';

export interface SweepReport {
  installations: number;
  repositories: number;
  pullRequests: number;
  /** PRs whose visibility changed. */
  changed: number;
  /** PRs GitHub could not be asked about now: their decision is queued and retried. */
  queued: number;
  /** Installations whose PRs were left for the next sweep to keep the rate limit for uploads. */
  overBudget: number;
}

/**
 * The sweep: re-derives from GitHub what webhooks may have missed. Installations and their repositories are
 * listed (repositories added, removed, renamed or transferred are caught by id), then every PR the database
 * thinks open is re-decided from GitHub's facts (closed, reopened, labels, teams, settings). Every GET is
 * conditional (see conditional-requests.ts), so an unchanged PR costs a 304, which GitHub does not count.
 */
export class Sweep {
  private running?: Promise<SweepReport>;

  constructor(
    private readonly registry: Registry,
    private readonly previews: Previews,
    private readonly github: GitHub,
    private readonly log: Logger,
    /** Below this share of its hourly rate limit left, an installation's PRs wait for the next sweep. */
    private readonly minRateLimitShare = 0.2,
  ) {}

  /** One sweep; a call while one is running joins it. */
  run(): Promise<SweepReport> {
    this.running ??= this.sweep().finally(() => (this.running = undefined));
    return this.running;
  }

  private async sweep(): Promise<SweepReport> {
    const report: SweepReport = { installations: 0, repositories: 0, pullRequests: 0, changed: 0, queued: 0, overBudget: 0 };
    const app = await this.github.asApp();
    const installations = await app.paginate(app.rest.apps.listInstallations, { per_page: 100 });
    const present = new Set<number>();
    for (const installation of installations) {
      const owner = installation.account && 'login' in installation.account ? installation.account : undefined;
      if (!owner) continue;
      report.installations++;
      const account = await this.registry.ensureAccount(owner.login, owner.id);
      present.add(account.id);
      await this.registry.setInstallation(account.id, installation.id);
      if (installation.suspended_at) {
        for (const repo of await this.registry.repositoriesOfAccount(owner)) await this.previews.hideRepository(repo, { event: 'sweep' }, 'the installation is suspended');
        continue;
      }
      const octokit = await this.github.forInstallation(installation.id);
      const repos = await this.repositoriesOf(octokit, owner);
      report.repositories += repos.length;
      this.github.forgetSettings(owner.login);
      if (await this.overBudget(octokit)) {
        report.overBudget++;
        this.log.warn({ installation: installation.id }, 'sweep: rate limit low, its pull requests wait for the next sweep');
        continue;
      }
      await this.redecide(repos, report);
    }
    for (const repo of await this.registry.installedRepositories()) {
      if (!present.has(repo.accountId)) await this.previews.hideRepository(repo, { event: 'sweep' }, 'the app is no longer installed there');
    }
    this.log.info(report, 'sweep done');
    return report;
  }

  /** The installation's repositories, registered by id (renames and transfers followed); the others hidden. */
  private async repositoriesOf(octokit: Octokit, owner: { id: number; login: string }): Promise<Repository[]> {
    const listed = await octokit.paginate(octokit.rest.apps.listReposAccessibleToInstallation, { per_page: 100 });
    const repos: Repository[] = [];
    for (const r of listed) {
      const repo = await this.registry.resolveRepository({ id: r.id, fullName: r.full_name, ownerId: r.owner.id, private: r.private });
      if (!repo.installed) await this.registry.markInstalled(repo);
      repos.push(repo);
    }
    const ids = new Set(repos.map((r) => r.id));
    for (const repo of await this.registry.repositoriesOfAccount(owner)) {
      if (!ids.has(repo.id)) await this.previews.hideRepository(repo, { event: 'sweep' }, 'the repository is no longer in the app\'s installation');
    }
    return repos;
  }

  private async redecide(repos: Repository[], report: SweepReport): Promise<void> {
    // Settings are read once per repository (not once per PR), so a sweep costs little more than its 304s.
    const settingsOf = new Map<number, Promise<RepoSettings>>();
    for (const { repo, pr } of await this.registry.openPullRequests(repos)) {
      report.pullRequests++;
      try {
        if (!settingsOf.has(repo.id)) settingsOf.set(repo.id, this.previews.readSettings(repo));
        const settings = await settingsOf.get(repo.id)!;
        const { changed } = await this.previews.reconcile(repo, pr.number, { event: 'sweep' }, { settings });
        if (changed) report.changed++;
      } catch (err) {
        // GitHub could not answer now: the decision becomes a queued row, retried with backoff.
        report.queued++;
        this.log.warn({ repo: repo.fullName, pr: pr.number, err: (err as Error).message }, 'sweep: decision queued');
        await this.previews.decideLater(repo, pr.number, { event: 'sweep' });
      }
    }
  }

  /** `GET /rate_limit` is free: it does not count against the limit it reports. */
  private async overBudget(octokit: Octokit): Promise<boolean> {
    try {
      const { core } = (await octokit.rest.rateLimit.get()).data.resources;
      return core.remaining < core.limit * this.minRateLimitShare;
    } catch {
      return false;
    }
  }
}
