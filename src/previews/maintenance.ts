import { and, eq, gt, gte, isNull, lt, notInArray, or } from '../db/orm.js';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { only } from '../db/query.js';
import { builds, jobs, objects, pullRequests, repositories } from '../db/tables.js';
import type { PullRequest, Repository } from '../registry.js';
import type { Octokit } from '../github.js';
import { octokitFor, withPr, type PreviewsContext } from './context.js';
import type { Decisions } from './decide.js';
import { forgetObjects } from './object-rows.js';
import { removeTreeSync } from '../builds/store.js';
import { manifestListsDir, Manifests } from '../upload/manifests.js';

/** How far back an unclean stop may have lost written files (Linux writes dirty pages back within 30 s). */
const RECENT_BUILD_MS = 5 * 60_000;
/** How long after its row an object may still be on its way into the store (it is linked right after the answer). */
const ROWS_SETTLE_MS = 60_000;

/** Regular files under `dir` and their total size, as the extractor counts them. */
function filesAndBytes(dir: string): { files: number; bytes: number } {
  let files = 0;
  let bytes = 0;
  for (const entry of fs.readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    files++;
    bytes += fs.statSync(path.join(entry.parentPath, entry.name)).size;
  }
  return { files, bytes };
}

/** Crash recovery at start and removal of closed PRs' builds after the retention. */
export class Maintenance {
  constructor(
    private readonly ctx: PreviewsContext,
    private readonly decisions: Decisions,
  ) {}

  /**
   * What replicas that are not running left behind: their upload claims (and any claim whose lease expired),
   * their staging folders and their queue leases. Claims and staging folders of running replicas stay: their uploads go on.
   */
  async releaseDead(now = new Date()): Promise<{ pending: number; staging: number }> {
    const { db, store, replica } = this.ctx;
    const live = [...(await replica.liveIds())];
    const released = await db.transaction(async (tx) => {
      const pending = await tx
        .delete(builds)
        .where(and(eq(builds.status, 'pending'), or(isNull(builds.claimOwner), notInArray(builds.claimOwner, live), isNull(builds.claimExpiresAt), lt(builds.claimExpiresAt, now))))
        .returning({ id: builds.id });
      // Their queue jobs run again now, not when their leases expire.
      await tx.update(jobs).set({ leaseOwner: null, leaseUntil: null }).where(notInArray(jobs.leaseOwner, live));
      return pending.length;
    });
    return { pending: released, staging: store.removeStaging(new Set(live)) };
  }

  /**
   * At start: what dead replicas left is released (`releaseDead`). When no other replica runs (one box, one
   * process: the usual case), every build row then gets its folder and every folder its row: a folder that was
   * renamed into place but never marked ready (killed between the two) is removed, so no half-announced build
   * stays reachable. With other replicas running, their renames may be half-way (folder moved, row not yet),
   * so the folders are left as they are. After an unclean stop of the whole box (`unclean`, alone), the builds
   * and objects of the last minutes are checked against a power loss; a crashed process alone loses no written
   * data.
   */
  async recoverAfterRestart(options: { unclean?: boolean; now?: Date } = {}): Promise<void> {
    const { db, store } = this.ctx;
    const { pending, staging } = await this.releaseDead(options.now);
    // In a bucket, a build is its rows, written in one transaction: there is no folder to repair.
    if (store.bucket || (await this.ctx.replica.liveIds()).size > 1) {
      if (pending || staging) this.ctx.log.warn({ pending, staging }, 'released the uploads of replicas that stopped uncleanly');
      return;
    }
    const rows = await db.orm
      .select({ build: builds, pr: pullRequests, repo: repositories })
      .from(builds)
      .innerJoin(pullRequests, eq(builds.pullRequestId, pullRequests.id))
      .innerJoin(repositories, eq(pullRequests.repositoryId, repositories.id));
    const repaired = new Set<number>();
    for (const { pr, repo } of rows) {
      if (repaired.has(pr.id)) continue;
      repaired.add(pr.id);
      await store.repairBothFolders(repo.site, pr.number, pr.visibility);
    }
    const known = new Set<string>();
    let missing = 0;
    for (const { build, pr, repo } of rows) {
      const dir = store.buildDir(repo.site, pr.number, pr.visibility, build.sha7);
      if (fs.existsSync(dir)) known.add(dir);
      else {
        await db.orm.delete(builds).where(eq(builds.id, build.id));
        missing++;
      }
    }
    const orphans = store.buildDirs().filter((dir) => !known.has(dir));
    for (const dir of orphans) removeTreeSync(dir);
    if (pending || staging || missing || orphans.length) {
      this.ctx.log.warn({ pending, staging, missing, orphans: orphans.length }, 'repaired the builds after an unclean stop');
    }
    if (options.unclean) {
      const now = options.now ?? new Date();
      await this.checkRecentBuilds(now);
      await this.checkRecentObjects(now);
      await this.removeUnreferencedObjects();
    }
  }

