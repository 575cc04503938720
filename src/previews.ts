import { and, eq, inArray } from './db/orm.js';
import type { Logger } from 'pino';
import type { BuildTarget, ExtractResult } from './builds/extract.js';
import type { BuildStore } from './builds/store.js';
import type { Config } from './config.js';
import type { Database } from './db/database.js';
import { first } from './db/query.js';
import { builds, repositories } from './db/tables.js';
import { isNotFound, type GitHub, type Octokit, type PrFacts } from './github.js';
import { KeyedLock, SharedLock } from './lock.js';
import type { Metrics } from './metrics.js';
import type { Notifier } from './notify.js';
import { octokitFor, ownerAndName, type Build, type Cause, type PreviewsContext } from './previews/context.js';
import { Decisions, type Revocation } from './previews/decide.js';
import { Ingest } from './previews/ingest.js';
import { Maintenance } from './previews/maintenance.js';
import { WorkQueue } from './queue.js';
import { CdnPurger, mergePurges, PURGE_JOB } from './cdn.js';
import { PrLocks } from './pr-lock.js';
import { Replica } from './replica.js';
import type { PullRequest, Registry, Repository } from './registry.js';
import type { RepoSettings } from './trust.js';

export type { Cause } from './previews/context.js';

/**
 * The front of the previews: one object the routes, the webhook handlers, the sweep and the CLI talk to.
 * The work lives in `previews/` by verb: `decide` (the one trust decision, applied), `ingest` (storing a
 * build), `maintenance` (crash recovery, cleanup). Work that needs GitHub and may fail is a row in the
 * durable queue (`queue.ts`): decisions (`decide`), feedback (`feedback`), label removals and CDN purges (`cdn.ts`).
 */
export class Previews {
  readonly queue: WorkQueue;
  readonly decisions: Decisions;
  private readonly ingest: Ingest;
  private readonly maintenance: Maintenance;
  private readonly ctx: PreviewsContext;
  private readonly purger: CdnPurger;

  constructor(
    db: Database,
    registry: Registry,
    store: BuildStore,
    github: GitHub | undefined,
    notifier: Notifier,
    config: Config,
    metrics: Metrics,
    log: Logger,
    replica: Replica = new Replica(db),
  ) {
    this.queue = new WorkQueue(db, log, Date.now, replica.id, replica.leaseMs);
    this.ctx = { db, registry, store, github, notifier, config, metrics, log, queue: this.queue, replica, lock: new KeyedLock(), prLocks: new PrLocks(db, replica.id, replica.leaseMs, log), repoLock: new SharedLock() };
    this.decisions = new Decisions(this.ctx);
    this.ingest = new Ingest(this.ctx, this.decisions);
    this.maintenance = new Maintenance(this.ctx, this.decisions);
    this.queue.register('decide', { lane: 'reads', run: (data, job) => this.decisions.runJob(data, job) });
    this.queue.register('feedback', {
      lane: 'writes',
      run: (data) => this.sendFeedback(data),
      merge: (older, newer) => ({ ...newer, buildIds: [...new Set([...(older.buildIds as number[]), ...(newer.buildIds as number[])])] }),
    });
    this.queue.register('remove-label', { lane: 'writes', run: (data) => this.removeLabel(data) });
    this.queue.register('move-site', { lane: 'reads', run: (data) => this.decisions.moveSite(data) });
    this.purger = new CdnPurger(config, db, store, log, metrics);
    this.queue.register(PURGE_JOB, { lane: 'purges', run: (data, job) => this.purger.run(data, job), merge: mergePurges });
  }

  /** Starts running queued work (left by a previous run too). Without GitHub there is nothing to run it with. */
  start(): void {
    if (this.ctx.github) this.queue.start();
  }

  async stop(waitMs?: number): Promise<boolean> {
    const stopped = await this.queue.stop(waitMs);
    this.purger.close();
    return stopped;
  }

  recoverAfterRestart(options?: { unclean?: boolean; now?: Date }): Promise<void> {
    return this.maintenance.recoverAfterRestart(options);
  }

