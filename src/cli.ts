import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { createPreviews, openCore, probotFromEnv } from './app.js';
import { createMetrics } from './metrics.js';
import { nginxOptionsFrom, renderNginx } from './nginx.js';
import { ConfigError, ensureDataDir, gatherEnvironment, loadSettings, type Config } from './config.js';
import { UPLOAD_SECRET_NAME } from './upload/route.js';
import { parseArgsMessage, runUpload, UPLOAD_USAGE } from './upload-client.js';
import { openDatabase } from './db/open.js';
import { SqliteDatabase } from './db/sqlite.js';
import { first } from './db/query.js';
import { auditTrail, revokeUserSessions } from './dashboard/sessions.js';
import type { AzureKeyOptions } from './secrets/azure.js';
import { rotateKeys } from './secrets/rotate.js';
import { formatUsage, usageReport } from './usage.js';
import { verifyDeployment } from './verify.js';
import { BuildStore } from './builds/store.js';
import { migrateStorage } from './storage/migrate.js';
import { S3Objects, statusOf } from './storage/s3-objects.js';
import { isGitHubRepositoryName } from './trust.js';
import { packageVersion } from './version.js';
import { and, eq, sql } from './db/orm.js';
import { repositories, secrets } from './db/tables.js';

export interface CliIo {
  stdin: Readable & { isTTY?: boolean };
  stdout: Writable;
  stderr: Writable & { isTTY?: boolean };
  env: NodeJS.ProcessEnv;
  /** `upload`'s first wait before a retry (tests shorten it). */
  retryDelayMs?: number;
  /** Key Vault client options (tests: a credential and TLS trust for a local fake vault). */
  azure?: AzureKeyOptions;
  /** Where `.env` is looked for (default: the working directory). */
  cwd?: string;
  /** Called by `backup` once its file is created and open, before a byte is copied (tests swap the name there). */
  backupCreated?: (file: string) => Promise<void> | void;
}

/** The settings, read as the server reads them: the environment, then .env, then DATA_DIR/app.env. */
function settings(io: CliIo): Config {
  return loadSettings(io.env, io.cwd);
}

/** The settings of a command that opens the data directory (created if missing, with a clear error if it cannot be). */
function dataSettings(io: CliIo): Config {
  const config = settings(io);
  ensureDataDir(config.dataDir);
  return config;
}

const USAGE = `usage:
  preview-gate --version                            print the version
  preview-gate <command> --help                     a command's usage, with examples
  preview-gate secret set <owner/repo> upload-key   store the repository's upload secret (stdin, or generated)
  preview-gate secret list [owner/repo]             the stored secrets' names and when they were set (never values)
  preview-gate secret delete <owner/repo> <name>    delete a stored secret (the repository's uploads stop)
  preview-gate backup <file>                        copy the database, consistent while the server runs
  preview-gate verify <PUBLIC_URL> [--connect host:port]
                                                    check a live deployment from outside, one line per check
  preview-gate cleanup                              remove builds of PRs closed longer than CLEANUP_AFTER_HOURS
  preview-gate reconcile                            run the sweep now: every open PR re-decided from GitHub's facts
  preview-gate keys rotate                          re-wrap every account and user key under the current key (resumable)
  preview-gate usage [--json]                       per account: repositories, builds, bytes, uploads this month
  preview-gate audit [--json]                       who signed in, opened hidden previews, published or hid (90 days)
  preview-gate sessions revoke <login|github id>    sign a user out everywhere: dashboard and hidden previews
  preview-gate migrate-storage [--concurrency 16]   copy the stored files of builds into S3_BUCKET (resumable, verified)
  preview-gate migrate-to-postgres [url]            copy the SQLite database into an empty PostgreSQL database
  preview-gate nginx [--listen 80] [--upstream 127.0.0.1:3000] [--tls-cert F --tls-key F]
                                                    print the nginx server blocks for this configuration
${UPLOAD_USAGE}`;

const MIN_SECRET_BYTES = 32;