  /**
   * An object written just before a power loss may hold less (or other) than its name says; a build linking
   * it was dropped above, but the object must not serve the next upload of that content. Objects recorded in
   * the last RECENT_BUILD_MS are hashed again; one that differs is removed with its row.
   */
  private async checkRecentObjects(now: Date): Promise<void> {
    const { db, store } = this.ctx;
    const since = new Date(now.getTime() - RECENT_BUILD_MS);
    for (const row of await db.orm.select().from(objects).where(gt(objects.createdAt, since))) {
      const file = store.objects.forRepository(row.repositoryId).pathOf(row.sha256);
      const content = fs.existsSync(file) ? fs.readFileSync(file) : undefined;
      if (content && crypto.createHash('sha256').update(content).digest('hex') === row.sha256) continue;
      fs.rmSync(file, { force: true });
      await forgetObjects(db, row.repositoryId, [row]);
      this.ctx.log.warn({ repositoryId: row.repositoryId, sha256: row.sha256 }, 'an object stored just before an unclean stop is damaged on disk; removed');
    }
  }

  /**
   * Removes the objects no build links any more (a link count of 1: only the objects folder names it), and
   * the rows of objects that are gone, one sub-folder of each repository's objects at a time (the rows compared
   * with its listing: no `stat` per row). Returns how many objects were removed and their bytes.
   */
  async removeUnreferencedObjects(options: { rowsRecordedBefore?: Date } = {}): Promise<{ objects: number; bytes: number }> {
    const { db, store } = this.ctx;
    // At start every row counts; a cleanup leaves the newest (see `cleanup`).
    const settled = options.rowsRecordedBefore ? lt(objects.createdAt, options.rowsRecordedBefore) : undefined;
    let count = 0;
    let bytes = 0;
    for (const repositoryId of store.objects.repositoryIds()) {
      for await (const fan of store.objects.forRepository(repositoryId).removeUnreferenced()) {
        count += fan.removed.length;
        bytes += fan.bytes;
        const rows = await db.orm
          .select({ sha256: objects.sha256, size: objects.size })
          .from(objects)
          // The hashes starting with this prefix: hex digits sort before "g".
          .where(and(eq(objects.repositoryId, repositoryId), gte(objects.sha256, fan.prefix), lt(objects.sha256, `${fan.prefix}g`), settled));
        await forgetObjects(db, repositoryId, rows.filter((row) => !fan.kept.has(row.sha256)));
      }
    }
    if (count) this.ctx.log.info({ objects: count, bytes }, 'removed objects that no build links any more');
    return { objects: count, bytes };
  }

  /**
   * Builds are answered 201 without an fsync (it would cost more than the extraction). After an unclean stop
   * (power loss), the page cache of the last moments may never have reached the disk: every build stored in
   * the last RECENT_BUILD_MS is compared with its recorded files and bytes, and one that differs is dropped
   * (logged), so CI's retry stores it again instead of getting 409 for a build that is not there.
   */
  private async checkRecentBuilds(now: Date): Promise<void> {
    const { db, store } = this.ctx;
    const since = new Date(now.getTime() - RECENT_BUILD_MS);
    const recent = await db.orm
      .select({ build: builds, pr: pullRequests, repo: repositories })
      .from(builds)
      .innerJoin(pullRequests, eq(builds.pullRequestId, pullRequests.id))
      .innerJoin(repositories, eq(pullRequests.repositoryId, repositories.id))
      .where(and(eq(builds.status, 'ready'), gt(builds.createdAt, since)));
    for (const { build, pr, repo } of recent) {
      const dir = store.buildDir(repo.site, pr.number, pr.visibility, build.sha7);
      const found = filesAndBytes(dir);
      if (found.files === build.files && found.bytes === build.bytes) continue;
      await withPr(this.ctx, repo.id, pr.number, async () => {
        removeTreeSync(dir);
        await db.orm.delete(builds).where(eq(builds.id, build.id));
      });
      this.ctx.log.warn(
        { repo: repo.fullName, pr: pr.number, sha: build.sha7, recorded: { files: build.files, bytes: build.bytes }, found },
        'a build stored just before an unclean stop is incomplete on disk; dropped so that it can be uploaded again',
      );
    }
  }

