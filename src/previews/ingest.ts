import { and, count, eq, isNull, sum } from '../db/orm.js';
import fs from 'node:fs';
import path from 'node:path';
import type { BuildTarget, ExtractResult } from '../builds/extract.js';
import type { Orm } from '../db/database.js';
import { first, only } from '../db/query.js';
import { builds, pullRequests, repositories, uploads } from '../db/tables.js';
import { conflict, HttpError, tooLarge } from '../errors.js';
import type { PrFacts } from '../github.js';
import type { PullRequest, Repository } from '../registry.js';
import { withPr, type Build, type PreviewsContext } from './context.js';
import type { Decisions } from './decide.js';
import { recordObjects } from './object-rows.js';
import { encodeContents, pageReferences, recordContents, recordPageReferences } from './changed-pages.js';

/** Seconds a client is asked to wait before asking again about an upload of the same SHA still being stored. */
const CLAIM_RETRY_AFTER_S = 2;

/** Storing one build of a PR: quota → claim of the SHA → staging → one rename → feedback queued. */
export class Ingest {
  constructor(
    private readonly ctx: PreviewsContext,
    private readonly decisions: Decisions,
  ) {}

  /**
   * Stores one build of a PR, from an upload or a pulled artifact. `authorized` is GitHub's answer, which an
   * upload asks for while its body streams into staging: nothing is published before it said yes. On any
   * failure nothing stays: the claim is released, staging removed, a PR row made for nothing deleted, before
   * this returns. A SHA already stored (409) still applies the current decision, so a retried upload brings
   * the PR in line with GitHub.
   */
  async ingestBuild(
    repo: Repository,
    number: number,
    authorize: () => Promise<{ repo: Repository; facts: PrFacts }>,
    sha: string,
    source: 'upload' | 'artifact',
    extract: (target: BuildTarget) => Promise<ExtractResult>,
  ): Promise<{ pr: PullRequest; build: Build }> {
    const { config } = this.ctx;
    // The quota counts what is stored: a build whose files the repository holds already costs (almost) nothing.
    const accountRoom = config.maxAccountBytes - (await this.accountBytes(repo));
    const quotaMessage = `The account ${repo.fullName.split('/')[0]} would store more than its ${config.maxAccountBytes} bytes of previews (MAX_ACCOUNT_BYTES); builds of closed PRs are removed after ${config.cleanupAfterHours} h.`;
    if (accountRoom <= 0) throw tooLarge(quotaMessage);
    const limits = { ...config, maxNewBytes: accountRoom, newBytesMessage: quotaMessage };
    let claim: { buildId: number; prId: number };
    try {
      claim = await this.claimBuild(repo, number, sha);
    } catch (err) {
      if (err instanceof HttpError && err.status === 409) {
        const answer = await authorize(); // GitHub's refusal, if any, is the answer; otherwise the decision applies
        await this.decisions.apply(answer.repo, answer.facts, { event: 'upload' }, sha);
      }
      throw err;
    }
    // The claim is this replica's while the upload runs: renewed, so that no other replica's start removes it.
    const renewClaim = setInterval(() => void this.renewClaim(claim.buildId), Math.max(50, Math.floor(this.ctx.replica.leaseMs / 3))).unref();
    // GitHub is asked now, while the body streams into staging (the limits above needed no GitHub).
    const authorized = authorize();
    authorized.catch(() => undefined);
    let staging: string | undefined;
    try {
      staging = await this.ctx.store.createStaging();
      const stopTimer = this.ctx.metrics.extractionSeconds.startTimer();
      const objects = this.ctx.store.objects.forRepository(repo.id);
      const { bucket } = this.ctx.store;
      const stored = bucket ? await bucket.storedSizes(repo.id) : undefined;
      const size = await extract({ dir: staging, limits, objects, stored });
      stopTimer();
      const { repo: current, facts } = await authorized;
      // Only a build GitHub said yes to adds objects; a refused one leaves nothing behind.
      const put = bucket ? await this.putFresh(repo.id, size) : undefined;
      const { pr, build, changed } = await this.storeBuild(current, facts, claim.buildId, staging, size, sha, put);
      if (!bucket) {
        this.adoptAfterAnswer(current, pr.number, build.sha7, staging, size.fresh);
        staging = undefined; // its files are the build's now
      }
      this.ctx.metrics.uploadedBytes.inc(size.bytes);
      await this.ctx.db.transaction(async (tx) => {
        await tx
          .insert(uploads)
          .values({ accountId: current.accountId, repositoryId: current.id, pullRequestNumber: pr.number, sha, bytes: size.bytes, files: size.files, source, authorUserId: pr.authorUserId });
        // One feedback row per upload: every build when the visibility changed, otherwise the new one.
        await this.decisions.enqueueFeedback(current, pr, changed ? await this.decisions.readyBuildIds(pr.id, tx) : [build.id]);
      });
      return { pr, build };
    } catch (err) {
      // GitHub's answer is waited for even when the body failed first: no request outlives the upload.
      await authorized.catch(() => undefined);
      await this.releaseClaim(claim.buildId, claim.prId);
      throw err;
    } finally {
      clearInterval(renewClaim);
      // Removed before returning, so a client that sees the answer never sees a leftover.
      if (staging) await this.ctx.store.discard(staging);
    }
  }

