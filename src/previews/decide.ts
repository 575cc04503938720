import { and, eq, isNull } from '../db/orm.js';
import type { Visibility } from '../builds/store.js';
import type { Orm } from '../db/database.js';
import { first, only } from '../db/query.js';
import { builds, pullRequests, repositories, visibilityChanges } from '../db/tables.js';
import { forbidden } from '../errors.js';
import type { Octokit, PrFacts } from '../github.js';
import type { Job } from '../queue.js';
import { RetryLater } from '../queue.js';
import type { PullRequest, Repository } from '../registry.js';
import { settingsSchema, type RepoSettings, type TrustDecision } from '../trust.js';
import { octokitFor, ownerAndName, prKey, requireGithub, withPr, withRepository, type Cause, type PreviewsContext } from './context.js';

/** Payload evidence that makes a PR *less* visible (a revocation): applied at once, without asking GitHub. */
export interface Revocation {
  reason: string;
  /** The payload's `pull_request.updated_at`: GitHub's answers older than this cannot grant again. */
  at?: Date;
  closed?: boolean;
}

export interface Applied {
  pr: PullRequest;
  changed: boolean;
  /** The facts were older than evidence already applied: they were not allowed to publish. */
  stale: boolean;
}

/** How often a decision whose GitHub answer was older than a webhook is asked again before the sweep takes over. */
const STALE_RETRIES = 5;
const REVOCATION_FEEDBACK_DELAY_MS = 3000;

/**
 * The one decision, applied: facts read from GitHub → trust → PR folder renamed → row → feedback queued.
 * Grants come only from facts read through the API; revocations from a payload hide at once and are then
 * confirmed (or undone) by GitHub's facts. Everything about one PR runs under its lock.
 */
export class Decisions {
  constructor(private readonly ctx: PreviewsContext) {}

  /** Reads what GitHub says now and applies it. Throws (nothing changed) when GitHub cannot be asked. */
  async reconcile(
    repo: Repository,
    number: number,
    cause: Cause,
    options: { uploadSha?: string; settings?: RepoSettings; octokit?: Octokit } = {},
  ): Promise<Applied & { facts: PrFacts; octokit: Octokit }> {
    const { uploadSha, settings, octokit } = options;
    const read = await this.readFacts(repo, number, { settings, octokit });
    return { ...(await this.apply(read.repo, read.facts, cause, uploadSha)), facts: read.facts, octokit: read.octokit };
  }

  /** GitHub's facts about one PR now (PR, settings, team membership), checked to be about this repository. */
  async readFacts(
    repo: Repository,
    number: number,
    options: { askGitHub?: boolean; settings?: RepoSettings; octokit?: Octokit } = {},
  ): Promise<{ repo: Repository; facts: PrFacts; octokit: Octokit }> {
    const octokit = options.octokit ?? (await octokitFor(this.ctx, repo, options));
    const [owner, name] = ownerAndName(repo);
    const facts = await requireGithub(this.ctx).prFacts(octokit, owner, name, number, options.settings);
    return { repo: await this.sameRepository(repo, facts), facts, octokit };
  }

  /** A `decide` job: re-decide one PR from GitHub; asked again shortly when GitHub's answer lags a webhook. */
  async runJob(data: Record<string, unknown>, job: Job): Promise<void> {
    const repo = await first(this.ctx.db.orm.select().from(repositories).where(eq(repositories.id, Number(data.repositoryId))).limit(1));
    if (!repo?.installed) return;
    const { stale } = await this.reconcile(repo, Number(data.number), data.cause as Cause);
    if (stale && job.attempts < STALE_RETRIES) {
      throw new RetryLater("GitHub's answer is older than a webhook already applied; asking again", 2000 * (job.attempts + 1));
    }
  }

  /** Records that a PR must be re-decided from GitHub's facts (durable; retried until GitHub answers). */
  enqueue(repo: Repository, number: number, cause: Cause): Promise<void> {
    return this.ctx.queue.enqueue('decide', prKey(repo.id, number), { repositoryId: repo.id, number, cause });
  }

