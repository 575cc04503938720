import type { Logger } from 'pino';
import type { ApplicationFunction, Context, Probot } from 'probot';
import { SETTINGS_PATH, type GitHub, type Octokit } from './github.js';
import type { Metrics } from './metrics.js';
import type { Cause, Previews } from './previews.js';
import type { ArtifactPuller } from './pull-mode.js';
import type { Registry, Repository } from './registry.js';

export interface GithubAppDeps {
  registry: Registry;
  previews: Previews;
  github: GitHub;
  metrics: Metrics;
  puller: ArtifactPuller;
  log: Logger;
}

interface RepositoryPayload {
  id: number;
  full_name: string;
  owner?: { id: number; login: string } | null;
  private?: boolean;
}

interface PullRequestPayload {
  number: number;
  updated_at?: string;
  head: { sha: string };
}

/**
 * Probot handlers, in the order of the events in app.yml. A webhook says *that* something changed; it is
 * answered once the work is recorded. What it may do itself is only ever to hide (a revocation, from the
 * payload, at once); anything that can publish is a queued decision that reads GitHub's facts. No trust or
 * disk logic lives here.
 */
export function githubApp(deps: GithubAppDeps): ApplicationFunction {
  const { registry, previews, github, metrics } = deps;

  const count = (context: Context, outcome: 'applied' | 'ignored') =>
    metrics.webhookEvents.inc({ event: `${context.name}.${(context.payload as { action?: string }).action ?? ''}`, outcome });
  const causeOf = (context: Context): Cause => {
    const sender = (context.payload as { sender?: { id: number; login: string } }).sender;
    const action = (context.payload as { action?: string }).action;
    return { event: action ? `${context.name}.${action}` : context.name, actor: sender ? { id: sender.id, login: sender.login } : undefined };
  };
  const refOf = (repo: RepositoryPayload) => ({ id: repo.id, fullName: repo.full_name, ownerId: repo.owner?.id, private: repo.private });

  /** The repository row of the payload (by id; a rename is followed) and its installation remembered. */
  async function repositoryOf(context: Context): Promise<Repository | undefined> {
    const payload = context.payload as { repository?: RepositoryPayload; installation?: { id: number } };
    if (!payload.repository) return undefined;
    const repo = await registry.knownRepository(refOf(payload.repository));
    if (repo && payload.installation) {
      const account = await registry.accountOf(repo);
      if (account.installationId !== payload.installation.id) await registry.setInstallation(account.id, payload.installation.id);
    }
    return repo;
  }

  /** The PR of a pull_request event, when preview-gate holds anything of it (nothing to decide otherwise). */
  async function pullRequestOf(context: Context<'pull_request'>) {
    const repo = await repositoryOf(context);
    const pr = repo && (await registry.findPullRequest(repo.id, context.payload.pull_request.number));
    return repo && pr ? { repo, pr, payload: context.payload.pull_request as PullRequestPayload } : undefined;
  }

  const payloadTime = (pr: PullRequestPayload) => (pr.updated_at ? new Date(pr.updated_at) : undefined);

  /** Re-decides (queued) the open PRs of some repositories, optionally only those of one author. */
  async function decideOpenPrs(context: Context, repos: Repository[], authorGithubId?: number) {
    for (const { repo, pr } of await registry.openPullRequests(repos, authorGithubId)) await previews.decideLater(repo, pr.number, causeOf(context));
    count(context, 'applied');
  }

  /** The author left a team or the organization: their public PRs are hidden at once, then re-decided. */
  async function authorLeft(context: Context, org: { id: number; login: string }, member: { id: number; login: string }, where: string) {
    for (const { repo, pr } of await registry.openPullRequests(await registry.repositoriesOfAccount(org), member.id)) {
      await previews.revoke(repo, pr.number, { reason: `the author ${member.login} left ${where}` }, causeOf(context));
    }
    count(context, 'applied');
  }

  return (app: Probot) => {
    app.on(['installation.created', 'installation_repositories.added', 'installation.unsuspend'], async (context) => {
      const payload = context.payload as {
        installation: { id: number; account: { id: number; login: string } | null };
        repositories?: { id: number; full_name: string; private?: boolean }[];
        repositories_added?: { id: number; full_name: string; private?: boolean }[];
      };
      const owner = payload.installation.account;
      if (owner) await registry.setInstallation((await registry.ensureAccount(owner.login, owner.id)).id, payload.installation.id);
      for (const r of payload.repositories ?? payload.repositories_added ?? []) {
        const repo = await registry.resolveRepository({ id: r.id, fullName: r.full_name, ownerId: owner?.id, private: r.private });
        await registry.markInstalled(repo);
        for (const { pr } of await registry.openPullRequests([repo])) await previews.decideLater(repo, pr.number, causeOf(context));
      }
      count(context, 'applied');
    });

    app.on(['installation.deleted', 'installation.suspend', 'installation_repositories.removed'], async (context) => {
      const payload = context.payload as {
        action: string;
        installation: { account: { id: number; login: string } | null };
        repositories?: { id: number; full_name: string }[];
        repositories_removed?: { id: number; full_name: string }[];
      };
      const owner = payload.installation.account;
      const listed = payload.repositories ?? payload.repositories_removed;
      const repos = listed
        ? (await Promise.all(listed.map(async (r) => (await registry.findRepositoryById(r.id)) ?? (await registry.findRepository(r.full_name))))).filter((r) => r !== undefined)
        : owner
          ? await registry.repositoriesOfAccount(owner)
          : [];
      for (const repo of repos) await previews.hideRepository(repo, causeOf(context));
      if (payload.action !== 'removed' && owner) {
        for (const repo of repos) await registry.setInstallation(repo.accountId, null);
      }
      count(context, 'applied');
    });

    app.on('installation_target.renamed', async (context) => {
      const { account } = context.payload as { account: { id: number; login: string } };
      await registry.renameAccount(account.id, account.login);
      count(context, 'applied');
    });

    app.on(['repository.renamed', 'repository.transferred', 'repository.edited'], async (context) => {
      // repositoryOf follows the new name (same id); a repository that takes the old name later starts afresh.
      count(context, (await repositoryOf(context)) ? 'applied' : 'ignored');
    });

    app.on(['repository.deleted', 'repository.archived'], async (context) => {
      const repo = await repositoryOf(context);
      if (!repo) return count(context, 'ignored');
      await previews.hideRepository(repo, causeOf(context), `the repository was ${context.payload.action}`);
      count(context, 'applied');
    });

    app.on(['membership.added', 'membership.removed'], async (context) => {
      const { organization, member, team } = context.payload;
      if (!member) return count(context, 'ignored');
      if (context.payload.action === 'removed') return authorLeft(context, organization, member, `the team ${team.slug}`);
      // Any team counts: GitHub's membership API includes child teams, but the event names only the child.
      await decideOpenPrs(context, await registry.repositoriesOfAccount(organization), member.id);
    });

    app.on('organization.member_removed', async (context) => {
      const member = context.payload.membership.user;
      if (!member) return count(context, 'ignored');
      await authorLeft(context, context.payload.organization, member, `the organization ${context.payload.organization.login}`);
    });

    app.on('team', async (context) => {
      await decideOpenPrs(context, await registry.repositoriesOfAccount(context.payload.organization));
    });

    app.on('pull_request.labeled', async (context) => {
      const found = await pullRequestOf(context);
      const settings = found && previews.decisions.storedSettings(found.repo);
      if (!found || (settings && context.payload.label?.name !== settings.trustedLabel)) return count(context, 'ignored');
      if (settings && !settings.labelTrustsNewCommits) {
        await previews.decisions.bindLabel(found.repo, found.pr, found.payload.head.sha, payloadTime(found.payload));
      }
      await previews.decideLater(found.repo, found.pr.number, causeOf(context));
      count(context, 'applied');
    });

    app.on('pull_request.unlabeled', async (context) => {
      const found = await pullRequestOf(context);
      const settings = found && previews.decisions.storedSettings(found.repo);
      const label = context.payload.label?.name;
      // Without stored settings the removed label may be the trusted one: hide, and let GitHub's facts decide.
      if (!found || (settings && label !== settings.trustedLabel)) return count(context, 'ignored');
      await previews.revoke(found.repo, found.pr.number, { reason: `the '${label}' label was removed`, at: payloadTime(found.payload) }, causeOf(context));
      count(context, 'applied');
    });

    app.on('pull_request.synchronize', async (context) => {
      const found = await pullRequestOf(context);
      if (!found) return count(context, 'ignored');
      const settings = previews.decisions.storedSettings(found.repo);
      const head = found.payload.head.sha;
      if (settings && !settings.labelTrustsNewCommits && found.pr.labelSha && found.pr.labelSha !== head) {
        // The label vouched for the commit a maintainer reviewed, not for the ones pushed after it.
        const reason = `commit ${head.slice(0, 7)} was pushed after the '${settings.trustedLabel}' label was given at ${found.pr.labelSha.slice(0, 7)}`;
        await previews.revoke(found.repo, found.pr.number, { reason, at: payloadTime(found.payload) }, causeOf(context));
      } else {
        await previews.decideLater(found.repo, found.pr.number, causeOf(context));
      }
      count(context, 'applied');
    });

    app.on('pull_request.closed', async (context) => {
      const found = await pullRequestOf(context);
      if (!found) return count(context, 'ignored');
      await previews.revoke(found.repo, found.pr.number, { reason: 'the pull request was closed', at: payloadTime(found.payload), closed: true }, causeOf(context));
      count(context, 'applied');
    });

    app.on(['pull_request.reopened', 'pull_request.edited'], async (context) => {
      const found = await pullRequestOf(context);
      if (!found) return count(context, 'ignored');
      await previews.decideLater(found.repo, found.pr.number, causeOf(context));
      count(context, 'applied');
    });

    app.on('workflow_run.completed', async (context) => {
      const { workflow_run: run, repository } = context.payload;
      await repositoryOf(context); // learns the repository's id and installation
      const outcome = await deps.puller.onWorkflowRun(context.octokit as Octokit, repository.full_name, run);
      count(context, outcome.stored ? 'applied' : 'ignored');
    });

    app.on('push', async (context) => {
      const { ref, repository, commits } = context.payload;
      const touched = commits.some((c) => [...(c.added ?? []), ...(c.modified ?? []), ...(c.removed ?? [])].includes(SETTINGS_PATH));
      if (ref !== `refs/heads/${repository.default_branch}` || !touched) return count(context, 'ignored');
      // The org's `.github` repository holds the settings of every repository without its own file.
      const owner = repository.owner?.login ?? repository.full_name.split('/')[0]!;
      const orgWide = repository.name === '.github';
      github.forgetSettings(owner, orgWide ? undefined : repository.name);
      const repos = orgWide
        ? await registry.repositoriesOfAccount({ id: repository.owner?.id, login: owner })
        : [await repositoryOf(context)].filter((r) => r !== undefined);
      if (!repos.length) return count(context, 'ignored');
      // The stored copy judged revocations without GitHub; it is read again by the decisions queued now.
      for (const repo of repos) await registry.forgetStoredSettings(repo);
      await decideOpenPrs(context, repos);
    });
  };
}