/** The usage line(s) of each command, for `<command> --help` and for its argument errors. */
const COMMAND_USAGE: Record<string, string> = {
  secret: `  preview-gate secret set <owner/repo> upload-key
  preview-gate secret list [owner/repo]
  preview-gate secret delete <owner/repo> <name>
examples:
  openssl rand -base64 32 | preview-gate secret set octo-org/docs upload-key
  preview-gate secret set octo-org/docs upload-key        (on a terminal: generated, printed once)
  preview-gate secret list octo-org/docs
  preview-gate secret delete octo-org/docs upload-key`,
  backup: `  preview-gate backup <file>
example:
  preview-gate backup /backups/preview-gate-$(date +%F).sqlite`,
  cleanup: `  preview-gate cleanup
example:
  docker compose exec app node bin/preview-gate.js cleanup`,
  reconcile: `  preview-gate reconcile
example:
  docker compose exec app node bin/preview-gate.js reconcile`,
  keys: `  preview-gate keys rotate
example:
  preview-gate keys rotate        (again if it was interrupted)`,
  usage: `  preview-gate usage [--json]
example:
  preview-gate usage --json | jq '.accounts[0]'`,
  audit: `  preview-gate audit [--json]
example:
  preview-gate audit | head -20`,
  sessions: `  preview-gate sessions revoke <login|github id>
example:
  preview-gate sessions revoke octocat`,
  'migrate-to-postgres': `  preview-gate migrate-to-postgres [postgres://user@host:5432/database]
  (stop the server first; the database must be empty; DATA_DIR says which SQLite database is copied; without the
  argument the target is DATABASE_URL. Keep the password off the command line, where every local user sees it:
  set PGPASSWORD, or give the whole URL in DATABASE_URL)
example:
  PGPASSWORD=… preview-gate migrate-to-postgres postgres://preview_gate@db.internal:5432/preview_gate`,
  nginx: `  preview-gate nginx [--listen 80] [--upstream 127.0.0.1:3000] [--tls-cert F --tls-key F]
example:
  preview-gate nginx --upstream 127.0.0.1:3000 --tls-cert /etc/ssl/fullchain.pem --tls-key /etc/ssl/privkey.pem > /etc/nginx/conf.d/preview-gate.conf`,
  'migrate-storage': `  preview-gate migrate-storage [--concurrency 16]   (S3_BUCKET, S3_ENDPOINT, S3_REGION and credentials from the environment)
example:
  S3_BUCKET=previews S3_ENDPOINT=https://s3.example.net preview-gate migrate-storage   (again after an interruption: sends what is missing)`,
  upload: `${UPLOAD_USAGE}
examples:
  preview-gate upload dist --pr 12 --sha \${{ github.event.pull_request.head.sha }} --url https://uploads.example.com   (GitHub Actions, OIDC: the PR's head, not $GITHUB_SHA, the merge commit)
  PREVIEW_GATE_SECRET=… preview-gate upload site.tgz --pr 12 --sha 0123abc… --url https://uploads.example.com --repo octo-org/docs`,
  verify: `  preview-gate verify <PUBLIC_URL> [--connect host:port]   (PREVIEW_DOMAIN and WEBHOOK_SECRET from the environment)
examples:
  preview-gate verify https://uploads.example.com
  preview-gate verify https://uploads.example.com --connect 127.0.0.1:443   (before DNS points at this host)`,
};

/** A wrong argument: the sentence says which; exit code 2 with the command's usage. */
class ArgumentError extends Error {
  constructor(
    readonly command: string,
    message: string,
  ) {
    super(message);
  }
}

const isHelp = (args: string[]) => args.some((a) => a === '--help' || a === '-h');