  /** Applies facts under the PR's lock and queues the feedback that follows (the comment says why). */
  async apply(repo: Repository, facts: PrFacts, cause: Cause, uploadSha?: string): Promise<Applied> {
    return withPr(this.ctx, repo.id, facts.number, async () => {
      const applied = await this.applyLocked(repo, facts, cause, uploadSha);
      if (applied.changed) await this.ctx.db.transaction(async (tx) => this.enqueueFeedback(repo, applied.pr, await this.readyBuildIds(applied.pr.id, tx)));
      else if (applied.reasonChanged) await this.enqueueFeedback(repo, applied.pr, []);
      return applied;
    });
  }

  /**
   * `apply` for a caller that already holds the PR's lock (the upload, between extraction and publication),
   * which queues the feedback itself, once, after its build is in place.
   */
  async applyLocked(repo: Repository, facts: PrFacts, cause: Cause, uploadSha?: string): Promise<Applied & { reasonChanged: boolean }> {
    const { db } = this.ctx;
    // Two transactions around the folder's rename (the filesystem is not the database): the decision, then its record.
    const { pr, labelSha, decision, stale } = await db.transaction(async (tx) => {
      const pr = await this.ensurePr(repo, facts.number, facts.state, facts.headSha);
      await db.lockPullRequest(tx, pr.id);
      await this.rememberSettings(repo, facts.settings, tx);
      const bound = await this.boundLabel(repo, pr, facts, uploadSha);
      const note = await this.siteNote(repo, facts.settings, tx);
      const decision = note ? { ...bound.decision, reason: `${bound.decision.reason} (${note})` } : bound.decision;
      // An answer older than evidence already applied may hide (fail closed), never publish.
      const stale = pr.factsAt !== null && facts.at < pr.factsAt;
      return { pr, labelSha: bound.labelSha, decision, stale };
    });
    if (stale && decision.trusted) return { pr, changed: false, stale: true, reasonChanged: false };
    const visibility: Visibility = decision.trusted ? 'public' : 'hidden';
    const changed = await this.moveFolder(repo, pr, visibility);
    const updated = await db.transaction(async (tx) => {
      await db.lockPullRequest(tx, pr.id);
      if (changed) await this.recordMove(tx, repo, pr, visibility, decision.reason, cause);
      const authorUserId = await this.ctx.registry.upsertUser(facts.author.id, facts.author.login, tx);
      return only(
        tx
          .update(pullRequests)
          .set({
            authorUserId,
            state: facts.state,
            headSha: facts.headSha,
            trusted: decision.trusted,
            visibility,
            reason: decision.reason,
            labelSha,
            factsAt: stale ? pr.factsAt : facts.at,
            ...(facts.context && !stale ? facts.context : {}),
            // The dashboard's head age: kept while the head stays, renewed when facts bring another one (unknown
            // when that head came in stale facts: their time belongs to an older state of the PR).
            headAt: pr.headSha !== facts.headSha || pr.headAt === null ? (stale ? null : facts.at) : pr.headAt,
            closedAt: facts.state === 'closed' ? (pr.closedAt ?? new Date()) : null,
            updatedAt: new Date(),
          })
          .where(eq(pullRequests.id, pr.id))
          .returning(),
      );
    });
    return { pr: updated, changed, stale, reasonChanged: updated.reason !== pr.reason };
  }