  /**
   * Removes the builds of PRs closed (and of repositories uninstalled) longer than CLEANUP_AFTER_HOURS ago.
   * GitHub is asked first; when it cannot be asked, nothing is deleted.
   */
  async cleanup(now = new Date()): Promise<{ removedPrs: number; skipped: number; why: string[]; freed: { objects: number; bytes: number } }> {
    const cutoff = new Date(now.getTime() - this.ctx.config.cleanupAfterHours * 3600_000);
    let removedPrs = 0;
    let skipped = 0;
    const why: string[] = [];
    const candidates = await this.ctx.db.orm
      .select({ pr: pullRequests, repo: repositories })
      .from(pullRequests)
      .innerJoin(repositories, eq(pullRequests.repositoryId, repositories.id))
      .where(or(and(eq(pullRequests.state, 'closed'), lt(pullRequests.closedAt, cutoff)), lt(repositories.uninstalledAt, cutoff)));
    for (const { pr, repo } of candidates) {
      if (!(await this.decisions.readyBuildIds(pr.id)).length && !this.ctx.store.hasPrFolder(repo.site, pr.number)) continue;
      try {
        if (!(await this.stillGone(repo, pr))) {
          skipped++;
          why.push(`${repo.fullName}#${pr.number}: GitHub says it is open again; its builds stay`);
          continue;
        }
      } catch (err) {
        skipped++;
        why.push(`${repo.fullName}#${pr.number}: GitHub could not be asked (${(err as Error).message}); nothing was deleted`);
        this.ctx.log.warn({ repo: repo.fullName, pr: pr.number, err: (err as Error).message }, 'cleanup skipped: GitHub could not be asked');
        continue;
      }
      await withPr(this.ctx, repo.id, pr.number, async () => {
        await this.ctx.store.removePr(repo.site, pr.number);
        await this.ctx.db.orm.delete(builds).where(eq(builds.pullRequestId, pr.id));
      });
      removedPrs++;
      this.ctx.log.info({ repo: repo.fullName, pr: pr.number }, 'removed the builds of a closed pull request');
    }
    // A build's rows are written before its answer and its files become objects right after it: a row that new
    // may name an object about to appear, so it is left to the next cleanup.
    const rowsRecordedBefore = new Date(now.getTime() - ROWS_SETTLE_MS);
    const lists = await new Manifests(this.ctx.db, manifestListsDir(this.ctx.config.dataDir)).removeStrays(); // by the clock, as every manifest's hour is counted
    if (lists) this.ctx.log.info({ lists }, 'removed manifest lists no upload can name any more');
    const { bucket } = this.ctx.store;
    return { removedPrs, skipped, why, freed: bucket ? await bucket.collectGarbage(now) : await this.removeUnreferencedObjects({ rowsRecordedBefore }) };
  }

  /** Whether GitHub confirms the PR is still closed (or the app still uninstalled). Throws when it cannot be asked. */
  private async stillGone(repo: Repository, pr: PullRequest): Promise<boolean> {
    let octokit: Octokit;
    try {
      // Asked now, not taken from the account's remembered installation: a repository removed from an
      // installation that still exists has a working token, so only this lookup says it is gone.
      octokit = await octokitFor(this.ctx, repo, { askGitHub: true });
    } catch (err) {
      if ((err as { status?: number }).status === 403) return true; // not installed any more
      throw err;
    }
    const current = repo.uninstalledAt
      ? await only(this.ctx.db.orm.update(repositories).set({ installed: true, uninstalledAt: null }).where(eq(repositories.id, repo.id)).returning())
      : repo;
    const { facts } = await this.decisions.reconcile(current, pr.number, { event: 'cleanup' }, { octokit });
    if (facts.state === 'open') return false;
    return pr.state === 'closed';
  }

}