/** Runs one CLI command; returns the exit code. */
export async function runCli(argv: string[], io: CliIo): Promise<number> {
  const [command, sub, ...rest] = argv;
  try {
    if (command === undefined || command === 'help' || command === '--help' || command === '-h') {
      (command === undefined ? io.stderr : io.stdout).write(`${USAGE}\n`);
      return command === undefined ? 2 : 0;
    }
    if (command === '--version' || command === '-v' || command === 'version') {
      io.stdout.write(`preview-gate ${packageVersion()}\n`);
      return 0;
    }
    if (!(command in COMMAND_USAGE)) throw new ArgumentError('', `unknown command "${command}".`);
    if (isHelp(argv.slice(1))) {
      io.stdout.write(`usage:\n${COMMAND_USAGE[command]}\n`);
      return 0;
    }
    if (command === 'upload') return await runUpload(argv.slice(1), io);
    if (command === 'verify') return await verify(argv.slice(1), io);
    if (command === 'nginx') return printNginx(argv.slice(1), io);
    if (command === 'usage') return await usage(argv.slice(1), io);
    if (command === 'audit') return await audit(argv.slice(1), io);
    if (command === 'migrate-storage') return await migrateToBucket(argv.slice(1), io);
    if (command === 'sessions') {
      if (sub !== 'revoke' || rest.length !== 1) throw new ArgumentError(command, 'say "sessions revoke" and one user: a login or a GitHub id.');
      return await revokeSessions(rest[0]!, io);
    }
    if (command === 'secret') {
      if (sub === 'list') return await listSecrets(rest, io);
      if (sub === 'delete') return await deleteSecret(rest, io);
      if (sub !== 'set') throw new ArgumentError(command, sub === undefined ? 'say "secret set", "secret list" or "secret delete".' : `unknown subcommand "secret ${sub}"; say "secret set", "secret list" or "secret delete".`);
      return await setSecret(rest, io);
    }
    if (command === 'keys') {
      if (sub !== 'rotate' || rest.length) throw new ArgumentError(command, 'the only keys command is "keys rotate".');
      return await rotate(io);
    }
    if (command === 'migrate-to-postgres') {
      // Without an argument the target is DATABASE_URL: a command line (and its password) is visible to every
      // local user in `ps` and stays in shell history.
      const url = sub ?? io.env.DATABASE_URL;
      if (url === undefined || rest.length || !/^postgres(ql)?:\/\/\S+$/.test(url)) {
        throw new ArgumentError(command, 'give one PostgreSQL URL, like postgres://user@host:5432/database (or set DATABASE_URL).');
      }
      return await migrateToPostgresCommand(url, io);
    }
    if (command === 'backup') {
      if (sub === undefined || rest.length) throw new ArgumentError(command, 'give one file to write the backup to.');
      return await backup(sub, io);
    }
    if (sub !== undefined) throw new ArgumentError(command, `"${command}" takes no arguments (got "${sub}").`);
    if (command === 'cleanup') return await cleanup(io);
    return await reconcile(io);
  } catch (err) {
    if (err instanceof ArgumentError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      const which = err instanceof ArgumentError ? err.command : (command ?? '');
      io.stderr.write(`preview-gate: ${parseArgsMessage(err as Error)}\nusage:\n${COMMAND_USAGE[which] ?? USAGE}\n`);
      return 2;
    }
    const msg = err instanceof ConfigError ? `configuration error: ${err.message}` : (err as Error).message;
    io.stderr.write(`preview-gate: ${msg}\n`);
    return 1;
  }
}


/** `migrate-to-postgres <url>`: the SQLite database of DATA_DIR copied into PostgreSQL, rows counted per table. */
async function migrateToPostgresCommand(url: string, io: CliIo): Promise<number> {
  const config = settings(io);
  // Loaded here only: the PostgreSQL driver is no part of an embedded deployment's other commands.
  const { migrateToPostgres } = await import('./db/migrate-to-postgres.js');
  const copied = await migrateToPostgres(config.databaseFile, url);
  for (const { table, rows } of copied) io.stdout.write(`${table}: ${rows} rows\n`);
  const total = copied.reduce((sum, t) => sum + t.rows, 0);
  io.stdout.write(`copied ${total} rows into PostgreSQL; set DATABASE_URL to that database for every server and command (DATA_DIR/app.env holds it for all of them): without it they now refuse this DATA_DIR.\n`);
  return 0;
}