  /**
   * Makes the new files of a stored build objects (one link each), right after the answer is written: a link
   * per new file is not on the upload's critical path. It runs under the PR's lock, so no rename (a visibility
   * flip) can happen in the middle; the build's folder is looked up then. A crash before it only leaves those
   * files as their own copies (their rows go at the next cleanup).
   */
  private adoptAfterAnswer(repo: Repository, number: number, sha7: string, staging: string, fresh: ExtractResult['fresh']): void {
    if (!fresh.length) return;
    setImmediate(() => {
      void withPr(this.ctx, repo.id, number, async () => {
        try {
          const pr = await this.ctx.registry.findPullRequest(repo.id, number);
          if (!pr) return;
          const dir = this.ctx.store.buildDir((await this.decisions.currentRepo(repo)).site, number, pr.visibility, sha7);
          if (!fs.existsSync(dir)) return; // removed meanwhile (cleanup): nothing to adopt
          this.ctx.store.objects.forRepository(repo.id).adoptAll(fresh.map((f) => ({ path: path.join(dir, path.relative(staging, f.path)), hash: f.hash })));
        } catch (err) {
          this.ctx.log.warn({ repo: repo.fullName, pr: number, sha: sha7, err: (err as Error).message }, 'the files of a stored build could not all become objects; they stay as they are');
        }
      });
    });
  }

  /** `STORAGE=s3`: the build's new contents into the bucket, each once, before any row names them. */
  private async putFresh(repositoryId: number, size: ExtractResult): Promise<{ fresh: Set<string>; foundWithoutRow: string[] }> {
    const first = new Map<string, string>();
    for (const file of size.fresh) if (!first.has(file.hash)) first.set(file.hash, file.path);
    const report = await this.ctx.store.bucket!.putFresh(repositoryId, [...first].map(([hash, path]) => ({ hash, path })), size.hashes);
    this.ctx.metrics.objectsPut.inc(report.stored);
    return { fresh: new Set(first.keys()), foundWithoutRow: report.foundWithoutRow };
  }