  /** Releases what replicas that stopped running left (their upload claims and staging folders). */
  releaseDead(): Promise<{ pending: number; staging: number }> {
    return this.maintenance.releaseDead();
  }

  cleanup(now?: Date) {
    return this.maintenance.cleanup(now);
  }

  /** Reads GitHub's facts about one PR now and applies them; `uploadSha` is the commit being uploaded. */
  reconcile(repo: Repository, number: number, cause: Cause, options?: { uploadSha?: string; settings?: RepoSettings; octokit?: Octokit }) {
    return this.decisions.reconcile(repo, number, cause, options);
  }

  /** The repository's settings read from GitHub now (the sweep reads them once per repository). */
  async readSettings(repo: Repository): Promise<RepoSettings> {
    const [owner, name] = ownerAndName(repo);
    return this.ctx.github!.settings(await octokitFor(this.ctx, repo), owner, name);
  }

  /** Queues a decision from GitHub's facts (the webhook is answered once this is recorded). */
  decideLater(repo: Repository, number: number, cause: Cause): Promise<void> {
    return this.decisions.enqueue(repo, number, cause);
  }

  revoke(repo: Repository, number: number, revocation: Revocation, cause: Cause): Promise<void> {
    return this.decisions.revoke(repo, number, revocation, cause);
  }

  hideRepository(repo: Repository, cause: Cause, reason?: string): Promise<void> {
    return this.decisions.hideRepository(repo, cause, reason);
  }

  /** The installation's Octokit for a repository row (`askGitHub`: look the installation up now). */
  octokitFor(repo: Repository, options?: { askGitHub?: boolean }) {
    return octokitFor(this.ctx, repo, options);
  }

  ingestBuild(
    repo: Repository,
    number: number,
    authorize: () => Promise<{ repo: Repository; facts: PrFacts }>,
    sha: string,
    source: 'upload' | 'artifact',
    extract: (target: BuildTarget) => Promise<ExtractResult>,
  ): Promise<{ pr: PullRequest; build: Build }> {
    return this.ingest.ingestBuild(repo, number, authorize, sha, source, extract);
  }

  hasBuild(repo: Repository, number: number, sha: string): Promise<boolean> {
    return this.ingest.hasBuild(repo, number, sha);
  }

  storedBytes(): Promise<number> {
    return this.ingest.storedBytes();
  }

  /** Resolves when no queued work is due now (tests; work waiting for its backoff does not count). */
  settled(): Promise<void> {
    return this.queue.settled();
  }

  /** Brings GitHub's comment, statuses and deployments in line with the PR (a `feedback` row of the outbox). */
  private async sendFeedback(data: Record<string, unknown>): Promise<void> {
    const repo = await this.repoById(data.repositoryId);
    const pr = repo && (await this.ctx.registry.findPullRequest(repo.id, Number(data.number)));
    if (!repo?.installed || !pr) return;
    const octokit = await octokitFor(this.ctx, repo);
    const [owner, name] = ownerAndName(repo);
    const settings = this.decisions.storedSettings(repo) ?? (await this.ctx.github!.settings(octokit, owner, name));
    const ids = (data.buildIds as number[]) ?? [];
    const changed = ids.length
      ? await this.ctx.db.orm.select().from(builds).where(and(inArray(builds.id, ids), eq(builds.pullRequestId, pr.id), eq(builds.status, 'ready')))
      : [];
    await this.ctx.notifier.notify(octokit, repo, pr, settings, changed);
  }

  private async removeLabel(data: Record<string, unknown>): Promise<void> {
    const repo = await this.repoById(data.repositoryId);
    if (!repo?.installed) return;
    const octokit = await octokitFor(this.ctx, repo);
    const [owner, name] = ownerAndName(repo);
    try {
      await octokit.rest.issues.removeLabel({ owner, repo: name, issue_number: Number(data.number), name: String(data.label) });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }

  private repoById(id: unknown): Promise<Repository | undefined> {
    return first(this.ctx.db.orm.select().from(repositories).where(eq(repositories.id, Number(id))).limit(1));
  }
}