/** `verify <PUBLIC_URL>`: one line per check of a live deployment; exit 1 when any fails. */
async function verify(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { connect: { type: 'string' } }, strict: true });
  const [publicUrl] = positionals;
  if (!publicUrl || positionals.length !== 1 || !/^https?:\/\/[^/\s]+/.test(publicUrl)) throw new ArgumentError('verify', 'give the deployment\'s PUBLIC_URL, like https://uploads.example.com.');
  if (values.connect !== undefined && !/^[A-Za-z0-9.[\]:-]+:[0-9]{1,5}$/.test(values.connect)) throw new ArgumentError('verify', '--connect must be host:port.');
  const config = loadSettings(io.env, io.cwd, { partialCredentials: true });
  const ok = await verifyDeployment(
    { publicUrl, previewDomain: config.previewDomain, webhookSecret: config.webhookSecret, connect: values.connect },
    (line) => io.stdout.write(`${line}\n`),
  );
  return ok ? 0 : 1;
}

/**
 * Creates `file` empty and 0600, and keeps it open: O_EXCL refuses an existing file and a symbolic link (dangling
 * or not, planted by someone else), and everything is then written through this descriptor, never by name again,
 * so a link swapped in at the name after its creation is never followed either. The secrets' database is never
 * readable by others, not even for the moments of the copy.
 */
