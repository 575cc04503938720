/** Start-up only: config → database → key service → server → listen. */
import 'dotenv/config';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { pino } from 'pino';
import { probotFromEnv, startServer } from './app.js';
import { ConfigError, loadConfig } from './config.js';
import type { ServerDeps } from './server.js';

// JSON lines for log collectors; one readable line per event on a terminal.
const log = pino({
  level: process.env.LOG_LEVEL ?? 'info',
  ...(process.stdout.isTTY ? { transport: { target: 'pino-pretty', options: { colorize: true, ignore: 'pid,hostname', singleLine: true } } } : {}),
});

async function main(): Promise<void> {
  const config = loadConfig();
  const probot = config.appConfigured ? probotFromEnv(config, log) : undefined;
  const setupHandler = probot ? undefined : await probotSetupHandler(config.port);
  const running = await startServer(config, log, { probot, setupHandler, host: config.host });
  log.info(
    { url: running.url.replace('127.0.0.1', config.host), dataDir: config.dataDir, previews: `*.${config.previewDomain}` },
    probot ? 'preview-gate is listening' : `preview-gate is listening; register the GitHub App at ${config.publicUrl}/probot`,
  );
  const stop = (signal: string) => {
    log.info({ signal }, 'stopping: finishing uploads in flight');
    running.close().then(() => process.exit(0), () => process.exit(1));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

/**
 * Without APP_ID / private key / webhook secret, Probot's own setup flow registers the app from app.yml
 * (the manifest flow) and writes the credentials to .env. Probot does not export it, so it is loaded
 * from the installed package by file path.
 */
async function probotSetupHandler(port: number): Promise<ServerDeps['setupHandler']> {
  process.env.NO_SMEE_SETUP ??= 'true';
  const probotLib = path.dirname(fileURLToPath(import.meta.resolve('probot')));
  const { setupAppFactory } = await import(pathToFileURL(path.join(probotLib, 'apps', 'setup.js')).href);
  return setupAppFactory({ host: 'localhost', port, log: log.child({ name: 'setup' }) })();
}

main().catch((err: unknown) => {
  const code = (err as NodeJS.ErrnoException).code;
  if (err instanceof ConfigError) {
    console.error(`preview-gate: configuration error: ${err.message}`);
  } else if (code === 'EADDRINUSE' || code === 'EACCES') {
    const { address, port } = err as { address?: string; port?: number };
    console.error(
      code === 'EADDRINUSE'
        ? `preview-gate: ${address ?? ''}:${port ?? ''} is already in use; stop the other process or set PORT (and HOST) to a free address.`
        : `preview-gate: not allowed to listen on ${address ?? ''}:${port ?? ''}; ports below 1024 need privileges: set PORT to 1024 or more.`,
    );
  } else {
    console.error(`preview-gate: could not start: ${(err as Error).message}`);
  }
  process.exit(1);
});