  /**
   * `labelTrustsNewCommits: false`: the label vouches for the head SHA it was first seen at. Any other commit
   * (the PR's head, or the one being uploaded) makes the PR untrusted and the label is removed on GitHub.
   */
  private async boundLabel(repo: Repository, pr: PullRequest, facts: PrFacts, uploadSha?: string): Promise<{ decision: TrustDecision; labelSha: string | null }> {
    const { settings } = facts;
    const labelled = facts.labels.includes(settings.trustedLabel);
    if (!labelled) return { decision: facts.decision, labelSha: null };
    if (settings.labelTrustsNewCommits) return { decision: facts.decision, labelSha: pr.labelSha };
    const labelSha = pr.labelSha ?? facts.headSha;
    const other = [facts.headSha, uploadSha].find((sha) => sha && sha !== labelSha);
    if (!other) return { decision: facts.decision, labelSha };
    await this.ctx.queue.enqueue('remove-label', prKey(repo.id, facts.number), { repositoryId: repo.id, number: facts.number, label: settings.trustedLabel });
    return {
      decision: {
        trusted: false,
        reason: `commit ${other.slice(0, 7)} came after the '${settings.trustedLabel}' label was given at ${labelSha.slice(0, 7)}, so the label was removed until a maintainer reviews the new commits`,
      },
      labelSha: null,
    };
  }

  /**
   * A `labeled` delivery under `labelTrustsNewCommits: false`: the label is bound to the head SHA the payload
   * names, unless the payload is older than what is already known (a late or replayed delivery binds nothing).
   * Binding never publishes: the queued decision still needs GitHub to say the label is there.
   */
  async bindLabel(repo: Repository, pr: PullRequest, headSha: string, at: Date | undefined): Promise<void> {
    if (pr.labelSha || !at || (pr.factsAt && at < pr.factsAt)) return;
    await this.ctx.db.orm.update(pullRequests).set({ labelSha: headSha }).where(eq(pullRequests.id, pr.id));
  }

  /**
   * Hides a PR at once on a payload's word (label removed, author left the team, PR closed, new commits under
   * `labelTrustsNewCommits: false`), then queues the decision that reads GitHub's facts to confirm or undo it.
   */
  async revoke(repo: Repository, number: number, revocation: Revocation, cause: Cause): Promise<void> {
    await withPr(this.ctx, repo.id, number, async () => {
      const pr = await this.ctx.registry.findPullRequest(repo.id, number);
      if (!pr) return;
      const changed = await this.moveFolder(repo, pr, 'hidden');
      const newer = revocation.at && (!pr.factsAt || revocation.at > pr.factsAt);
      const { db } = this.ctx;
      await db.transaction(async (tx) => {
        await db.lockPullRequest(tx, pr.id);
        if (changed) await this.recordMove(tx, repo, pr, 'hidden', revocation.reason, cause);
        await tx
          .update(pullRequests)
          .set({
            visibility: 'hidden',
            trusted: false,
            ...(changed || revocation.closed ? { reason: revocation.reason } : {}),
            ...(newer ? { factsAt: revocation.at } : {}),
            ...(revocation.closed ? { state: 'closed' as const, closedAt: pr.closedAt ?? new Date() } : {}),
            updatedAt: new Date(),
          })
          .where(eq(pullRequests.id, pr.id));
        // Told to GitHub a little later, so the decision queued now coalesces into one comment edit.
        if (changed) await this.enqueueFeedback(repo, pr, await this.readyBuildIds(pr.id, tx), REVOCATION_FEEDBACK_DELAY_MS);
      });
    });
    await this.enqueue(repo, number, cause);
  }

  /** The app lost access to the repository: hide every PR at once (no GitHub needed), remove them later. */
  async hideRepository(repo: Repository, cause: Cause, reason = 'the app was uninstalled from the repository'): Promise<void> {
    const { db } = this.ctx;
    const prs = await db.orm.select().from(pullRequests).where(eq(pullRequests.repositoryId, repo.id));
    for (const pr of prs) {
      await withPr(this.ctx, repo.id, pr.number, async () => {
        const fresh = (await this.ctx.registry.findPullRequest(repo.id, pr.number))!;
        const changed = await this.moveFolder(repo, fresh, 'hidden');
        await db.transaction(async (tx) => {
          await db.lockPullRequest(tx, pr.id);
          if (changed) await this.recordMove(tx, repo, fresh, 'hidden', reason, cause);
          await tx.update(pullRequests).set({ visibility: 'hidden', trusted: false, updatedAt: new Date() }).where(eq(pullRequests.id, pr.id));
        });
      });
    }
    await db.orm.update(repositories).set({ installed: false, uninstalledAt: new Date() }).where(eq(repositories.id, repo.id));
  }