async function createPrivateFile(file: string): Promise<fs.promises.FileHandle> {
  const { O_CREAT, O_EXCL, O_WRONLY, O_NOFOLLOW } = fs.constants;
  try {
    return await fs.promises.open(file, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW, 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST' || code === 'ELOOP') throw new Error(`${file} already exists (a file or a symbolic link); choose a new file name.`);
    throw new Error(`cannot create ${file}: ${(err as Error).message}.`);
  }
}

/**
 * `backup <file>`: SQLite's online backup of the database, consistent while the server writes. With it and
 * the key (the local master key file, or the Key Vault key id) a new data directory is whole again; builds
 * can be uploaded again by CI. SQLite writes its copy by name, so it writes into a folder of this user's own
 * (0700, in the system's sticky temporary folder), and the copy is then poured into the file created above.
 */
const PG_BACKUP_ADVICE = 'backup copies the SQLite database; with DATABASE_URL set, back PostgreSQL up with pg_dump (docs/operations.md).';

async function backup(file: string, io: CliIo): Promise<number> {
  const config = dataSettings(io);
  // Refused before the file is created: nothing is left behind.
  if (config.databaseUrl) throw new Error(PG_BACKUP_ADVICE);
  const target = await createPrivateFile(file);
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-backup-'));
  try {
    await io.backupCreated?.(file);
    const copy = path.join(scratch, 'backup.sqlite');
    const db = await openDatabase(config);
    try {
      // SQLite's online backup; a PostgreSQL database is backed up with pg_dump (docs/operations.md).
      if (!(db instanceof SqliteDatabase)) throw new Error(PG_BACKUP_ADVICE);
      await db.backup(copy);
    } finally {
      await db.close();
    }
    await pourInto(copy, target);
    await target.sync();
  } catch (err) {
    await removeIfStillOurs(file, target); // nothing partial left
    throw err;
  } finally {
    await target.close();
    fs.rmSync(scratch, { recursive: true, force: true });
  }
  const key = config.keyProvider === 'local' ? config.masterKeyFile : 'access to AZURE_KEY_ID';
  io.stdout.write(`Backed up the database to ${file}. Keep a copy of ${key} as well, stored apart from the database copies: without the key the secrets cannot be read.\n`);
  return 0;
}

/** Copies `file` into an open handle, a MiB at a time (a database can be larger than memory should hold). */
async function pourInto(file: string, target: fs.promises.FileHandle): Promise<void> {
  const source = await fs.promises.open(file, 'r');
  try {
    const chunk = Buffer.allocUnsafe(1 << 20);
    for (;;) {
      const { bytesRead } = await source.read(chunk, 0, chunk.length, null);
      if (bytesRead === 0) return;
      await target.write(chunk, 0, bytesRead);
    }
  } finally {
    await source.close();
  }
}

/** Unlinks `file` only while the name still holds the file this process created (not what was swapped in). */
async function removeIfStillOurs(file: string, handle: fs.promises.FileHandle): Promise<void> {
  const [ours, named] = await Promise.all([handle.stat(), fs.promises.lstat(file).catch(() => undefined)]);
  if (named && named.ino === ours.ino && named.dev === ours.dev) await fs.promises.unlink(file);
}

/**
 * `secret set <owner/repo> upload-key`, like `gh secret set`: a piped value is stored as it is (at least 32
 * bytes, one trailing newline dropped); on a terminal 32 random bytes are generated and printed once.
 */
async function setSecret(args: string[], io: CliIo): Promise<number> {
  const [slug, name] = args;
  if (!slug) throw new ArgumentError('secret', 'name the repository: secret set <owner/repo> upload-key.');
  if (!isGitHubRepositoryName(slug)) {
    throw new ArgumentError('secret', `"${slug}" is not a repository: write it as <owner>/<repo>.`);
  }
  if (name !== UPLOAD_SECRET_NAME) throw new ArgumentError('secret', `the only secret is "${UPLOAD_SECRET_NAME}"${name ? ` (got "${name}")` : ''}.`);
  if (args.length !== 2) throw new ArgumentError('secret', `unexpected argument "${args[2]}".`);
  let value: Buffer;
  let generated = false;
  if (io.stdin.isTTY) {
    value = Buffer.from(crypto.randomBytes(32).toString('base64url'));
    generated = true;
  } else {
    value = await readAll(io.stdin);
    if (value.at(-1) === 0x0a) value = value.subarray(0, value.at(-2) === 0x0d ? -2 : -1);
    // Nothing piped and no terminal (stdin is /dev/null: a CI step, `docker exec` without -i): say how to give it.
    if (value.length === 0) {
      io.stderr.write(
        `preview-gate: no value came on standard input, and there is no terminal to generate one on: pipe the value in (openssl rand -base64 32 | preview-gate secret set ${slug} ${UPLOAD_SECRET_NAME}), or run the command on a terminal to have one generated and printed once; nothing was stored.\n`,
      );
      return 1;
    }
    if (value.length < MIN_SECRET_BYTES) {
      io.stderr.write(`preview-gate: the secret must be at least ${MIN_SECRET_BYTES} bytes (got ${value.length}); nothing was stored.\n`);
      return 1;
    }
  }
  const core = await openCore(dataSettings(io), io.azure);
  let installed: boolean;
  try {
    const repo = await core.registry.ensureRepository(slug);
    await core.secrets.set(repo.accountId, repo.id, UPLOAD_SECRET_NAME, value);
    installed = repo.installed && repo.githubId !== null;
  } finally {
    await core.db.close();
  }
  if (!installed) {
    io.stderr.write(`Note: no installation of the GitHub App on ${slug} has been seen yet; its uploads are refused until the app is installed there.\n`);
  }
  if (generated) {
    io.stdout.write(`${value.toString()}\n`);
    io.stderr.write(`Stored the upload secret of ${slug}. It is shown only this once: save it in your CI's secrets now.\n`);
  } else {
    io.stderr.write(`Stored the upload secret of ${slug}.\n`);
  }
  return 0;
}

/** `secret list [owner/repo]`: names and when each was last set; values are never read (nor decrypted). */
async function listSecrets(args: string[], io: CliIo): Promise<number> {
  const [slug, extra] = args;
  if (extra !== undefined) throw new ArgumentError('secret', `unexpected argument "${extra}".`);
  if (slug !== undefined && !isGitHubRepositoryName(slug)) throw new ArgumentError('secret', `"${slug}" is not a repository: write it as <owner>/<repo>.`);
  const db = await openDatabase(dataSettings(io));
  try {
    const rows = await db.orm
      .select({ repository: repositories.fullName, name: secrets.name, setAt: secrets.createdAt })
      .from(secrets)
      .innerJoin(repositories, eq(repositories.id, secrets.repositoryId))
      .where(slug ? sql`lower(${repositories.fullName}) = lower(${slug})` : undefined)
      .orderBy(repositories.fullName, secrets.name);
    for (const r of rows) io.stdout.write(`${r.repository.padEnd(40)} ${r.name.padEnd(12)} set ${r.setAt.toISOString()}\n`);
    if (!rows.length) io.stderr.write(slug ? `No secret is stored for ${slug}.\n` : 'No secret is stored.\n');
    return 0;
  } finally {
    await db.close();
  }
}

/** `secret delete <owner/repo> <name>`: the repository's uploads are refused from then on. */
async function deleteSecret(args: string[], io: CliIo): Promise<number> {
  const [slug, name, extra] = args;
  if (!slug || !name) throw new ArgumentError('secret', 'name the repository and the secret: secret delete <owner/repo> <name>.');
  if (extra !== undefined) throw new ArgumentError('secret', `unexpected argument "${extra}".`);
  if (!isGitHubRepositoryName(slug)) throw new ArgumentError('secret', `"${slug}" is not a repository: write it as <owner>/<repo>.`);
  const db = await openDatabase(dataSettings(io));
  try {
    const deleted = await db.transaction(async (tx) => {
      const repo = await first(tx.select({ id: repositories.id }).from(repositories).where(sql`lower(${repositories.fullName}) = lower(${slug})`).limit(1));
      if (!repo) return 0;
      return (await tx.delete(secrets).where(and(eq(secrets.repositoryId, repo.id), eq(secrets.name, name))).returning({ id: secrets.id })).length;
    });
    if (!deleted) {
      io.stderr.write(`No secret "${name}" is stored for ${slug}; nothing was deleted.\n`);
      return 1;
    }
    io.stdout.write(`Deleted the secret "${name}" of ${slug}; uploads to ${slug} are refused until a new one is set.\n`);
    return 0;
  } finally {
    await db.close();
  }
}

/**
 * Runs `task` with the previews of this data directory and the GitHub App from the environment (the commands
 * that ask GitHub: cleanup, reconcile); the database is closed after it, whatever happens.
 */
async function withGitHub(io: CliIo, command: string, task: (parts: ReturnType<typeof createPreviews>) => Promise<number>): Promise<number> {
  const config = dataSettings(io);
  if (!config.appConfigured) throw new Error(`${command} asks GitHub: set APP_ID, PRIVATE_KEY (or PRIVATE_KEY_PATH) and WEBHOOK_SECRET.`);
  const log = pino({ level: config.logLevel ?? 'warn' }, io.stderr);
  const core = await openCore(config, io.azure);
  try {
    return await task(createPreviews(core, createMetrics(), log, probotFromEnv(config, log, gatherEnvironment(io.env, io.cwd))));
  } finally {
    await core.db.close();
  }
}

/** One cleanup pass, as the server runs every 15 minutes; GitHub must be reachable (nothing is deleted otherwise). */
function cleanup(io: CliIo): Promise<number> {
  return withGitHub(io, 'cleanup', async ({ previews }) => {
    const { removedPrs, skipped, why, freed } = await previews.cleanup();
    io.stdout.write(`Removed the builds of ${removedPrs} closed pull request(s); ${skipped} skipped${skipped ? ':' : '.'}\n`);
    for (const line of why) io.stdout.write(`  ${line}\n`);
    io.stdout.write(`Removed ${freed.objects} stored file(s) no build uses any more (${freed.bytes} bytes).\n`);
    return 0;
  });
}

/**
 * `reconcile`: the sweep the server runs every RECONCILE_INTERVAL_MINUTES, now. What GitHub could not answer
 * is left in the queue, which the server works through.
 */
function reconcile(io: CliIo): Promise<number> {
  return withGitHub(io, 'reconcile', async ({ sweep }) => {
    const r = await sweep!.run();
    io.stdout.write(
      `Swept ${r.installations} installation(s), ${r.repositories} repositories, ${r.pullRequests} open pull request(s): ` +
        `${r.changed} changed visibility, ${r.queued} queued for retry, ${r.overBudget} installation(s) left for later (rate limit).\n`,
    );
    return 0;
  });
}

/**
 * `migrate-storage`: the files of this data directory's builds (its content store) into S3_BUCKET; what the
 * bucket holds already is passed over, so it is run again after an interruption. Exit 1 when any object failed.
 */
async function migrateToBucket(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { concurrency: { type: 'string' } }, strict: true });
  if (positionals.length) throw new ArgumentError('migrate-storage', `"migrate-storage" takes no arguments (got "${positionals[0]}").`);
  const concurrency = values.concurrency === undefined ? 16 : Number(values.concurrency);
  if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 256) throw new ArgumentError('migrate-storage', '--concurrency must be a whole number from 1 to 256.');
  const config = dataSettings(io);
  if (!config.s3) throw new ConfigError('S3_BUCKET must be set: migrate-storage copies the stored files into that bucket');
  const bucket = S3Objects.fromSettings(config.s3);
  try {
    const where = `s3://${config.s3.bucket}${config.s3.endpoint ? ` at ${config.s3.endpoint}` : ''}`;
    await bucket.check().catch((err: unknown) => {
      throw new Error(`${where} cannot be used: ${bucketProblem(err)}.`);
    });
    const counts = await migrateStorage(new BuildStore(config.buildsDir).objects, bucket, { concurrency });
    io.stdout.write(
      `Copied ${counts.copied} object(s) (${counts.copiedBytes} bytes) into ${where}, each read back and verified by sha256 (${counts.verified}); ` +
        `${counts.alreadyThere} already there; ${counts.gone} removed from DATA_DIR meanwhile; ${counts.failed.length} failed.\n`,
    );
    for (const line of counts.failed) io.stderr.write(`  ${line}\n`);
    if (counts.failed.length) io.stderr.write('Run migrate-storage again to retry the failed objects (the copied ones are passed over).\n');
    return counts.failed.length ? 1 : 0;
  } finally {
    bucket.close();
  }
}

