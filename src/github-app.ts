import { and, eq, sql } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { ApplicationFunction, Context, Probot } from 'probot';
import { accounts, pullRequests, repositories, users } from './db/schema.js';
import { isNotFound, SETTINGS_PATH, type GitHub, type Octokit } from './github.js';
import type { Metrics } from './metrics.js';
import type { Cause, Previews } from './previews.js';
import type { ArtifactPuller } from './pull-mode.js';
import type { Registry, Repository } from './registry.js';
import type { RepoSettings } from './trust.js';

export interface GithubAppDeps {
  registry: Registry;
  previews: Previews;
  github: GitHub;
  metrics: Metrics;
  puller: ArtifactPuller;
  log: Logger;
}

type PullRequestEvent = Context<'pull_request'>;

/**
 * Probot handlers, in the order of the events in app.yml. Each maps one event to reconcile() calls; no
 * trust or disk logic lives here. A handler that throws makes Probot answer 500, so GitHub redelivers.
 */
export function githubApp(deps: GithubAppDeps): ApplicationFunction {
  const { registry, previews, github, metrics } = deps;
  const db = registry.db;

  const count = (context: Context, outcome: 'applied' | 'ignored') =>
    metrics.webhookEvents.inc({ event: `${context.name}.${(context.payload as { action?: string }).action ?? ''}`, outcome });
  const actorOf = (context: Context): Cause['actor'] => {
    const sender = (context.payload as { sender?: { id: number; login: string } }).sender;
    return sender ? { id: sender.id, login: sender.login } : undefined;
  };

  /** Applies the PR object of a pull_request event (its labels are those after the event). */
  async function fromPayload(context: PullRequestEvent, settings?: RepoSettings) {
    const repo = registry.findRepository(context.payload.repository.full_name);
    if (!repo) return count(context, 'ignored');
    const { owner, repo: name } = context.repo();
    const facts = await github.factsFrom(context.octokit, owner, name, context.payload.pull_request, settings);
    await previews.applyAndNotify(context.octokit, repo, facts, { event: `pull_request.${context.payload.action}`, actor: actorOf(context) });
    count(context, 'applied');
  }

  /** Reconciles open PRs that have builds, in the given repositories, optionally only those of one author. */
  async function reconcileOpenPrs(context: Context, repos: Repository[], authorGithubId?: number) {
    for (const repo of repos) {
      const rows = db
        .select({ number: pullRequests.number })
        .from(pullRequests)
        .leftJoin(users, eq(pullRequests.authorUserId, users.id))
        .where(
          and(
            eq(pullRequests.repositoryId, repo.id),
            eq(pullRequests.state, 'open'),
            authorGithubId === undefined ? undefined : and(eq(users.provider, 'github'), eq(users.providerId, String(authorGithubId))),
          ),
        )
        .all();
      for (const { number } of rows) {
        await previews.reconcile(repo, number, { event: context.name, actor: actorOf(context) }, context.octokit as Octokit);
      }
    }
    count(context, 'applied');
  }

  const reposOfAccount = (login: string): Repository[] =>
    db
      .select({ repo: repositories })
      .from(repositories)
      .innerJoin(accounts, eq(repositories.accountId, accounts.id))
      .where(and(sql`lower(${accounts.login}) = ${login.toLowerCase()}`, eq(repositories.installed, true)))
      .all()
      .map((r) => r.repo);

  return (app: Probot) => {
    app.on(['installation.created', 'installation_repositories.added'], async (context) => {
      const payload = context.payload as { repositories?: { full_name: string }[]; repositories_added?: { full_name: string }[] };
      for (const { full_name } of payload.repositories ?? payload.repositories_added ?? []) {
        const repo = await registry.ensureRepository(full_name);
        db.update(repositories).set({ installed: true, uninstalledAt: null }).where(eq(repositories.id, repo.id)).run();
      }
      count(context, 'applied');
    });

    app.on(['installation.deleted', 'installation_repositories.removed'], async (context) => {
      const payload = context.payload as { repositories?: { full_name: string }[]; repositories_removed?: { full_name: string }[] };
      for (const { full_name } of payload.repositories ?? payload.repositories_removed ?? []) {
        const repo = registry.findRepository(full_name);
        if (repo) await previews.hideRepository(repo, { event: context.name, actor: actorOf(context) });
      }
      count(context, 'applied');
    });

    app.on(['membership.added', 'membership.removed'], async (context) => {
      // Any team counts: GitHub's membership API includes child teams, but the event names only the child.
      await reconcileOpenPrs(context, reposOfAccount(context.payload.organization.login), context.payload.member?.id);
    });

    app.on('organization.member_removed', async (context) => {
      const member = context.payload.membership.user;
      if (!member) return count(context, 'ignored');
      await reconcileOpenPrs(context, reposOfAccount(context.payload.organization.login), member.id);
    });

    app.on(['team.deleted', 'team.edited'], async (context) => {
      if (context.payload.action === 'edited' && !('name' in (context.payload.changes ?? {}))) return count(context, 'ignored');
      await reconcileOpenPrs(context, reposOfAccount(context.payload.organization.login));
    });

    app.on(['pull_request.labeled', 'pull_request.unlabeled'], async (context) => {
      const repo = registry.findRepository(context.payload.repository.full_name);
      if (!repo) return count(context, 'ignored');
      const { owner, repo: name } = context.repo();
      const settings = await github.settings(context.octokit, owner, name);
      if (context.payload.label?.name !== settings.trustedLabel) return count(context, 'ignored');
      await fromPayload(context, settings);
    });

    app.on(['pull_request.closed', 'pull_request.reopened'], (context) => fromPayload(context));

    app.on('pull_request.synchronize', async (context) => {
      const repo = registry.findRepository(context.payload.repository.full_name);
      if (!repo) return count(context, 'ignored');
      const { owner, repo: name } = context.repo();
      const settings = await github.settings(context.octokit, owner, name);
      const pr = context.payload.pull_request;
      if (settings.labelTrustsNewCommits || !pr.labels.some((l) => l.name === settings.trustedLabel)) {
        return fromPayload(context, settings);
      }
      // The label vouched for the commits a maintainer reviewed, not for the ones pushed after it.
      try {
        await context.octokit.rest.issues.removeLabel({ owner, repo: name, issue_number: pr.number, name: settings.trustedLabel });
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
      const labels = pr.labels.filter((l) => l.name !== settings.trustedLabel);
      const facts = await github.factsFrom(context.octokit, owner, name, { ...pr, labels }, settings);
      if (!facts.decision.trusted) {
        facts.decision.reason = `new commits were pushed after the '${settings.trustedLabel}' label was added, so the label was removed until a maintainer reviews them`;
      }
      await previews.applyAndNotify(context.octokit, repo, facts, { event: 'pull_request.synchronize', actor: actorOf(context) });
      count(context, 'applied');
    });

    app.on('workflow_run.completed', async (context) => {
      const { workflow_run: run, repository } = context.payload;
      const outcome = await deps.puller.onWorkflowRun(context.octokit as Octokit, repository.full_name, run);
      count(context, outcome.stored ? 'applied' : 'ignored');
    });

    app.on('push', async (context) => {
      const { ref, repository, commits } = context.payload;
      const touched = commits.some((c) => [...(c.added ?? []), ...(c.modified ?? []), ...(c.removed ?? [])].includes(SETTINGS_PATH));
      if (ref !== `refs/heads/${repository.default_branch}` || !touched) return count(context, 'ignored');
      // The org's `.github` repository holds the settings of every repository without its own file.
      const owner = repository.owner?.login ?? repository.full_name.split('/')[0]!;
      github.forgetSettings(owner, repository.name === '.github' ? undefined : repository.name);
      const repo = registry.findRepository(repository.full_name);
      if (!repo) return count(context, 'ignored');
      await reconcileOpenPrs(context, [repo]);
    });
  };
}
