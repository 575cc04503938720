/**
 * Probot's setup flow (no credentials yet), made safe and complete for a real installation: it registers an
 * app whose webhook URL is PUBLIC_URL/api/github/webhooks, serves Probot's own page assets, answers only on
 * loopback or to a one-time token printed in the log, and writes the credentials to DATA_DIR/app.env (0600),
 * never to the code directory.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { parseEnv } from 'node:util';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parse as parseCookies } from 'cookie';
import type { Request, Response } from 'express';
import type { Logger } from 'pino';
import { APP_ENV_FILE, type Config } from './config.js';
import { inContainer } from './container.js';

const COOKIE = 'preview_gate_setup';
const STATIC_FILES: Record<string, string> = { 'primer.css': 'text/css', 'probot-head.svg': 'image/svg+xml', 'robot.svg': 'image/svg+xml' };

/** Merges `values` into DATA_DIR/app.env, created 0600; other files (`.env`) are never touched. */
export function writeAppEnv(dataDir: string, values: Record<string, string>): Record<string, string> {
  const file = path.join(dataDir, APP_ENV_FILE);
  fs.mkdirSync(dataDir, { recursive: true });
  const existing = (fs.existsSync(file) ? parseEnv(fs.readFileSync(file, 'utf8')) : {}) as Record<string, string>;
  const merged: Record<string, string> = { ...existing, ...values };
  // PRIVATE_KEY comes quoted with real newlines from Probot: stored as one line with \n escapes, like Probot's .env.
  const lines = Object.entries(merged).map(([k, v]) => `${k}=${JSON.stringify(String(v).replace(/^"|"$/g, ''))}`);
  const temp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(temp, `# Written by preview-gate's setup flow; read at start.\n${lines.join('\n')}\n`, { mode: 0o600 });
  fs.renameSync(temp, file);
  Object.assign(process.env, merged);
  return merged;
}

const isLoopback = (ip: string | undefined) => ip === '127.0.0.1' || ip === '::1' || ip === '::ffff:127.0.0.1';