/** Why a bucket cannot be used, in words (the SDK's errors of HEAD requests carry a status, not a message). */
function bucketProblem(err: unknown): string {
  const status = statusOf(err);
  if (status === 403) return 'the credentials are refused (403)';
  if (status === 404) return 'there is no such bucket (404)';
  if (status) return `it answered ${status}`;
  return `no answer (${(err as Error).message})`;
}

/** `keys rotate`: every account and user DEK re-wrapped under the current key; run it again if it was interrupted. */
async function rotate(io: CliIo): Promise<number> {
  const config = dataSettings(io);
  const core = await openCore(config, io.azure);
  try {
    const result = await rotateKeys(core.db, core.keys);
    if (result.newLocalKey) io.stderr.write(`Made a new local master key (${result.keyId}); the old one is kept until every account has moved.\n`);
    io.stdout.write(`Re-wrapped ${result.rewrapped} account key(s) and ${result.rewrappedUsers} user key(s) under ${result.keyId}; ${result.alreadyCurrent} account key(s) already were.\n`);
    for (const removed of result.removedKeys) io.stderr.write(`Deleted the retired master key ${removed}: nothing is wrapped by it any more.\n`);
    if (config.keyProvider === 'azure' && fs.existsSync(config.masterKeyFile)) {
      io.stderr.write(`${config.masterKeyFile} is no longer needed once this rotation is complete; back it up or delete it.\n`);
    }
    return 0;
  } finally {
    await core.db.close();
  }
}