  /**
   * Feedback is a row first (the outbox): coalesced per PR, sent in order, retried until GitHub takes it. Its key is
   * not the PR's decision key: GitHub's writes are paced (one a second), so a feedback run lasts seconds, and a
   * label added meanwhile must not wait for the comment of the previous decision before it flips the preview.
   */
  enqueueFeedback(repo: Repository, pr: PullRequest, buildIds: number[], delayMs = 0): Promise<void> {
    return this.ctx.queue.enqueue('feedback', `feedback:${prKey(repo.id, pr.number)}`, { repositoryId: repo.id, number: pr.number, buildIds }, delayMs);
  }

  async readyBuildIds(pullRequestId: number, q: Orm = this.ctx.db.orm): Promise<number[]> {
    const rows = await q
      .select({ id: builds.id })
      .from(builds)
      .where(and(eq(builds.pullRequestId, pullRequestId), eq(builds.status, 'ready')));
    return rows.map((b) => b.id);
  }

  /**
   * `site:` of the settings: a free site is taken (a `move-site` job renames the folder once no operation on
   * the repository runs); a site held by another repository is refused, and this sentence says why.
   */
  async siteNote(repo: Repository, settings: RepoSettings, q: Orm = this.ctx.db.orm): Promise<string | undefined> {
    const current = await this.currentRepo(repo, q);
    if (!settings.site || settings.site === current.site) return undefined;
    if (await this.ctx.registry.isSiteTaken(settings.site, repo.id, q)) {
      return `the site '${settings.site}' named in .github/preview-gate.yml is used by another repository, so previews stay at '${current.site}'`;
    }
    if (!(await this.hasStoredBuilds(current, q))) {
      // Nothing stored yet (a repository's first upload): the site is taken now, so this upload's build is
      // stored under it and its answer names the URL that serves it (a later move would make that URL 404).
      await q.update(repositories).set({ site: settings.site }).where(eq(repositories.id, repo.id));
      return undefined;
    }
    await this.ctx.queue.enqueue('move-site', `repo:${repo.id}`, { repositoryId: repo.id, site: settings.site });
    return undefined;
  }

  /** Whether the repository has builds under its site: its folder on disk, or with STORAGE=s3 a ready build row. */
  private async hasStoredBuilds(repo: Repository, q: Orm): Promise<boolean> {
    if (!this.ctx.store.bucket) return this.ctx.store.hasSiteFolder(repo.site);
    const stored = await first(
      q
        .select({ id: builds.id })
        .from(builds)
        .innerJoin(pullRequests, eq(builds.pullRequestId, pullRequests.id))
        .where(and(eq(pullRequests.repositoryId, repo.id), eq(builds.status, 'ready')))
        .limit(1),
    );
    return stored !== undefined;
  }

  /** A `move-site` job: one rename of the repository's folder; every open PR's feedback shows the new URLs. */
  async moveSite(data: Record<string, unknown>): Promise<void> {
    const wanted = String(data.site);
    const { db } = this.ctx;
    const lockName = `repository:${Number(data.repositoryId)}`;
    const moved = await withRepository(this.ctx, Number(data.repositoryId), async () => {
      const repo = await db.transaction(async (tx) => {
        await db.lockName(tx, lockName, 'exclusive');
        const repo = await first(tx.select().from(repositories).where(eq(repositories.id, Number(data.repositoryId))).limit(1));
        if (!repo || repo.site === wanted || (await this.ctx.registry.isSiteTaken(wanted, repo.id, tx))) return undefined;
        return repo;
      });
      if (!repo) return undefined;
      await this.ctx.store.moveSite(repo.site, wanted);
      this.ctx.log.info({ repo: repo.fullName, from: repo.site, to: wanted }, 'moved the previews to the site named in the settings');
      return db.transaction(async (tx) => {
        await db.lockName(tx, lockName, 'exclusive');
        return only(tx.update(repositories).set({ site: wanted }).where(eq(repositories.id, repo.id)).returning());
      });
    });
    if (!moved) return;
    await db.transaction(async (tx) => {
      for (const { pr } of await this.ctx.registry.openPullRequests([moved], undefined, tx)) await this.enqueueFeedback(moved, pr, await this.readyBuildIds(pr.id, tx));
    });
  }

