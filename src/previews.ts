import { and, count, eq, lt, or, sum } from 'drizzle-orm';
import fs from 'node:fs';
import type { Logger } from 'pino';
import type { ExtractLimits, ExtractResult } from './builds/extract.js';
import type { BuildStore, Visibility } from './builds/store.js';
import type { Db } from './db/client.js';
import { builds, pullRequests, repositories, uploads, visibilityChanges } from './db/schema.js';
import { conflict, tooLarge, unavailable } from './errors.js';
import type { GitHub, Octokit, PrFacts } from './github.js';
import { KeyedLock } from './lock.js';
import type { Config } from './config.js';
import type { Metrics } from './metrics.js';
import type { Notifier } from './notify.js';
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
  private readonly notifications = new KeyedLock();
  private readonly pending = new Set<Promise<void>>();

  constructor(
    private readonly db: Db,
    private readonly registry: Registry,
    private readonly store: BuildStore,
    private readonly github: GitHub | undefined,
    private readonly notifier: Notifier,
    private readonly config: Config,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {}

  /**
   * After a crash (SIGKILL, power loss): staging was swept by the store; here every build row gets its folder
   * and every folder its row. Claims left `pending` are dropped; a folder that was renamed into place but never
   * marked ready (killed between the two) is removed, so no half-announced build stays reachable.
   */
  recoverAfterRestart(): void {
    const pending = this.db.delete(builds).where(eq(builds.status, 'pending')).run().changes;
    const known = new Set<string>();
    const rows = this.db
      .select({ build: builds, pr: pullRequests, repo: repositories })
      .from(builds)
      .innerJoin(pullRequests, eq(builds.pullRequestId, pullRequests.id))
      .innerJoin(repositories, eq(pullRequests.repositoryId, repositories.id))
      .all();
    let missing = 0;
    for (const { build, pr, repo } of rows) {
      const dir = this.store.buildDir(repo.site, pr.number, pr.visibility, build.sha7);
      if (fs.existsSync(dir)) known.add(dir);
      else {
        this.db.delete(builds).where(eq(builds.id, build.id)).run();
        missing++;
      }
    }
    const orphans = this.store.buildDirs().filter((dir) => !known.has(dir));
    for (const dir of orphans) fs.rmSync(dir, { recursive: true, force: true });
    if (pending || missing || orphans.length) {
      this.log.warn({ pending, missing, orphans: orphans.length }, 'repaired the builds after an unclean stop');
    }
  }

  /** Reads what GitHub says now and applies it. Throws (nothing changed) when GitHub cannot be asked. */
  async reconcile(repo: Repository, number: number, cause: Cause, octokit?: Octokit): Promise<PullRequest> {
    if (!this.github) throw unavailable('The GitHub App is not configured yet.');
    const [owner, name] = repo.fullName.split('/') as [string, string];
    octokit ??= (await this.github.forRepository(owner, name)).octokit;
    const facts = await this.github.prFacts(octokit, owner, name, number);
    return this.applyAndNotify(octokit, repo, facts, cause);
  }

  /** Applies facts under the PR's lock; when the visibility changed, tells GitHub (comment, statuses, deployments). */
  async applyAndNotify(octokit: Octokit, repo: Repository, facts: PrFacts, cause: Cause): Promise<PullRequest> {
    const { pr, changed } = await this.lock.run(prKey(repo, facts.number), () => this.applyLocked(repo, facts, cause));
    if (changed) this.notifySafely(octokit, repo, pr, facts, this.readyBuilds(pr.id));
    return pr;
  }

  /**
   * Tells GitHub in the background (per PR, in order), so that neither the upload nor the webhook waits for
   * Octokit's write throttling. Feedback never undoes a decision already applied: a failure is logged.
   */
  notifySafely(octokit: Octokit, repo: Repository, pr: PullRequest, facts: PrFacts, changed: Build[]): void {
    const task = this.notifications
      .run(prKey(repo, pr.number), () => this.notifier.notify(octokit, this.currentRepo(repo), this.freshPr(pr), facts.settings, changed))
      .catch((err: unknown) => {
        this.metrics.githubErrors.inc({ during: 'notify' });
        this.log.warn({ repo: repo.fullName, pr: pr.number, err: (err as Error).message }, 'could not update the PR comment, status or deployment');
      });
    this.pending.add(task);
    void task.finally(() => this.pending.delete(task));
  }

  /** GitHub notifications queued or being sent. */
  get pendingNotifications(): number {
    return this.pending.size;
  }

  /** Resolves when every queued GitHub notification has been sent (tests, and draining at shutdown). */
  async settled(): Promise<void> {
    while (this.pending.size) await Promise.all([...this.pending]);
  }

  private freshPr(pr: PullRequest): PullRequest {
    return this.db.select().from(pullRequests).where(eq(pullRequests.id, pr.id)).get() ?? pr;
  }

  readyBuilds(pullRequestId: number): Build[] {
    return this.db.select().from(builds).where(and(eq(builds.pullRequestId, pullRequestId), eq(builds.status, 'ready'))).all();
  }

  /**
   * Claims `sha7` for this PR before the body is read: of N concurrent uploads of one SHA exactly one gets
   * the claim (a unique index decides); the others get 409 without extracting anything.
   */
  private claimBuild(repo: Repository, facts: PrFacts, sha: string): number {
    const pr = this.ensurePr(repo, facts);
    const sha7 = sha.slice(0, 7);
    const { n } = this.db.select({ n: count() }).from(builds).where(eq(builds.pullRequestId, pr.id)).get()!;
    if (n >= this.config.maxPrBuilds) {
      throw tooLarge(
        `Pull request #${facts.number} already holds ${n} builds, the limit (MAX_PR_BUILDS); they are removed ${this.config.cleanupAfterHours} h after it closes.`,
      );
    }
    const claimed = this.db
      .insert(builds)
      .values({ pullRequestId: pr.id, sha, sha7, status: 'pending' })
      .onConflictDoNothing()
      .returning({ id: builds.id })
      .get();
    if (!claimed) throw conflict(`A build of ${sha7} already exists for pull request #${facts.number}.`);
    return claimed.id;
  }

  /**
   * Stores one build of a PR, from an upload or a pulled artifact: quota → claim of the SHA → `extract` into a
   * fresh staging folder → one rename into the PR folder → GitHub told in the background. On any failure
   * nothing stays: the claim is released and staging removed before this returns.
   */
  async ingestBuild(
    octokit: Octokit,
    repo: Repository,
    facts: PrFacts,
    sha: string,
    source: 'upload' | 'artifact',
    extract: (staging: string, limits: ExtractLimits) => Promise<ExtractResult>,
  ): Promise<{ pr: PullRequest; build: Build }> {
    const { config } = this;
    const accountRoom = config.maxAccountBytes - this.accountBytes(repo);
    const quotaMessage = `The account ${repo.fullName.split('/')[0]} would store more than its ${config.maxAccountBytes} bytes of previews (MAX_ACCOUNT_BYTES); builds of closed PRs are removed after ${config.cleanupAfterHours} h.`;
    if (accountRoom <= 0) throw tooLarge(quotaMessage);
    const limits: ExtractLimits =
      accountRoom < config.maxBuildBytes ? { ...config, maxBuildBytes: accountRoom, buildBytesMessage: quotaMessage } : config;
    const buildId = this.claimBuild(repo, facts, sha);
    let staging: string | undefined;
    try {
      staging = await this.store.createStaging();
      const stopTimer = this.metrics.extractionSeconds.startTimer();
      const size = await extract(staging, limits);
      stopTimer();
      const { pr, build, changed } = await this.storeBuild(repo, facts, buildId, staging, size);
      staging = undefined;
      this.metrics.uploadedBytes.inc(size.bytes);
      this.db
        .insert(uploads)
        .values({ accountId: repo.accountId, repositoryId: repo.id, pullRequestNumber: pr.number, sha, bytes: size.bytes, files: size.files, source, authorUserId: pr.authorUserId })
        .run();
      this.notifySafely(octokit, repo, pr, facts, changed ? this.readyBuilds(pr.id) : [build]);
      return { pr, build };
    } catch (err) {
      this.releaseClaim(buildId);
      throw err;
    } finally {
      // Removed before returning, so a client that sees the answer never sees a leftover.
      if (staging) await this.store.discard(staging);
    }
  }

  /** Bytes of all ready builds. */
  storedBytes(): number {
    const row = this.db.select({ bytes: sum(builds.bytes) }).from(builds).where(eq(builds.status, 'ready')).get();
    return Number(row?.bytes ?? 0);
  }

  /** Bytes of builds stored (or being stored) by the account that owns `repo`. */
  accountBytes(repo: Repository): number {
    const row = this.db
      .select({ bytes: sum(builds.bytes) })
      .from(builds)
      .innerJoin(pullRequests, eq(builds.pullRequestId, pullRequests.id))
      .innerJoin(repositories, eq(pullRequests.repositoryId, repositories.id))
      .where(eq(repositories.accountId, repo.accountId))
      .get();
    return Number(row?.bytes ?? 0);
  }

  private releaseClaim(buildId: number): void {
    this.db.delete(builds).where(and(eq(builds.id, buildId), eq(builds.status, 'pending'))).run();
  }

  /**
   * Applies the upload's facts, then moves the extracted staging folder into the PR folder with one rename.
   * Returns the visibility the build was stored with.
   */
  private async storeBuild(
    repo: Repository,
    facts: PrFacts,
    buildId: number,
    staging: string,
    size: { bytes: number; files: number },
  ): Promise<{ pr: PullRequest; build: Build; changed: boolean }> {
    return this.lock.run(prKey(repo, facts.number), async () => {
      const { pr, changed } = await this.applyLocked(repo, facts, { event: 'upload' });
      const build = this.db.select().from(builds).where(eq(builds.id, buildId)).get()!;
      await this.store.publish(staging, this.currentRepo(repo).site, facts.number, pr.visibility, build.sha7);
      const ready = this.db.update(builds).set({ status: 'ready', ...size }).where(eq(builds.id, buildId)).returning().get();
      return { pr, build: ready, changed };
    });
  }

  /** The app lost access to the repository: hide every PR at once (no GitHub needed), remove them later. */
  async hideRepository(repo: Repository, cause: Cause): Promise<void> {
    const prs = this.db.select().from(pullRequests).where(eq(pullRequests.repositoryId, repo.id)).all();
    for (const pr of prs) {
      await this.lock.run(prKey(repo, pr.number), async () => {
        if (pr.visibility === 'public') {
          await this.store.setVisibility(repo.site, pr.number, 'public', 'hidden');
          this.recordChange(pr, 'hidden', 'the app was uninstalled from the repository', cause);
        }
        this.db.update(pullRequests).set({ visibility: 'hidden', trusted: false, updatedAt: new Date() }).where(eq(pullRequests.id, pr.id)).run();
      });
    }
    this.db.update(repositories).set({ installed: false, uninstalledAt: new Date() }).where(eq(repositories.id, repo.id)).run();
  }

  /**
   * Removes the builds of PRs closed (and of repositories uninstalled) longer than CLEANUP_AFTER_HOURS ago.
   * GitHub is asked first; when it cannot be asked, nothing is deleted.
   */
  async cleanup(now = new Date()): Promise<{ removedPrs: number; skipped: number }> {
    const cutoff = new Date(now.getTime() - this.config.cleanupAfterHours * 3600_000);
    let removedPrs = 0;
    let skipped = 0;
    const candidates = this.db
      .select({ pr: pullRequests, repo: repositories })
      .from(pullRequests)
      .innerJoin(repositories, eq(pullRequests.repositoryId, repositories.id))
      .where(or(and(eq(pullRequests.state, 'closed'), lt(pullRequests.closedAt, cutoff)), lt(repositories.uninstalledAt, cutoff)))
      .all();
    for (const { pr, repo } of candidates) {
      if (!this.readyBuilds(pr.id).length && !this.store.hasPrFolder(repo.site, pr.number)) continue;
      try {
        if (!(await this.stillGone(repo, pr))) {
          skipped++;
          continue;
        }
      } catch (err) {
        skipped++;
        this.log.warn({ repo: repo.fullName, pr: pr.number, err: (err as Error).message }, 'cleanup skipped: GitHub could not be asked');
        continue;
      }
      await this.lock.run(prKey(repo, pr.number), async () => {
        await this.store.removePr(repo.site, pr.number);
        this.db.delete(builds).where(eq(builds.pullRequestId, pr.id)).run();
      });
      removedPrs++;
      this.log.info({ repo: repo.fullName, pr: pr.number }, 'removed the builds of a closed pull request');
    }
    return { removedPrs, skipped };
  }

  /** Whether GitHub confirms the PR is still closed (or the app still uninstalled). Throws when it cannot be asked. */
  private async stillGone(repo: Repository, pr: PullRequest): Promise<boolean> {
    if (!this.github) throw unavailable('The GitHub App is not configured.');
    const [owner, name] = repo.fullName.split('/') as [string, string];
    let octokit: Octokit;
    try {
      octokit = (await this.github.forRepository(owner, name)).octokit;
    } catch (err) {
      if ((err as { status?: number }).status === 403) return true; // not installed any more
      throw err;
    }
    if (repo.uninstalledAt) {
      this.db.update(repositories).set({ installed: true, uninstalledAt: null }).where(eq(repositories.id, repo.id)).run();
    }
    const facts = await this.github.prFacts(octokit, owner, name, pr.number);
    if (facts.state === 'open') {
      await this.applyAndNotify(octokit, repo, facts, { event: 'cleanup' });
      return false;
    }
    return pr.state === 'closed';
  }

  private async applyLocked(repo: Repository, facts: PrFacts, cause: Cause): Promise<{ pr: PullRequest; changed: boolean }> {
    const pr = this.ensurePr(repo, facts);
    if (pr.factsAt && pr.factsAt > facts.at) return { pr, changed: false }; // a newer decision was applied meanwhile
    const visibility: Visibility = facts.decision.trusted ? 'public' : 'hidden';
    const changed = visibility !== pr.visibility;
    if (changed) {
      await this.store.setVisibility(this.currentRepo(repo).site, facts.number, pr.visibility, visibility);
      this.recordChange(pr, visibility, facts.decision.reason, cause);
      this.log.info(
        { repo: repo.fullName, pr: facts.number, from: pr.visibility, to: visibility, cause: cause.event },
        `pull request is now ${visibility}: ${facts.decision.reason}`,
      );
    }
    const authorUserId = this.registry.upsertUser(facts.author.id, facts.author.login);
    const updated = this.db
      .update(pullRequests)
      .set({
        authorUserId,
        state: facts.state,
        headSha: facts.headSha,
        trusted: facts.decision.trusted,
        visibility,
        reason: facts.decision.reason,
        factsAt: facts.at,
        closedAt: facts.state === 'closed' ? (pr.closedAt ?? facts.at) : null,
        updatedAt: new Date(),
      })
      .where(eq(pullRequests.id, pr.id))
      .returning()
      .get();
    return { pr: updated, changed };
  }

  private recordChange(pr: PullRequest, to: Visibility, reason: string, cause: Cause) {
    const actorUserId = cause.actor ? this.registry.upsertUser(cause.actor.id, cause.actor.login) : undefined;
    this.db.insert(visibilityChanges).values({ pullRequestId: pr.id, from: pr.visibility, to, reason, cause: cause.event, actorUserId }).run();
    this.metrics.visibilityChanges.inc({ to });
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

  /** The repository as stored now (settings may have renamed its site since `repo` was read). */
  private currentRepo(repo: Repository): Repository {
    return this.db.select().from(repositories).where(eq(repositories.id, repo.id)).get()!;
  }
}

type Build = typeof builds.$inferSelect;

const prKey = (repo: Repository, number: number) => `${repo.id}#${number}`;