async function usage(args: string[], io: CliIo): Promise<number> {
  const { values } = parseArgs({ args, options: { json: { type: 'boolean' } }, strict: true });
  // Reads the database only: no key service (and so no Key Vault) is needed to count.
  const db = await openDatabase(dataSettings(io));
  try {
    const report = await usageReport(db);
    io.stdout.write(values.json ? `${JSON.stringify(report, null, 2)}\n` : formatUsage(report));
    return 0;
  } finally {
    await db.close();
  }
}

/** The audit trail, newest first: a line per event, or JSON. */
async function audit(args: string[], io: CliIo): Promise<number> {
  const { values } = parseArgs({ args, options: { json: { type: 'boolean' } }, strict: true });
  const db = await openDatabase(dataSettings(io));
  try {
    const events = await auditTrail(db);
    if (values.json) {
      io.stdout.write(`${JSON.stringify(events.map((e) => ({ ...e, at: e.at.toISOString() })), null, 2)}\n`);
      return 0;
    }
    for (const e of events) {
      io.stdout.write(`${e.at.toISOString()}  ${(e.user ?? '-').padEnd(20)} ${e.action.padEnd(12)} ${e.subject}${e.detail ? `  (${e.detail})` : ''}\n`);
    }
    if (!events.length) io.stdout.write('Nothing recorded yet.\n');
    return 0;
  } finally {
    await db.close();
  }
}

