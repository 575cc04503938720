import crypto from 'node:crypto';
import fs from 'node:fs';
import type { Readable, Writable } from 'node:stream';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { createPreviews, openCore, probotFromEnv } from './app.js';
import { createMetrics } from './metrics.js';
import { nginxOptionsFrom, renderNginx } from './nginx.js';
import { ConfigError, loadConfig } from './config.js';
import { UPLOAD_SECRET_NAME } from './upload/route.js';
import { runUpload, UPLOAD_USAGE } from './upload-client.js';
import { openDb } from './db/client.js';
import type { AzureKeyOptions } from './secrets/azure.js';
import { rotateKeys } from './secrets/rotate.js';
import { formatUsage, usageReport } from './usage.js';

export interface CliIo {
  stdin: Readable & { isTTY?: boolean };
  stdout: Writable;
  stderr: Writable & { isTTY?: boolean };
  env: NodeJS.ProcessEnv;
  /** `upload`'s first wait before a retry (tests shorten it). */
  retryDelayMs?: number;
  /** Key Vault client options (tests: a credential and TLS trust for a local fake vault). */
  azure?: AzureKeyOptions;
}

const USAGE = `usage:
  preview-gate secret set <owner/repo> upload-key   store the repository's upload secret (stdin, or generated)
  preview-gate cleanup                              remove builds of PRs closed longer than CLEANUP_AFTER_HOURS
  preview-gate reconcile                            run the sweep now: every open PR re-decided from GitHub's facts
  preview-gate keys rotate                          re-wrap every account key under the current key (resumable)
  preview-gate usage [--json]                       per account: repositories, builds, bytes, uploads this month
  preview-gate nginx [--listen 80] [--upstream 127.0.0.1:3000] [--tls-cert F --tls-key F]
                                                    print the nginx server blocks for this configuration
${UPLOAD_USAGE}`;

const MIN_SECRET_BYTES = 32;

/** Runs one CLI command; returns the exit code. */
export async function runCli(argv: string[], io: CliIo): Promise<number> {
  try {
    const [command, sub, ...rest] = argv;
    if (command === 'secret' && sub === 'set') return await setSecret(rest, io);
    if (command === 'cleanup' && sub === undefined) return await cleanup(io);
    if (command === 'reconcile' && sub === undefined) return await reconcile(io);
    if (command === 'nginx') return printNginx(argv.slice(1), io);
    if (command === 'upload') return await runUpload(argv.slice(1), io);
    if (command === 'keys' && sub === 'rotate' && rest.length === 0) return await rotate(io);
    if (command === 'usage') return await usage(argv.slice(1), io);
    io.stderr.write(`${USAGE}\n`);
    return 2;
  } catch (err) {
    const msg = err instanceof ConfigError ? `configuration error: ${err.message}` : (err as Error).message;
    io.stderr.write(`preview-gate: ${msg}\n`);
    return 1;
  }
}

/**
 * `secret set <owner/repo> upload-key`, like `gh secret set`: a piped value is stored as it is (at least 32
 * bytes, one trailing newline dropped); on a terminal 32 random bytes are generated and printed once.
 */
async function setSecret(args: string[], io: CliIo): Promise<number> {
  const [slug, name] = args;
  if (!slug || !/^[A-Za-z0-9_.-]+\/[A-Za-z0-9_.-]+$/.test(slug) || name !== UPLOAD_SECRET_NAME || args.length !== 2) {
    io.stderr.write(`${USAGE}\n`);
    return 2;
  }
  let value: Buffer;
  let generated = false;
  if (io.stdin.isTTY) {
    value = Buffer.from(crypto.randomBytes(32).toString('base64url'));
    generated = true;
  } else {
    value = await readAll(io.stdin);
    if (value.at(-1) === 0x0a) value = value.subarray(0, value.at(-2) === 0x0d ? -2 : -1);
    if (value.length < MIN_SECRET_BYTES) {
      io.stderr.write(`preview-gate: the secret must be at least ${MIN_SECRET_BYTES} bytes (got ${value.length}); nothing was stored.\n`);
      return 1;
    }
  }
  const core = await openCore(loadConfig(io.env), io.azure);
  try {
    const repo = await core.registry.ensureRepository(slug);
    await core.secrets.set(repo.accountId, repo.id, UPLOAD_SECRET_NAME, value);
  } finally {
    core.db.$client.close();
  }
  if (generated) {
    io.stdout.write(`${value.toString()}\n`);
    io.stderr.write(`Stored the upload secret of ${slug}. It is shown only this once: save it in your CI's secrets now.\n`);
  } else {
    io.stderr.write(`Stored the upload secret of ${slug}.\n`);
  }
  return 0;
}

