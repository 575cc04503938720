import crypto from 'node:crypto';
import express, { type Express } from 'express';
import type { Logger } from 'pino';
import { createNodeMiddleware, type ApplicationFunction, type Probot } from 'probot';
import { errorHandler, unavailable } from './errors.js';
import type { GitHubUserApi } from './dashboard/github-user.js';
import { dashboardRouter, hiddenPreviewCheck, RoleCache } from './dashboard/routes.js';
import type { Sessions } from './dashboard/sessions.js';
import type { SweepHealth } from './metrics.js';
import { PublicPreviewCheck } from './public-preview-check.js';
import { runInRequest, WELL_FORMED_REQUEST_ID } from './request-context.js';
import { S3Objects } from './storage/s3-objects.js';
import { s3ServingRouter } from './storage/s3-serving.js';
import { authenticate, parsePr, uploadRouter, type UploadDeps } from './upload/route.js';

export const WEBHOOKS_PATH = '/api/github/webhooks';

export interface ServerDeps extends UploadDeps {
  log: Logger;
  probot?: Probot;
  appFn?: ApplicationFunction;
  /** Sign-in, the dashboard and hidden-preview grants (only once the GitHub App is configured). */
  dashboard?: { sessions: Sessions; api: GitHubUserApi };
  /** Served instead of the webhook handler while the GitHub App is not registered (Probot's setup flow). */
  setupHandler?: (req: express.Request, res: express.Response) => Promise<boolean>;
  /** The sweeps' recent outcomes: /health says "degraded" when they keep failing. */
  sweepHealth?: SweepHealth;
  /** STORAGE=s3: the bucket previews are served from (made from the settings when not given). */
  bucket?: S3Objects;
}

/** The Express app: Probot's webhook middleware first (it needs the raw body), then our routes. */
export async function createServer(deps: ServerDeps): Promise<Express> {
  const app = express();
  app.disable('x-powered-by');
  app.set('trust proxy', 'loopback');
  // `/METRICS` or `/metrics/` is not `/metrics`: a path is answered only as it is written (the routers below
  // are created with the same options: a Router does not inherit the app's).
  app.set('case sensitive routing', true);
  app.set('strict routing', true);
  app.use(accessLog(deps));

  if (deps.probot && deps.appFn) {
    app.post(WEBHOOKS_PATH, webhookBodyLimit(deps.log, deps.config.webhookSecret));
    // Before any body parser: a parsed body breaks Probot's signature check (the limit above hands it the raw bytes).
    app.use(await createNodeMiddleware(deps.appFn, { probot: deps.probot, webhooksPath: WEBHOOKS_PATH }));
  }

  // `/health/` as well: load balancers' checks are often configured with the slash.
  app.get(['/health', '/health/'], async (_req, res) => {
    try {
      await deps.registry.db.ping();
      await deps.store.check();
      const sweep = deps.sweepHealth?.problem();
      // Still 200: the server answers uploads and previews; the operator is told the sweep is not working.
      res.json({ status: sweep ? 'degraded' : 'ok', database: 'ok', builds: 'ok', ...(deps.store.bucket ? { bucket: 'ok' } : {}), github: deps.github ? 'configured' : 'setup required', ...(sweep ? { sweep } : {}) });
    } catch (err) {
      deps.log.error({ err }, 'health check failed');
      res.status(503).json({ status: 'unavailable', error: deps.store.bucket ? 'The database, the builds directory or the bucket is not usable.' : 'The database or the builds directory is not usable.' });
    }
  });

  app.get('/metrics', async (_req, res) => {
    res.type(deps.metrics.registry.contentType).send(await deps.metrics.registry.metrics());
  });

  const check = new PublicPreviewCheck(deps.registry, deps.previews, (token, pr) => authenticate(deps, token, pr));
  app.get('/can-have-public-preview/:owner/:repo/:pr', async (req, res) => {
    const pr = parsePr(req.params.pr);
    if (!deps.github) throw unavailable('The GitHub App is not configured yet; the operator must finish its setup.');
    res.json(await check.answer(req.params.owner, req.params.repo, pr, req.headers.authorization));
  });

  app.use(uploadRouter(deps));
  const dashboard = deps.dashboard && { ...deps.dashboard, config: deps.config, db: deps.db, registry: deps.registry, previews: deps.previews, log: deps.log };
  // One role cache for the dashboard and the hidden previews: a user's roles are asked once per 5 minutes.
  const roles = dashboard && new RoleCache(dashboard.api, dashboard.sessions, deps.registry);
  if (deps.config.storage === 's3' && deps.config.s3) {
    const bucket = deps.bucket ?? S3Objects.fromSettings(deps.config.s3);
    app.use(s3ServingRouter({ config: deps.config, db: deps.db, bucket, hidden: dashboard && roles && hiddenPreviewCheck(dashboard, roles) }));
  }
  if (dashboard) app.use(dashboardRouter(dashboard, roles));

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

/** The route template of a request (never its raw URL: bounded labels, no tokens or names in metrics). */
function routeOf(req: express.Request, status: number): string {
  if (req.route) {
    // A route of several paths (['/health', '/health/']) is named by its first.
    const path: unknown = req.route.path;
    return `${req.baseUrl}${String(Array.isArray(path) ? path[0] : path)}`;
  }
  if (req.path === WEBHOOKS_PATH) return WEBHOOKS_PATH;
  if (req.path === '/probot' || req.path.startsWith('/probot/')) return '/probot';
  return status === 404 ? 'unmatched' : 'other';
}

/**
 * One log line per answered request (client address, method, route, status, duration, request id) and the
 * request-duration histogram. The request id (X-Request-Id when well formed, else a new one) is sent back and
 * follows the work the request causes into every log line (request-context.ts).
 */
function accessLog(deps: ServerDeps): express.RequestHandler {
  return (req, res, next) => {
    const given = req.get('x-request-id');
    const requestId = given && WELL_FORMED_REQUEST_ID.test(given) ? given : crypto.randomUUID();
    res.set('X-Request-Id', requestId);
    const started = process.hrtime.bigint();
    const done = () => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const status = res.writableFinished ? res.statusCode : 0; // 0: the client went away before the answer
      const route = routeOf(req, status);
      deps.metrics.httpSeconds.observe({ method: req.method, route, status: String(status) }, seconds);
      deps.log.info({ requestId, client: req.ip, method: req.method, route, status, durationMs: Math.round(seconds * 1000) }, 'request');
    };
    res.once('close', done);
    runInRequest(requestId, next);
  };
}