/** `sessions revoke`: a user signed out everywhere (a lost laptop, a maintainer who left). */
async function revokeSessions(who: string, io: CliIo): Promise<number> {
  const db = await openDatabase(dataSettings(io));
  try {
    const result = await revokeUserSessions(db, who);
    if (!result) {
      io.stderr.write(`No user "${who}" has signed in to the dashboard.\n`);
      return 1;
    }
    if ('ambiguous' in result) {
      io.stderr.write(`Two or more users have signed in as "${who}" (GitHub renames): revoke by GitHub id instead: ${result.ambiguous.join(', ')}. Nothing was revoked.\n`);
      return 1;
    }
    io.stdout.write(`Revoked ${result.revoked} session(s) of ${result.login} (GitHub id ${result.githubId}); their hidden-preview cookies stop working within 5 seconds.\n`);
    return 0;
  } finally {
    await db.close();
  }
}

function printNginx(args: string[], io: CliIo): number {
  const { values } = parseArgs({
    args,
    options: { listen: { type: 'string' }, upstream: { type: 'string' }, 'tls-cert': { type: 'string' }, 'tls-key': { type: 'string' } },
  });
  const cert = values['tls-cert'];
  const key = values['tls-key'];
  if (Boolean(cert) !== Boolean(key)) throw new ArgumentError('nginx', '--tls-cert and --tls-key go together.');
  if (values.listen !== undefined && !isListenAddress(values.listen)) {
    throw new ArgumentError('nginx', `--listen must be a port or address:port, like 80 or 127.0.0.1:8080 (got "${values.listen}").`);
  }
  if (values.upstream !== undefined && !(/:[0-9]+$/.test(values.upstream) && isListenAddress(values.upstream))) {
    throw new ArgumentError('nginx', `--upstream must be host:port of the Node process, like 127.0.0.1:3000 (got "${values.upstream}").`);
  }
  for (const file of [cert, key]) if (file && !fs.existsSync(file)) throw new ArgumentError('nginx', `${file} does not exist.`);
  const config = settings(io);
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

/** `80`, `127.0.0.1:8080`, `[::1]:8080`, `localhost:3000`: what nginx's `listen` and an upstream accept. */
function isListenAddress(value: string): boolean {
  const m = /^(?:(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9.-]+):)?([0-9]{1,5})$/.exec(value);
  return m !== null && Number(m[2]) >= 1 && Number(m[2]) <= 65535;
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.from(chunk as Buffer));
  return Buffer.concat(chunks);
}
