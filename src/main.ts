/** Start-up only: config → database → key service → server → listen. */
import path from 'node:path';
import { pino } from 'pino';
import { probotFromEnv, startServer } from './app.js';
import { ConfigError, ensureDataDir, gatherEnvironment, loadConfig } from './config.js';
import { checkSqliteAddon } from './db/sqlite.js';
import { requestLogFields } from './request-context.js';
import { inContainer } from './container.js';
import { createSetupHandler } from './setup.js';

async function main(): Promise<void> {
  // The environment, then .env, then DATA_DIR/app.env (the setup flow's credentials): as every CLI command reads them.
  const env = gatherEnvironment();
  const config = loadConfig(env);
  try {
    ensureDataDir(config.dataDir);
  } catch (err) {
    // A relative DATA_DIR (the ./data of a .env written for npm start) in the image is /app/data: say what to do.
    const given = process.env.DATA_DIR;
    if (err instanceof ConfigError && given && !path.isAbsolute(given)) throw new ConfigError(relativeDataDirAdvice(given));
    throw err;
  }
  // JSON lines for log collectors; one readable line per event on a terminal.
  const log = pino({
    level: config.logLevel ?? 'info',
    mixin: requestLogFields, // the request id, in every line written for a request and the work it causes
    ...(process.stdout.isTTY ? { transport: { target: 'pino-pretty', options: { colorize: true, ignore: 'pid,hostname', singleLine: true } } } : {}),
  });
  checkSqliteAddon(); // before the setup flow prints its address for a server that would not start
  const probot = config.appConfigured ? probotFromEnv(config, log, env) : undefined;
  const setupHandler = probot ? undefined : await createSetupHandler(config, log);
  const running = await startServer(config, log, { probot, setupHandler, host: config.host });
  log.info(
    { url: running.url.replace('127.0.0.1', config.host), dataDir: config.dataDir, previews: `*.${config.previewDomain}`, replica: running.replica.id },
    probot ? 'preview-gate is listening' : 'preview-gate is listening; register the GitHub App with the setup link above',
  );
  const stop = (signal: string) => {
    log.info({ signal }, 'stopping: finishing uploads in flight');
    running.close().then(() => process.exit(0), () => process.exit(1));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

main().catch((err: unknown) => {
  const code = (err as NodeJS.ErrnoException).code;
  if (err instanceof ConfigError) {
    console.error(`preview-gate: configuration error: ${err.message}`);
  } else if ((code === 'EACCES' || code === 'EPERM' || code === 'EROFS') && (err as NodeJS.ErrnoException).path) {
    console.error(`preview-gate: cannot write ${(err as NodeJS.ErrnoException).path} as uid ${process.getuid?.() ?? '?'}: ${unwritableDataDirAdvice()}`);
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

/** A relative DATA_DIR (the `./data` of a .env copied for npm start) is relative to the working directory, not a mount. */
function relativeDataDirAdvice(dataDir: string): string {
  const unset = inContainer() ? 'remove DATA_DIR from the environment (.env) to use the image\'s volume /data, or ' : '';
  return `DATA_DIR=${dataDir} is relative to the working directory ${process.cwd()}: ${unset}set DATA_DIR to a directory this user can write.`;
}

/** What to do about a DATA_DIR this user cannot write. */
function unwritableDataDirAdvice(): string {
  const dataDir = process.env.DATA_DIR;
  if (dataDir && !path.isAbsolute(dataDir)) return relativeDataDirAdvice(dataDir);
  return `DATA_DIR must belong to the server's user (for a bind mount: chown -R ${process.getuid?.() ?? '?'}:${process.getgid?.() ?? '?'} <host directory>).`;
}
