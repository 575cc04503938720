import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { createProbot, ProbotOctokit, type Probot } from 'probot';
import { pino } from 'pino';
import { BuildStore } from './builds/store.js';
import { S3BuildStore } from './storage/s3-build-store.js';
import { S3Builds } from './storage/s3-builds.js';
import { S3Objects } from './storage/s3-objects.js';
import type { Config } from './config.js';
import type { Database } from './db/database.js';
import { openDatabase } from './db/open.js';
import { GitHub } from './github.js';
import { githubApp } from './github-app.js';
import { EtagCache, conditionalRequests } from './conditional-requests.js';
import { createMetrics, GitHubCallObserver, SweepHealth, trackQueue, trackStoredBytes, type Metrics } from './metrics.js';
import { Notifier } from './notify.js';
import { Previews } from './previews.js';
import { GitHubUserApi } from './dashboard/github-user.js';
import { Sessions } from './dashboard/sessions.js';
import { ArtifactPuller } from './pull-mode.js';
import { Registry } from './registry.js';
import type { AzureKeyOptions } from './secrets/azure.js';
import { KeyRing, LocalKeyService } from './secrets/key-service.js';
import { SecretStore } from './secrets/secrets.js';
import { Replica, Schedules } from './replica.js';
import { Sweep } from './sweep.js';
import { createServer, type ServerDeps } from './server.js';

/** The parts of a running preview-gate, shared by the server, the CLI and the tests. */
export interface Core {
  config: Config;
  db: Database;
  keys: KeyRing;
  secrets: SecretStore;
  registry: Registry;
  store: BuildStore;
  /** This process among the replicas sharing the database (registered by a server only). */
  replica: Replica;
}

export async function openCore(config: Config, azure?: AzureKeyOptions, leaseMs?: number, log?: Logger): Promise<Core> {
  const keys = await openKeyService(config, azure);
  // PostgreSQL connections lost in the background (an idle pooled one, the LISTEN one) are made again; said once
  // each, by pg's message only (it names the host and user, never DATABASE_URL's password).
  const db = await openDatabase(config, (error, where) => log?.warn({ where, reason: error.message }, 'a PostgreSQL connection was lost; it is made again'));
  const secrets = new SecretStore(db, keys);
  const registry = new Registry(db, secrets);
  const replica = new Replica(db, leaseMs);
  const store = openBuildStore(config, db, replica.id, log);
  return { config, db, keys, secrets, registry, store, replica };
}

/** The builds folder, or with STORAGE=s3 the bucket (the folder then holds only the uploads' local scratch). */
function openBuildStore(config: Config, db: Database, owner: string, log?: Logger): BuildStore {
  if (config.storage !== 's3') return new BuildStore(config.buildsDir, undefined, owner);
  const bucket = new S3Builds(S3Objects.fromSettings(config.s3!), db, log ?? pino({ level: 'silent' }), config.s3GcGraceHours * 3600_000);
  return new S3BuildStore(config.buildsDir, bucket, owner);
}

/**
 * The key service of KEY_PROVIDER, plus, for unwrapping only, the other provider when its key is at hand (a
 * local master key file after moving to Azure, or AZURE_KEY_ID after moving back), so that rows not yet
 * re-wrapped by `preview-gate keys rotate` keep working.
 */
export async function openKeyService(config: Config, azure: AzureKeyOptions = {}): Promise<KeyRing> {
  // Loaded only when used: the Azure SDK and MSAL add about 20 MB to every process that imports them.
  const openVault = async (keyId: string) => (await import('./secrets/azure.js')).AzureKeyService.open(keyId, azure);
  if (config.keyProvider === 'local') {
    const local = LocalKeyService.open(config.masterKeyFile)!;
    const readers = config.azureKeyId ? [await openVault(config.azureKeyId)] : [];
    return new KeyRing(local, readers);
  }
  const vault = await openVault(config.azureKeyId!);
  const oldLocal = LocalKeyService.open(config.masterKeyFile, { create: false });
  return new KeyRing(vault, oldLocal ? [oldLocal] : []);
}

