import { and, eq } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { BuildStore, Visibility } from './builds/store.js';
import type { Db } from './db/client.js';
import { builds, pullRequests, repositories, visibilityChanges } from './db/schema.js';
import { conflict, unavailable } from './errors.js';
import type { GitHub, PrFacts } from './github.js';
import { KeyedLock } from './lock.js';
import type { Metrics } from './metrics.js';
import type { PullRequest, Registry, Repository } from './registry.js';

export interface Cause {
  /** `upload`, or the webhook event (`pull_request.labeled`, ...). */
  event: string;
  /** Who caused it, as a GitHub numeric user id and login. */
  actor?: { id: number; login: string };
}

/**
 * The one place where "should this PR's previews be public?" is decided and applied: facts from GitHub
 * → trust decision → PR folder renamed → database row → (later) GitHub notified. All changes to one PR
 * run under its lock, so an upload and a webhook never interleave their renames.
 */
export class Previews {
  private readonly lock = new KeyedLock();

  constructor(
    private readonly db: Db,
    private readonly registry: Registry,
    private readonly store: BuildStore,
    private readonly github: GitHub | undefined,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {}

  /** Builds rows left `pending` by a crash: their staging folders are gone, so is the claim. */
  sweepPendingBuilds(): void {
    const removed = this.db.delete(builds).where(eq(builds.status, 'pending')).run().changes;
    if (removed) this.log.warn({ removed }, 'removed claims of uploads interrupted by a restart');
  }

  /** Reads what GitHub says now and applies it. Throws (nothing changed) when GitHub cannot be asked. */
  async reconcile(repo: Repository, number: number, cause: Cause): Promise<PullRequest> {
    if (!this.github) throw unavailable('The GitHub App is not configured yet.');
    const [owner, name] = repo.fullName.split('/') as [string, string];
    const { octokit } = await this.github.forRepository(owner, name);
    const facts = await this.github.prFacts(octokit, owner, name, number);
    return this.apply(repo, facts, cause);
  }

  /** Applies facts to the PR under its lock. Facts older than those behind the current decision are ignored. */
  apply(repo: Repository, facts: PrFacts, cause: Cause): Promise<PullRequest> {
    return this.lock.run(prKey(repo, facts.number), () => this.applyLocked(repo, facts, cause));
  }

  /**
   * Claims `sha7` for this PR before the body is read: of N concurrent uploads of one SHA exactly one gets
   * the claim (a unique index decides); the others get 409 without extracting anything.
   */
  claimBuild(repo: Repository, facts: PrFacts, sha: string): number {
    const pr = this.ensurePr(repo, facts);
    const sha7 = sha.slice(0, 7);
    const claimed = this.db
      .insert(builds)
      .values({ pullRequestId: pr.id, sha, sha7, status: 'pending' })
      .onConflictDoNothing()
      .returning({ id: builds.id })
      .get();
    if (!claimed) throw conflict(`A build of ${sha7} already exists for pull request #${facts.number}.`);
    return claimed.id;
  }

  releaseClaim(buildId: number): void {
    this.db.delete(builds).where(and(eq(builds.id, buildId), eq(builds.status, 'pending'))).run();
  }

  /**
   * Applies the upload's facts, then moves the extracted staging folder into the PR folder with one rename.
   * Returns the visibility the build was stored with.
   */
  async storeBuild(
    repo: Repository,
    facts: PrFacts,
    buildId: number,
    staging: string,
    size: { bytes: number; files: number },
  ): Promise<Visibility> {
    return this.lock.run(prKey(repo, facts.number), async () => {
      const pr = await this.applyLocked(repo, facts, { event: 'upload' });
      const build = this.db.select().from(builds).where(eq(builds.id, buildId)).get()!;
      const site = this.siteOf(repo);
      await this.store.publish(staging, site, facts.number, pr.visibility, build.sha7);
      this.db.update(builds).set({ status: 'ready', ...size }).where(eq(builds.id, buildId)).run();
      return pr.visibility;
    });
  }

  private async applyLocked(repo: Repository, facts: PrFacts, cause: Cause): Promise<PullRequest> {
    const pr = this.ensurePr(repo, facts);
    if (pr.factsAt && pr.factsAt > facts.at) return pr; // a newer decision was applied meanwhile
    const visibility: Visibility = facts.decision.trusted ? 'public' : 'hidden';
    const site = this.siteOf(repo);
    if (visibility !== pr.visibility) {
      await this.store.setVisibility(site, facts.number, pr.visibility, visibility);
      const actorUserId = cause.actor ? this.registry.upsertUser(cause.actor.id, cause.actor.login) : undefined;
      this.db
        .insert(visibilityChanges)
        .values({ pullRequestId: pr.id, from: pr.visibility, to: visibility, reason: facts.decision.reason, cause: cause.event, actorUserId })
        .run();
      this.metrics.visibilityChanges.inc({ to: visibility });
      this.log.info(
        { repo: repo.fullName, pr: facts.number, from: pr.visibility, to: visibility, cause: cause.event },
        `pull request is now ${visibility}: ${facts.decision.reason}`,
      );
    }
    const authorUserId = this.registry.upsertUser(facts.author.id, facts.author.login);
    return this.db
      .update(pullRequests)
      .set({
        authorUserId,
        state: facts.state,
        headSha: facts.headSha,
        trusted: facts.decision.trusted,
        visibility,
        reason: facts.decision.reason,
        factsAt: facts.at,
        closedAt: facts.state === 'closed' ? (pr.closedAt ?? new Date()) : null,
        updatedAt: new Date(),
      })
      .where(eq(pullRequests.id, pr.id))
      .returning()
      .get();
  }

  /** The PR row, created hidden (the safe default) the first time the PR is seen. */
  private ensurePr(repo: Repository, facts: PrFacts): PullRequest {
    this.db
      .insert(pullRequests)
      .values({ repositoryId: repo.id, number: facts.number, state: facts.state, headSha: facts.headSha })
      .onConflictDoNothing()
      .run();
    return this.registry.findPullRequest(repo.id, facts.number)!;
  }

  /** The site as stored now (settings may have renamed it since `repo` was read). */
  private siteOf(repo: Repository): string {
    return this.db.select({ site: repositories.site }).from(repositories).where(eq(repositories.id, repo.id)).get()!.site;
  }
}

const prKey = (repo: Repository, number: number) => `${repo.id}#${number}`;
