import client from 'prom-client';

/** Prometheus metrics of one server (own registry, so tests can run several servers in one process). */
export function createMetrics() {
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry });
  return {
    registry,
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
function readAtScrape(metrics: Metrics, name: string, help: string, read: () => number): void {
  new client.Gauge({
    name,
    help,
    registers: [metrics.registry],
    collect() {
      this.set(read());
    },
  });
}

/** `preview_gate_stored_bytes`. */
export function trackStoredBytes(metrics: Metrics, storedBytes: () => number): void {
  readAtScrape(metrics, 'preview_gate_stored_bytes', 'Bytes of builds on disk now (identical files of builds of a repository counted once)', storedBytes);
}

/** Queue depth and the age of its oldest row: work GitHub has not taken yet (decisions, feedback). */
export function trackQueue(metrics: Metrics, depth: () => { jobs: number; oldestSeconds: number }): void {
  readAtScrape(metrics, 'preview_gate_queue_jobs', 'Decisions and GitHub feedback waiting in the durable queue', () => depth().jobs);
  readAtScrape(metrics, 'preview_gate_queue_oldest_seconds', 'Age of the oldest waiting row of the durable queue', () => depth().oldestSeconds);
}