/** GitHub caps webhook payloads at 25 MB; nothing bigger is buffered, signed or not. */
export const MAX_WEBHOOK_BYTES = 25 * 1024 * 1024;

/**
 * Reads a webhook body up to MAX_WEBHOOK_BYTES (refused by its Content-Length before a byte is read, or as soon
 * as the stream passes it) and hands the raw bytes to Probot, which checks the signature on exactly them
 * (`@octokit/webhooks` reads `req.rawBody` when it is set).
 */
function webhookBodyLimit(log: Logger, secret: string | undefined): express.RequestHandler {
  const refuse = (req: express.Request, res: express.Response) => {
    log.warn({ path: req.path }, 'webhook body over 25 MB refused');
    res.set('Connection', 'close').status(413).json({ error: 'Webhook bodies are limited to 25 MB.' });
    res.once('finish', () => req.destroy());
  };
  return (req, res, next) => {
    if (Number(req.headers['content-length'] ?? 0) > MAX_WEBHOOK_BYTES) return refuse(req, res);
    if (!req.headers['x-hub-signature-256']) {
      // Probot would refuse it after reading it whole; refused here before a byte is read.
      log.warn({ path: req.path }, 'webhook without a signature refused');
      res.set('Connection', 'close').status(400).json({ error: 'The webhook has no X-Hub-Signature-256 header.' });
      res.once('finish', () => req.destroy());
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size <= MAX_WEBHOOK_BYTES) return void chunks.push(chunk);
      req.off('data', onData);
      req.pause();
      chunks.length = 0;
      refuse(req, res);
    };
    req.on('data', onData);
    req.once('end', () => {
      if (size > MAX_WEBHOOK_BYTES) return;
      const rawBody = Buffer.concat(chunks);
      // An expected refusal, so one warn line (Probot would log two errors with stacks for it).
      if (secret && !signatureMatches(rawBody, secret, String(req.headers['x-hub-signature-256']))) {
        log.warn({ delivery: req.headers['x-github-delivery'], event: req.headers['x-github-event'] }, 'webhook refused: its signature does not match WEBHOOK_SECRET');
        res.status(400).json({ error: 'The webhook signature does not match.' });
        return;
      }
      Object.assign(req, { rawBody, body: {} });
      next();
    });
    req.once('error', () => undefined);
  };
}

function signatureMatches(body: Buffer, secret: string, header: string): boolean {
  const expected = Buffer.from(`sha256=${crypto.createHmac('sha256', secret).update(body).digest('hex')}`);
  const given = Buffer.from(header);
  return given.length === expected.length && crypto.timingSafeEqual(given, expected);
}