  /**
   * Claims `sha7` for this PR before the body is read: of N concurrent uploads of one SHA exactly one gets
   * the claim (a unique index decides); the others get 409 without extracting anything. Only stored builds
   * count against MAX_PR_BUILDS. The PR row is made hidden if GitHub was not asked about it yet.
   */
  private claimBuild(repo: Repository, number: number, sha: string): Promise<{ buildId: number; prId: number }> {
    const { db } = this.ctx;
    return db.transaction(async (tx) => {
      const pr = await this.decisions.ensurePr(repo, number, 'open', null);
      await db.lockPullRequest(tx, pr.id);
      const sha7 = sha.slice(0, 7);
      const { n } = await only(
        tx
          .select({ n: count() })
          .from(builds)
          .where(and(eq(builds.pullRequestId, pr.id), eq(builds.status, 'ready'))),
      );
      if (n >= this.ctx.config.maxPrBuilds) {
        throw tooLarge(
          `Pull request #${number} already holds ${n} builds, the limit (MAX_PR_BUILDS); they are removed ${this.ctx.config.cleanupAfterHours} h after it closes.`,
        );
      }
      const claimed = await first(
        tx
          .insert(builds)
          .values({ pullRequestId: pr.id, sha, sha7, status: 'pending', claimOwner: this.ctx.replica.id, claimExpiresAt: this.ctx.replica.leaseUntil() })
          .onConflictDoNothing()
          .returning({ id: builds.id }),
      );
      if (claimed) return { buildId: claimed.id, prId: pr.id };
      const held = await only(tx.select().from(builds).where(and(eq(builds.pullRequestId, pr.id), eq(builds.sha7, sha7))).limit(1));
      if (held.status === 'ready') throw conflict(`A build of ${sha7} already exists for pull request #${number}.`);
      if (!(await this.claimAbandoned(held, tx))) {
        // Not stored yet: the client asks again (the CLI waits on Retry-After) rather than take it as stored.
        throw new HttpError(409, `Another upload of ${sha7} is being stored for pull request #${number}; try again shortly.`, {
          headers: { 'retry-after': String(CLAIM_RETRY_AFTER_S) },
        });
      }
      // The uploader died (its replica was killed) or its lease ended: this upload takes the claim over now.
      await tx.update(builds).set({ claimOwner: this.ctx.replica.id, claimExpiresAt: this.ctx.replica.leaseUntil() }).where(eq(builds.id, held.id));
      this.ctx.log.info({ repo: repo.fullName, pr: number, sha: sha7, from: held.claimOwner }, 'an abandoned upload claim was taken over');
      return { buildId: held.id, prId: pr.id };
    });
  }

  /** Whether a pending claim's uploader can no longer finish it: its lease ended or its replica is dead. */
  private async claimAbandoned(held: Build, tx: Orm): Promise<boolean> {
    if (held.claimExpiresAt === null || held.claimExpiresAt.getTime() < Date.now()) return true;
    return held.claimOwner === null || !(await this.ctx.replica.isAlive(held.claimOwner, tx));
  }

  private async renewClaim(buildId: number): Promise<void> {
    try {
      await this.ctx.db.orm
        .update(builds)
        .set({ claimExpiresAt: this.ctx.replica.leaseUntil() })
        // Only while the claim is still this replica's: another may have taken it over (this one looked dead).
        .where(and(eq(builds.id, buildId), eq(builds.status, 'pending'), eq(builds.claimOwner, this.ctx.replica.id)));
    } catch {
      // The database is closing; the upload fails on its own.
    }
  }

  /** Drops the claim, and the PR row when this claim made it and GitHub never decided anything about it. */
  private releaseClaim(buildId: number, prId: number): Promise<void> {
    const { db } = this.ctx;
    return db.transaction(async (tx) => {
      await db.lockPullRequest(tx, prId);
      // A claim another replica took over (this one looked dead) is theirs now: its failure is not ours to undo.
      await tx.delete(builds).where(and(eq(builds.id, buildId), eq(builds.status, 'pending'), eq(builds.claimOwner, this.ctx.replica.id)));
      const pr = await first(tx.select().from(pullRequests).where(eq(pullRequests.id, prId)).limit(1));
      const { n: left } = await only(tx.select({ n: count() }).from(builds).where(eq(builds.pullRequestId, prId)));
      if (pr && pr.factsAt === null && left === 0) {
        await tx.delete(pullRequests).where(and(eq(pullRequests.id, prId), isNull(pullRequests.factsAt)));
      }
    });
  }

