import client from 'prom-client';
import { packageVersion } from './version.js';

/** Prometheus metrics of one server (own registry, so tests can run several servers in one process). */
export function createMetrics() {
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry });
  new client.Gauge({ name: 'preview_gate_build_info', help: 'Always 1; the version label says which preview-gate runs', labelNames: ['version'] as const, registers: [registry] }).set(
    { version: packageVersion() },
    1,
  );
  return {
    registry,
    httpSeconds: new client.Histogram({
      name: 'preview_gate_http_request_duration_seconds',
      help: 'Time to answer an HTTP request, by method, route template and status',
      labelNames: ['method', 'route', 'status'] as const,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers: [registry],
    }),
    uploadPhaseSeconds: new client.Histogram({
      name: 'preview_gate_upload_phase_seconds',
      help: 'Time an upload spends in each phase: authorize (token and GitHub facts), store (body to a committed build)',
      labelNames: ['phase'] as const,
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60],
      registers: [registry],
    }),
    githubSeconds: new client.Histogram({
      name: 'preview_gate_github_request_duration_seconds',
      help: 'Latency of GitHub API requests, by route template and status (0: no answer)',
      labelNames: ['method', 'route', 'status'] as const,
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30],
      registers: [registry],
    }),
    githubRequestErrors: new client.Counter({
      name: 'preview_gate_github_request_errors_total',
      help: 'GitHub API requests that failed (status 4xx/5xx other than 304, or no answer), by route template and status',
      labelNames: ['method', 'route', 'status'] as const,
      registers: [registry],
    }),
    lastSweepSuccess: new client.Gauge({
      name: 'preview_gate_last_successful_sweep_timestamp_seconds',
      help: 'Unix time of the last sweep that finished (0: none since start)',
      registers: [registry],
    }),
    lastCleanupSuccess: new client.Gauge({
      name: 'preview_gate_last_successful_cleanup_timestamp_seconds',
      help: 'Unix time of the last cleanup that finished (0: none since start)',
      registers: [registry],
    }),
    sweepFailures: new client.Counter({
      name: 'preview_gate_sweep_failures_total',
      help: 'Sweeps that failed (GitHub unreachable, or another error)',
      registers: [registry],
    }),
    uploads: new client.Counter({
      name: 'preview_gate_uploads_total',
      help: 'Uploads by HTTP status of the answer',
      labelNames: ['status'] as const,
      registers: [registry],
    }),
    uploadedBytes: new client.Counter({
      name: 'preview_gate_uploaded_bytes_total',
      help: 'Uncompressed bytes of builds stored',
      registers: [registry],
    }),
    objectsPut: new client.Counter({
      name: 'preview_gate_s3_objects_put_total',
      help: 'Objects written into the bucket by uploads (STORAGE=s3; contents the bucket held already are not put)',
      registers: [registry],
    }),
    extractionSeconds: new client.Histogram({
      name: 'preview_gate_extraction_seconds',
      help: 'Time to stream one upload into its staging folder',
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60],
      registers: [registry],
    }),
    visibilityChanges: new client.Counter({
      name: 'preview_gate_visibility_changes_total',
      help: 'PR folders moved between public and hidden',
      labelNames: ['to'] as const,
      registers: [registry],
    }),
    webhookEvents: new client.Counter({
      name: 'preview_gate_webhook_events_total',
      help: 'Webhook events handled, by event name and outcome',
      labelNames: ['event', 'outcome'] as const,
      registers: [registry],
    }),
    githubErrors: new client.Counter({
      name: 'preview_gate_github_errors_total',
      help: 'GitHub API calls that failed, by what was being done',
      labelNames: ['during'] as const,
      registers: [registry],
    }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;

/** A gauge whose value is read when Prometheus scrapes (from the database, so it is right after restarts too). */
function readAtScrape(metrics: Metrics, name: string, help: string, read: () => Promise<number>): void {
  new client.Gauge({
    name,
    help,
    registers: [metrics.registry],
    // prom-client awaits an async collect before it writes the scrape.
    async collect() {
      this.set(await read());
    },
  });
}

/** `preview_gate_stored_bytes`. */
export function trackStoredBytes(metrics: Metrics, storedBytes: () => Promise<number>): void {
  readAtScrape(metrics, 'preview_gate_stored_bytes', 'Bytes of builds on disk now (identical files of builds of a repository counted once)', storedBytes);
}

/** Queue depth and the age of its oldest row: work GitHub has not taken yet (decisions, feedback). */
export function trackQueue(metrics: Metrics, depth: () => Promise<{ jobs: number; oldestSeconds: number }>): void {
  readAtScrape(metrics, 'preview_gate_queue_jobs', 'Decisions and GitHub feedback waiting in the durable queue', async () => (await depth()).jobs);
  readAtScrape(metrics, 'preview_gate_queue_oldest_seconds', 'Age of the oldest waiting row of the durable queue', async () => (await depth()).oldestSeconds);
}

/** A GitHub request as the Octokit hook sees it, for the metrics of the server that attaches them. */
export class GitHubCallObserver {
  private metrics?: Metrics;

  attach(metrics: Metrics): void {
    this.metrics = metrics;
  }

  record(method: string, route: string, status: number, seconds: number): void {
    if (!this.metrics) return;
    const labels = { method, route, status: String(status) };
    this.metrics.githubSeconds.observe(labels, seconds);
    if (status === 0 || (status >= 400 && status !== 304)) this.metrics.githubRequestErrors.inc(labels);
  }

  /** An Octokit plugin timing every request by its route template (`GET /repos/{owner}/{repo}/pulls/{pull_number}`). */
  plugin() {
    return (octokit: { hook: { wrap: (name: 'request', fn: (request: (o: any) => Promise<any>, options: any) => Promise<any>) => void } }) => {
      octokit.hook.wrap('request', async (request, options) => {
        const started = process.hrtime.bigint();
        const method = String(options.method ?? 'GET');
        const route = routeTemplate(String(options.url ?? 'unknown'));
        const seconds = () => Number(process.hrtime.bigint() - started) / 1e9;
        try {
          const response = await request(options);
          this.record(method, route, response.status, seconds());
          return response;
        } catch (err) {
          this.record(method, route, (err as { status?: number }).status ?? 0, seconds());
          throw err;
        }
      });
    };
  }
}

/**
 * Octokit passes the route template (`/repos/{owner}/{repo}`), except for pagination's next pages and raw
 * URLs: those are turned into a template so the label stays bounded and names no repository.
 */
export function routeTemplate(url: string): string {
  if (!/^https?:\/\//.test(url)) return url.split('?')[0]!;
  return new URL(url).pathname
    .replace(/^\/api\/v3/, '')
    .replace(/^\/repos\/[^/]+\/[^/]+/, '/repos/{owner}/{repo}')
    .replace(/^\/(orgs|users)\/[^/]+/, '/$1/{name}')
    .replace(/\/teams\/[^/]+/, '/teams/{team_slug}')
    .replace(/\/memberships\/[^/]+/, '/memberships/{username}')
    .replace(/\/[0-9]+(?=\/|$)/g, '/{id}');
}

/**
 * The sweep's health for /health: degraded when the last SWEEP_FAILURES_DEGRADED sweeps failed, or when no sweep
 * has succeeded for 3 intervals while sweeps run.
 */
export const SWEEP_FAILURES_DEGRADED = 3;

export class SweepHealth {
  private consecutiveFailures = 0;
  private lastSuccess?: Date;
  private lastError?: string;
  private readonly startedAt = new Date();

  constructor(
    private readonly metrics: Metrics,
    private readonly intervalMs: number,
  ) {}

  succeeded(): void {
    this.consecutiveFailures = 0;
    this.lastError = undefined;
    this.lastSuccess = new Date();
    this.metrics.lastSweepSuccess.set(this.lastSuccess.getTime() / 1000);
  }

  failed(err: unknown): void {
    this.consecutiveFailures++;
    this.lastError = (err as Error).message;
    this.metrics.sweepFailures.inc();
  }

  /** undefined when healthy; otherwise what /health reports. */
  problem(now = Date.now()): { consecutiveFailures: number; lastSuccess: string | null; lastError?: string } | undefined {
    const since = (this.lastSuccess ?? this.startedAt).getTime();
    const stale = this.intervalMs > 0 && now - since > 3 * this.intervalMs;
    if (this.consecutiveFailures < SWEEP_FAILURES_DEGRADED && !stale) return undefined;
    return { consecutiveFailures: this.consecutiveFailures, lastSuccess: this.lastSuccess?.toISOString() ?? null, lastError: this.lastError };
  }
}