/**
 * Probot from the environment (APP_ID, PRIVATE_KEY[_PATH], WEBHOOK_SECRET, GHE_HOST, GHE_PROTOCOL), with
 * every GitHub request bounded in time so that a hung GitHub turns into a 503, not a hung upload.
 */
/** The GitHub request timing of each Probot made here, attached to its server's metrics by startServer. */
const githubObservers = new WeakMap<Probot, GitHubCallObserver>();

export function probotFromEnv(config: Config, log: Logger, env: NodeJS.ProcessEnv = process.env, etags = new EtagCache()): Probot {
  const observer = new GitHubCallObserver();
  const timeoutMs = config.githubTimeoutMs;
  const timedFetch: typeof fetch = (url, init) => {
    const timeout = AbortSignal.timeout(timeoutMs);
    return globalThis.fetch(url, { ...init, signal: init?.signal ? AbortSignal.any([init.signal, timeout]) : timeout });
  };
  const probot = createProbot({
    env,
    overrides: {
      log,
      request: { fetch: timedFetch },
      // A function, not an object: Probot passes its own `throttle` options, which must be merged, not replaced.
      // The timing plugin first: it wraps the cache, so a 304 answered from it is timed as GitHub's answer.
      Octokit: ProbotOctokit.plugin(conditionalRequests(etags) as never, observer.plugin() as never).defaults((options: Record<string, any>) => ({
        ...options,
        retry: { ...options.retry, retries: config.githubRetries },
        throttle: { ...options.throttle, enabled: config.githubThrottle },
      })),
    },
  });
  githubObservers.set(probot, observer);
  return probot;
}

const CLEANUP_EVERY_MS = 15 * 60_000;
const FEEDBACK_DRAIN_MS = 10_000;
const FIRST_SWEEP_MS = 5_000;
/** The clean-stop marker of versions before replicas (one file per DATA_DIR); read once, when upgrading. */
const LEGACY_CLEAN_STOP_MARKER = '.clean-stop';
/** How often each replica looks whether the sweep or the cleanup is due (they run once per interval in all). */
const SCHEDULE_CHECK_MS = 1000;

/** The decision-making part, for the server and for `preview-gate cleanup`. */
export function createPreviews(core: Core, metrics: Metrics, log: Logger, probot?: Probot) {
  const github = probot ? new GitHub(probot, core.config.settingsCacheMs) : undefined;
  const notifier = new Notifier(core.db, core.config, log);
  const previews = new Previews(core.db, core.registry, core.store, github, notifier, core.config, metrics, log, core.replica);
  const sweep = github ? new Sweep(core.registry, previews, github, log) : undefined;
  const sweepHealth = new SweepHealth(metrics, core.config.reconcileIntervalMs);
  recordOutcomes(sweep, previews, metrics, sweepHealth);
  return { github, previews, sweep, sweepHealth };
}

/** Every sweep and cleanup, whoever starts it (timer, CLI, test), moves the health and the "last success" metrics. */
function recordOutcomes(sweep: Sweep | undefined, previews: Previews, metrics: Metrics, health: SweepHealth): void {
  if (sweep) {
    const run = sweep.run.bind(sweep);
    sweep.run = async (...args: Parameters<Sweep['run']>) => {
      try {
        const result = await run(...args);
        health.succeeded();
        return result;
      } catch (err) {
        health.failed(err);
        throw err;
      }
    };
  }
  const cleanup = previews.cleanup.bind(previews);
  previews.cleanup = async (...args: Parameters<Previews['cleanup']>) => {
    const result = await cleanup(...args);
    metrics.lastCleanupSuccess.set(Date.now() / 1000);
    return result;
  };
}

export interface RunningServer {
  url: string;
  sessions: Sessions;
  server: http.Server;
  core: Core;
  previews: Previews;
  sweep?: Sweep;
  replica: Replica;
  schedules: Schedules;
  close(): Promise<void>;
}