  /** Applies the upload's facts, then moves the staging folder into the PR folder with one rename. */
  private async storeBuild(
    repo: Repository,
    facts: PrFacts,
    buildId: number,
    staging: string,
    size: ExtractResult,
    sha: string,
    put?: { fresh: Set<string>; foundWithoutRow: string[] },
  ): Promise<{ pr: PullRequest; build: Build; changed: boolean }> {
    return withPr(this.ctx, repo.id, facts.number, async () => {
      const { pr, changed } = await this.decisions.applyLocked(repo, facts, { event: 'upload' }, sha);
      const { db } = this.ctx;
      const build = await only(db.orm.select().from(builds).where(eq(builds.id, buildId)).limit(1));
      const contents = encodeContents(size.contents, await pageReferences(db.orm, repo.id, size.contents, size.pageReferences));
      const { bucket } = this.ctx.store;
      // In a bucket, the transaction below is the publication: no folder is renamed.
      if (!bucket) await this.ctx.store.publish(staging, (await this.decisions.currentRepo(repo)).site, facts.number, pr.visibility, build.sha7);
      const ready = await db.transaction(async (tx) => {
        await db.lockPullRequest(tx, pr.id);
        if (bucket) await bucket.record(tx, buildId, repo.id, size, put!);
        else await recordObjects(tx, repo.id, size.hashes);
        await recordPageReferences(tx, repo.id, size.pageReferences);
        await recordContents(tx, buildId, contents);
        return only(
          tx
            .update(builds)
            .set({ status: 'ready', files: size.files, bytes: size.bytes, contentAddressed: true, claimExpiresAt: null })
            .where(eq(builds.id, buildId))
            .returning(),
        );
      });
      return { pr, build: ready, changed };
    });
  }

  /** Whether a build of `sha` (its 7-character prefix) is stored, or being stored by a live upload, for this PR. */
  async hasBuild(repo: Repository, number: number, sha: string): Promise<boolean> {
    const row = await first(
      this.ctx.db.orm
        .select({ build: builds })
        .from(builds)
        .innerJoin(pullRequests, eq(builds.pullRequestId, pullRequests.id))
        .where(and(eq(pullRequests.repositoryId, repo.id), eq(pullRequests.number, number), eq(builds.sha7, sha.slice(0, 7))))
        .limit(1),
    );
    // An abandoned claim is taken over by this upload: its files must come, not be assumed stored.
    return row !== undefined && (row.build.status === 'ready' || !(await this.claimAbandoned(row.build, this.ctx.db.orm)));
  }

  /** Bytes on disk: every object, and the builds stored before objects existed. */
  storedBytes(): Promise<number> {
    return this.ctx.db.transaction(async (tx) => {
      const inObjects = await first(tx.select({ bytes: sum(repositories.objectBytes) }).from(repositories));
      const ownCopies = await first(
        tx
          .select({ bytes: sum(builds.bytes) })
          .from(builds)
          .where(and(eq(builds.status, 'ready'), eq(builds.contentAddressed, false))),
      );
      return Number(inObjects?.bytes ?? 0) + Number(ownCopies?.bytes ?? 0);
    });
  }

  /**
   * Bytes on disk of the account that owns `repo`: its repositories' objects, plus builds stored before
   * objects existed (their own copies).
   */
  accountBytes(repo: Repository): Promise<number> {
    return this.ctx.db.transaction(async (tx: Orm) => {
      const inObjects = await first(tx.select({ bytes: sum(repositories.objectBytes) }).from(repositories).where(eq(repositories.accountId, repo.accountId)));
      const ownCopies = await first(
        tx
          .select({ bytes: sum(builds.bytes) })
          .from(builds)
          .innerJoin(pullRequests, eq(builds.pullRequestId, pullRequests.id))
          .innerJoin(repositories, eq(pullRequests.repositoryId, repositories.id))
          .where(and(eq(repositories.accountId, repo.accountId), eq(builds.contentAddressed, false))),
      );
      return Number(inObjects?.bytes ?? 0) + Number(ownCopies?.bytes ?? 0);
    });
  }
}
