import express, { type Express } from 'express';
import { sql } from 'drizzle-orm';
import type { Logger } from 'pino';
import { createNodeMiddleware, type ApplicationFunction, type Probot } from 'probot';
import { errorHandler, unavailable } from './errors.js';
import { parsePr, uploadRouter, type UploadDeps } from './upload/route.js';

export const WEBHOOKS_PATH = '/api/github/webhooks';

export interface ServerDeps extends UploadDeps {
  log: Logger;
  probot?: Probot;
  appFn?: ApplicationFunction;
  /** Served instead of the webhook handler while the GitHub App is not registered (Probot's setup flow). */
  setupHandler?: (req: express.Request, res: express.Response) => Promise<boolean>;
}

/** The Express app: Probot's webhook middleware first (it needs the raw body), then our routes. */
export async function createServer(deps: ServerDeps): Promise<Express> {
  const app = express();
  app.disable('x-powered-by');
  app.set('trust proxy', 'loopback');

  if (deps.probot && deps.appFn) {
    // Before any body parser: a parsed body breaks Probot's signature check.
    app.use(await createNodeMiddleware(deps.appFn, { probot: deps.probot, webhooksPath: WEBHOOKS_PATH }));
  }

  app.get('/health', async (_req, res) => {
    try {
      deps.registry.db.get(sql`select 1`);
      await deps.store.check();
      res.json({ status: 'ok', database: 'ok', builds: 'ok', github: deps.github ? 'configured' : 'setup required' });
    } catch (err) {
      deps.log.error({ err }, 'health check failed');
      res.status(503).json({ status: 'unavailable', error: 'The database or the builds directory is not usable.' });
    }
  });

  app.get('/metrics', async (_req, res) => {
    res.type(deps.metrics.registry.contentType).send(await deps.metrics.registry.metrics());
  });

  app.get('/can-have-public-preview/:owner/:repo/:pr', async (req, res) => {
    const pr = parsePr(req.params.pr);
    if (!deps.github) throw unavailable('The GitHub App is not configured yet; the operator must finish its setup.');
    const { octokit } = await deps.github.forRepository(req.params.owner, req.params.repo);
    const facts = await deps.github.prFacts(octokit, req.params.owner, req.params.repo, pr);
    res.json({ canHavePublicPreview: facts.decision.trusted, reason: facts.decision.reason });
  });

  app.use(uploadRouter(deps));

  if (deps.setupHandler) {
    const setup = deps.setupHandler;
    app.use(async (req, res, next) => {
      if (!(await setup(req, res))) next();
    });
  }

  app.use((_req, res) => {
    res.status(404).json({ error: 'There is nothing at this address.' });
  });
  app.use(errorHandler(deps.log));
  return app;
}
