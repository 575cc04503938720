import type { Logger } from 'pino';
import type { ApplicationFunction, Context } from 'probot';
import type { Metrics } from './metrics.js';
import type { Previews } from './previews.js';
import type { Registry } from './registry.js';

export interface GithubAppDeps {
  registry: Registry;
  previews: Previews;
  metrics: Metrics;
  log: Logger;
}

/** Probot handlers: each maps one webhook event to reconcile() calls; no trust or disk logic here. */
export function githubApp(deps: GithubAppDeps): ApplicationFunction {
  return (app) => {
    app.on(['pull_request.labeled', 'pull_request.unlabeled'], async (context: Context<'pull_request.labeled' | 'pull_request.unlabeled'>) => {
      const { repository, pull_request: pr, sender } = context.payload;
      const repo = deps.registry.findRepository(repository.full_name);
      if (!repo || !deps.registry.findPullRequest(repo.id, pr.number)) {
        deps.metrics.webhookEvents.inc({ event: context.name, outcome: 'ignored' });
        return;
      }
      await deps.previews.reconcile(repo, pr.number, {
        event: `pull_request.${context.payload.action}`,
        actor: { id: sender.id, login: sender.login },
      });
      deps.metrics.webhookEvents.inc({ event: context.name, outcome: 'applied' });
    });
  };
}