/** One cleanup pass, as the server runs every 15 minutes; GitHub must be reachable (nothing is deleted otherwise). */
async function cleanup(io: CliIo): Promise<number> {
  const config = loadConfig(io.env);
  if (!config.appConfigured) throw new Error('cleanup asks GitHub first: set APP_ID, PRIVATE_KEY (or PRIVATE_KEY_PATH) and WEBHOOK_SECRET.');
  const log = pino({ level: io.env.LOG_LEVEL ?? 'warn' }, io.stderr);
  const core = await openCore(config, io.azure);
  try {
    const { previews } = createPreviews(core, createMetrics(), log, probotFromEnv(config, log, io.env));
    const { removedPrs, skipped } = await previews.cleanup();
    await previews.settled();
    io.stdout.write(`Removed the builds of ${removedPrs} closed pull request(s); ${skipped} skipped (see the log).\n`);
    return 0;
  } finally {
    core.db.$client.close();
  }
}

/**
 * `reconcile`: the sweep the server runs every RECONCILE_INTERVAL_MINUTES, now. What GitHub could not answer
 * is left in the queue, which the server works through.
 */
async function reconcile(io: CliIo): Promise<number> {
  const config = loadConfig(io.env);
  if (!config.appConfigured) throw new Error('reconcile asks GitHub: set APP_ID, PRIVATE_KEY (or PRIVATE_KEY_PATH) and WEBHOOK_SECRET.');
  const log = pino({ level: io.env.LOG_LEVEL ?? 'warn' }, io.stderr);
  const core = await openCore(config, io.azure);
  try {
    const { sweep } = createPreviews(core, createMetrics(), log, probotFromEnv(config, log, io.env));
    const r = await sweep!.run();
    io.stdout.write(
      `Swept ${r.installations} installation(s), ${r.repositories} repositories, ${r.pullRequests} open pull request(s): ` +
        `${r.changed} changed visibility, ${r.queued} queued for retry, ${r.overBudget} installation(s) left for later (rate limit).\n`,
    );
    return 0;
  } finally {
    core.db.$client.close();
  }
}

/** `keys rotate`: every account DEK re-wrapped under the current key; run it again if it was interrupted. */
async function rotate(io: CliIo): Promise<number> {
  const config = loadConfig(io.env);
  const core = await openCore(config, io.azure);
  try {
    const result = await rotateKeys(core.db, core.keys);
    if (result.newLocalKey) io.stderr.write(`Made a new local master key (${result.keyId}); the old one is kept until every account has moved.\n`);
    io.stdout.write(`Re-wrapped ${result.rewrapped} account key(s) under ${result.keyId}; ${result.alreadyCurrent} already were.\n`);
    for (const removed of result.removedKeys) io.stderr.write(`Deleted the retired master key ${removed}: nothing is wrapped by it any more.\n`);
    if (config.keyProvider === 'azure' && fs.existsSync(config.masterKeyFile)) {
      io.stderr.write(`${config.masterKeyFile} is no longer needed once this rotation is complete; back it up or delete it.\n`);
    }
    return 0;
  } finally {
    core.db.$client.close();
  }
}

async function usage(args: string[], io: CliIo): Promise<number> {
  const { values } = parseArgs({ args, options: { json: { type: 'boolean' } } });
  // Reads the database only: no key service (and so no Key Vault) is needed to count.
  const db = openDb(loadConfig(io.env).databaseFile);
  try {
    const report = usageReport(db);
    io.stdout.write(values.json ? `${JSON.stringify(report, null, 2)}\n` : formatUsage(report));
    return 0;
  } finally {
    db.$client.close();
  }
}

function printNginx(args: string[], io: CliIo): number {
  const { values } = parseArgs({
    args,
    options: { listen: { type: 'string' }, upstream: { type: 'string' }, 'tls-cert': { type: 'string' }, 'tls-key': { type: 'string' } },
  });
  const cert = values['tls-cert'];
  const key = values['tls-key'];
  if (Boolean(cert) !== Boolean(key)) throw new Error('--tls-cert and --tls-key go together.');
  const config = loadConfig(io.env);
  io.stdout.write(
    renderNginx(
      nginxOptionsFrom(config, {
        ...(values.listen ? { listen: values.listen } : {}),
        ...(values.upstream ? { upstream: values.upstream } : {}),
        ...(cert && key ? { tls: { certificate: cert, key } } : {}),
      }),
    ),
  );
  return 0;
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.from(chunk as Buffer));
  return Buffer.concat(chunks);
}