/** Opens everything and listens on `port` (0: any free port) on `host`. */
export async function startServer(
  config: Config,
  log: Logger,
  options: {
    probot?: Probot;
    setupHandler?: ServerDeps['setupHandler'];
    host?: string;
    port?: number;
    azure?: AzureKeyOptions;
    /** Tests: shorter leases, sweep interval and schedule checks than production's. */
    timing?: { leaseMs?: number; sweepEveryMs?: number; scheduleCheckMs?: number };
  } = {},
): Promise<RunningServer> {
  const core = await openCore(config, options.azure, options.timing?.leaseMs, log);
  const objectsNote = core.store.init();
  if (objectsNote) log.info(objectsNote);
  const metrics = createMetrics();
  if (options.probot) githubObservers.get(options.probot)?.attach(metrics);
  const { github, previews, sweep, sweepHealth } = createPreviews(core, metrics, log, options.probot);
  const { replica } = core;
  // The clean-stop marker is a row per replica: a replica that died without its clean stop is repaired after,
  // by the next start or by a running replica's heartbeat, and only what it left (not the others' uploads).
  const legacyMarker = path.join(config.dataDir, LEGACY_CLEAN_STOP_MARKER);
  const upgrading = !(await replica.hasHistory());
  await replica.register();
  const dead = await replica.takeOverDead();
  const unclean = dead.length > 0 || (upgrading && !fs.existsSync(legacyMarker));
  fs.rmSync(legacyMarker, { force: true });
  await previews.recoverAfterRestart({ unclean });
  replica.startHeartbeat(async () => {
    if (!(await replica.takeOverDead()).length) return;
    const released = await previews.releaseDead();
    log.warn(released, 'released the uploads of a replica that stopped uncleanly');
  });
  trackStoredBytes(metrics, () => previews.storedBytes());
  trackQueue(metrics, () => previews.queue.depth());
  const userApi = new GitHubUserApi(config);
  if (config.githubClientId) log.info(`sign-in with GitHub is on: the GitHub App's callback URL must be ${config.publicUrl}/login/callback`);
  const sessions = new Sessions(core.db, core.keys, userApi, config.sessionMs);
  // Singleton jobs: whichever replica claims the due row runs it, so N replicas sweep once per interval in all.
  const schedules = new Schedules(core.db, replica, log);
  await schedules.add('cleanup', CLEANUP_EVERY_MS, async () => {
    await sessions.prune();
    await previews.cleanup();
  });
  const sweepEveryMs = options.timing?.sweepEveryMs ?? config.reconcileIntervalMs;
  // The first sweep soon after the schedule is made: it also learns the GitHub ids of rows stored before ids were kept.
  if (sweep && sweepEveryMs > 0) await schedules.add('sweep', sweepEveryMs, () => sweep.run(), Math.min(FIRST_SWEEP_MS, sweepEveryMs));
  schedules.start(options.timing?.scheduleCheckMs ?? SCHEDULE_CHECK_MS);
  previews.start();
  const app = await createServer({
    ...core,
    log,
    metrics,
    previews,
    github,
    probot: options.probot,
    appFn:
      options.probot && github
        ? githubApp({
            registry: core.registry,
            previews,
            github,
            metrics,
            log,
            puller: new ArtifactPuller(core.registry, previews, github, core.store, config, log),
          })
        : undefined,
    setupHandler: options.setupHandler,
    sweepHealth,
    dashboard: options.probot ? { sessions, api: userApi } : undefined,
  });
  const server = http.createServer(app);
  // Uploads of large builds over slow links: no whole-request timeout, but headers must come quickly.
  server.requestTimeout = 0;
  server.headersTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? config.port, options.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  }).catch(async (err: unknown) => {
    await schedules.stop();
    await previews.stop(0);
    await replica.stopCleanly();
    await core.db.close();
    throw err;
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    sessions,
    server,
    core,
    previews,
    sweep,
    replica,
    schedules,
    close: async () => {
      // Waits for requests in flight (uploads finish and are answered), then for the jobs running now, but
      // not for long: whatever is left stays in the queue's table and is done after the next start.
      await new Promise<void>((resolve) => server.close(() => resolve()));
      const [drained] = await Promise.all([previews.stop(FEEDBACK_DRAIN_MS), schedules.stop()]);
      const { jobs } = await previews.queue.depth();
      if (!drained || jobs) log.info({ jobs }, 'stopped with work queued; it is done after the next start');
      await replica.stopCleanly();
      await core.db.close();
      core.store.bucket?.bucket.close();
    },
  };
}