export async function createSetupHandler(config: Config, log: Logger, setupToken = config.setupToken): Promise<(req: Request, res: Response) => Promise<boolean>> {
  const webhookUrl = `${config.publicUrl}/api/github/webhooks`;
  // Probot puts WEBHOOK_PROXY_URL into the manifest's hook_attributes.url and the "existing app" page.
  process.env.WEBHOOK_PROXY_URL = webhookUrl;
  process.env.NO_SMEE_SETUP = 'true';
  const token = setupToken || crypto.randomBytes(18).toString('base64url');
  const probotLib = path.dirname(fileURLToPath(import.meta.resolve('probot')));
  const staticDir = path.join(probotLib, '..', 'static');
  const { setupAppFactory } = await import(pathToFileURL(path.join(probotLib, 'apps', 'setup.js')).href);
  // The manifest is app.yml as Probot reads it, plus the sign-in callback, which depends on PUBLIC_URL: without
  // it GitHub refuses the dashboard's sign-in until the operator adds the URL in the app's settings by hand.
  const { ManifestCreation } = await import(pathToFileURL(path.join(probotLib, 'manifest-creation.js')).href);
  // GitHub sends the browser back to /probot/setup with the manifest's code and the `state` of the form's URL. The
  // state (random per process, shown only to whoever may see the setup page) proves that the code comes from a
  // registration started here: without it, a link to /probot/setup?code=<an attacker's app> opened by the operator
  // would write the attacker's credentials.
  const setupState = crypto.randomBytes(18).toString('base64url');
  const probotCreateAppUrl = Object.getOwnPropertyDescriptor(ManifestCreation.prototype, 'createAppUrl')!.get!;
  Object.defineProperty(ManifestCreation.prototype, 'createAppUrl', {
    configurable: true,
    get(this: unknown) {
      return `${probotCreateAppUrl.call(this) as string}?state=${setupState}`;
    },
  });
  const probotManifest = ManifestCreation.prototype.getManifest;
  ManifestCreation.prototype.getManifest = function (this: unknown, options: unknown): string {
    const manifest = JSON.parse(probotManifest.call(this, options) as string) as Record<string, unknown>;
    return JSON.stringify({ ...manifest, callback_urls: [`${config.publicUrl}/login/callback`] });
  };
  const probotHandler: (req: Request, res: Response) => Promise<boolean> = await setupAppFactory({
    host: 'localhost',
    port: config.port,
    log: { info: () => undefined, warn: (m: string) => log.warn(m), error: (m: unknown) => log.error(m) },
    updateEnv: (values: Record<string, string>) => {
      const written = writeAppEnv(config.dataDir, values);
      if (values.APP_ID) {
        log.info(
          { file: path.join(config.dataDir, APP_ENV_FILE) },
          `the GitHub App ${values.APP_ID} is registered; restart preview-gate to receive its webhooks (npm start, or: docker compose restart app)`,
        );
      }
      return written;
    },
  })();

  // In a container, loopback is the container's own: the host's browser (through the published port or nginx)
  // arrives from the container network, so only the link with the token opens the pages there.
  const tokenLink = `${config.publicUrl}/probot?setup_token=${token}`;
  if (inContainer()) {
    log.info({ webhookUrl }, `no GitHub App credentials yet: open ${tokenLink} to register the app (the setup pages answer nobody else)`);
  } else {
    log.info({ webhookUrl }, `no GitHub App credentials yet: open ${config.publicUrl}/probot on this machine to register the app`);
    log.info(`from another machine, open ${tokenLink} (the setup pages answer nobody else)`);
  }

  return async (req, res) => {
    const urlPath = req.path;
    if (urlPath !== '/' && urlPath !== '/probot' && !urlPath.startsWith('/probot/')) return false;
    if (!allowed(req, res, token)) {
      res.status(403).json({ error: 'The setup pages answer on loopback, or with the setup token printed in the server log.' });
      return true;
    }
    if (!sameOrigin(req, config.publicUrl)) {
      res.status(403).json({ error: 'The setup pages take forms from their own pages only.' });
      return true;
    }
    if (urlPath === '/probot/setup' && (typeof req.query.state !== 'string' || !safeEqual(req.query.state, setupState))) {
      res.status(400).json({ error: 'This registration did not start on this setup page; open the setup page and register the app from there.' });
      return true;
    }
    const asset = /^\/probot\/static\/([a-z.-]+)$/.exec(urlPath)?.[1];
    if (asset) {
      if (!STATIC_FILES[asset]) return false;
      res.type(STATIC_FILES[asset]).send(fs.readFileSync(path.join(staticDir, asset)));
      return true;
    }
    return probotHandler(req, res);
  };
}

/**
 * Loopback (as seen through nginx too: `trust proxy loopback`), or the token in the query, then in a cookie. In a
 * container loopback is the container's own (a shell inside it); the host's browser arrives through its network.
 */
function allowed(req: Request, res: Response, token: string): boolean {
  if (isLoopback(req.ip)) return true;
  const given = typeof req.query.setup_token === 'string' ? req.query.setup_token : cookie(req, COOKIE);
  if (!given || !safeEqual(given, token)) return false;
  if (req.query.setup_token) res.cookie(COOKIE, token, { httpOnly: true, sameSite: 'lax', path: '/probot' });
  return true;
}

/**
 * A form or fetch sent by another site (a page open in the operator's browser) carries that site's Origin (or
 * `Sec-Fetch-Site: cross-site`): refused for anything but reading, so no other page can post credentials here.
 */
function sameOrigin(req: Request, publicUrl: string): boolean {
  if (req.method === 'GET' || req.method === 'HEAD') return true;
  if (req.headers['sec-fetch-site'] === 'cross-site' || req.headers['sec-fetch-site'] === 'same-site') return false;
  const origin = req.headers.origin;
  if (origin === undefined) return true; // not a browser's cross-site request (browsers send Origin with every POST)
  const own = new Set([new URL(publicUrl).origin, `${req.protocol}://${req.headers.host ?? ''}`]);
  return own.has(origin);
}

/** One cookie's value (the `cookie` package: a malformed %-escape is left as is, never thrown). */
function cookie(req: Request, name: string): string | undefined {
  return parseCookies(req.headers.cookie ?? '')[name];
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}