  /** The settings last read from GitHub, kept so a revocation can be judged when GitHub cannot be asked. */
  storedSettings(repo: Repository): RepoSettings | undefined {
    const parsed = settingsSchema.safeParse(repo.settings ?? undefined);
    return parsed.success ? parsed.data : undefined;
  }

  private async rememberSettings(repo: Repository, settings: RepoSettings, tx: Orm): Promise<void> {
    if (JSON.stringify(repo.settings) !== JSON.stringify(settings)) {
      await tx.update(repositories).set({ settings }).where(eq(repositories.id, repo.id));
    }
  }

  /**
   * Moves the PR folder to `to` (one rename), repairing first a PR found in both folders after a crash.
   * Returns whether the visibility changed (then `recordMove` records it, in the transaction that follows).
   */
  private async moveFolder(repo: Repository, pr: PullRequest, to: Visibility): Promise<boolean> {
    const site = (await this.currentRepo(repo)).site;
    await this.ctx.store.repairBothFolders(site, pr.number, pr.visibility);
    if (pr.visibility === to) return false;
    await this.ctx.store.setVisibility(site, pr.number, pr.visibility, to);
    return true;
  }

  private async recordMove(tx: Orm, repo: Repository, pr: PullRequest, to: Visibility, reason: string, cause: Cause): Promise<void> {
    const actorUserId = cause.actor ? await this.ctx.registry.upsertUser(cause.actor.id, cause.actor.login, tx) : undefined;
    await tx.insert(visibilityChanges).values({ pullRequestId: pr.id, from: pr.visibility, to, reason, cause: cause.event, actorUserId });
    this.ctx.metrics.visibilityChanges.inc({ to });
    this.ctx.log.info({ repo: repo.fullName, pr: pr.number, from: pr.visibility, to, cause: cause.event }, `pull request is now ${to}: ${reason}`);
  }

  /**
   * The row of the repository these facts are about. GitHub answers for a name; when the name now belongs to
   * another repository (a rename we have not heard of yet, then a new repository with the old name), the
   * stored previews are not its own.
   */
  private async sameRepository(stale: Repository, facts: PrFacts): Promise<Repository> {
    const repo = await this.currentRepo(stale);
    if (facts.repositoryId === undefined || repo.githubId === facts.repositoryId) return repo;
    const githubId = facts.repositoryId;
    await this.ctx.db.transaction(async (tx) => {
      if (repo.githubId !== null || (await this.ctx.registry.findRepositoryById(githubId, tx))) return;
      await tx.update(repositories).set({ githubId }).where(and(eq(repositories.id, repo.id), isNull(repositories.githubId)));
    });
    // Read again: uploads racing on PostgreSQL may each have found the id unset, and one of them adopted it first.
    const now = await this.currentRepo(stale);
    if (now.githubId === githubId) return now;
    throw forbidden(`${repo.fullName} is now a different repository than the one whose previews are stored under that name.`);
  }

  /** The PR row, created hidden (the safe default) the first time the PR is seen. */
  ensurePr(repo: Repository, number: number, state: 'open' | 'closed', headSha: string | null): Promise<PullRequest> {
    // Inside the caller's transaction when there is one (a transaction started in another joins it).
    return this.ctx.db.transaction(async (tx) => {
      await tx.insert(pullRequests).values({ repositoryId: repo.id, number, state, headSha }).onConflictDoNothing();
      return (await this.ctx.registry.findPullRequest(repo.id, number, tx))!;
    });
  }

  currentRepo(repo: Repository, q: Orm = this.ctx.db.orm): Promise<Repository> {
    return only(q.select().from(repositories).where(eq(repositories.id, repo.id)).limit(1));
  }
}
