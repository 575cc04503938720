import type { PrLocks } from '../pr-lock.js';
import type { Logger } from 'pino';
import type { BuildStore } from '../builds/store.js';
import type { Config } from '../config.js';
import type { Database } from '../db/database.js';
import type { builds } from '../db/tables.js';
import { unavailable } from '../errors.js';
import type { GitHub, Octokit } from '../github.js';
import type { KeyedLock, SharedLock } from '../lock.js';
import type { Metrics } from '../metrics.js';
import type { Notifier } from '../notify.js';
import type { WorkQueue } from '../queue.js';
import type { Replica } from '../replica.js';
import type { Registry, Repository } from '../registry.js';

export type Build = typeof builds.$inferSelect;

export interface Cause {
  /** `upload`, `sweep`, or the webhook event (`pull_request.labeled`, ...). */
  event: string;
  /** Who caused it, as a GitHub numeric user id and login. */
  actor?: { id: number; login: string };
}

/** What every part of the previews shares: the stores, GitHub, the queue and the per-PR lock. */
export interface PreviewsContext {
  db: Database;
  registry: Registry;
  store: BuildStore;
  github: GitHub | undefined;
  notifier: Notifier;
  config: Config;
  metrics: Metrics;
  log: Logger;
  queue: WorkQueue;
  /** This process among the replicas: the owner of its upload claims and queue leases. */
  replica: Replica;
  /** The same across replicas: a lease row per PR in the database (src/pr-lock.ts). */
  prLocks: PrLocks;
  /** All changes to one PR run under its key, so an upload, a webhook and the sweep never interleave renames. */
  lock: KeyedLock;
  /** Held shared by every PR operation of a repository, exclusively while its site folder moves. */
  repoLock: SharedLock;
}

/** Runs `task` as the one operation on this PR now (and while the repository's site folder stays put). */
export function withPr<T>(ctx: PreviewsContext, repositoryId: number, number: number, task: () => Promise<T>): Promise<T> {
  const key = prKey(repositoryId, number);
  return ctx.repoLock.shared(`repo:${repositoryId}`, () =>
    ctx.lock.run(key, () =>
      ctx.prLocks.run(key, async () => {
        // Logged while the lock is held (the replica simulation checks that no two replicas held one PR at once).
        ctx.log.debug({ key, replica: ctx.replica.id }, 'pr work started');
        try {
          return await task();
        } finally {
          ctx.log.debug({ key, replica: ctx.replica.id }, 'pr work finished');
        }
      }),
    ),
  );
}

/** Runs `task` while no operation on any PR of the repository runs (moving its site folder). */
export function withRepository<T>(ctx: PreviewsContext, repositoryId: number, task: () => Promise<T>): Promise<T> {
  return ctx.repoLock.exclusive(`repo:${repositoryId}`, task);
}

export const prKey = (repositoryId: number, number: number) => `pr:${repositoryId}#${number}`;

export const ownerAndName = (repo: Repository) => repo.fullName.split('/') as [string, string];

export function requireGithub(ctx: PreviewsContext): GitHub {
  if (!ctx.github) throw unavailable('The GitHub App is not configured yet; the operator must finish its setup.');
  return ctx.github;
}

/**
 * The installation's Octokit for a repository row: by the account's installation id when known (no name
 * involved), otherwise found by name and remembered. Uploads ask GitHub each time (`askGitHub`): an app
 * uninstalled without a delivery must answer 403, not fail on a stale installation.
 */
export async function octokitFor(ctx: PreviewsContext, repo: Repository, options: { askGitHub?: boolean } = {}): Promise<Octokit> {
  const github = requireGithub(ctx);
  const account = await ctx.registry.accountOf(repo);
  if (account.installationId && !options.askGitHub) return github.forInstallation(account.installationId);
  const [owner, name] = ownerAndName(repo);
  const { octokit, installationId } = await github.forRepository(owner, name);
  await ctx.registry.setInstallation(account.id, installationId);
  return octokit;
}
