import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { parseEnv } from 'node:util';
import { z } from 'zod';

/** The typed settings of one preview-gate process; built once at start-up from the environment. */
export interface Config {
  port: number;
  publicUrl: string;
  previewDomain: string;
  /** `https` or `http`: preview URLs use PUBLIC_URL's scheme (nginx is rendered with TLS or without it for both). */
  previewScheme: 'https' | 'http';
  dataDir: string;
  buildsDir: string;
  databaseFile: string;
  /** PostgreSQL's connection URL when set (the database then lives there, not in DATA_DIR). Never logged: it can hold a password. */
  databaseUrl?: string;
  keyProvider: 'local' | 'azure';
  masterKeyFile: string;
  azureKeyId?: string;
  maxUploadBytes: number;
  maxBuildBytes: number;
  maxBuildFiles: number;
  cleanupAfterHours: number;
  /** Bytes of builds one account (org/user) may store. */
  maxAccountBytes: number;
  /** Builds one pull request may hold. */
  maxPrBuilds: number;
  oidcIssuer: string;
  /** GitHub API base, exactly as Probot's createProbot derives it from GHE_HOST / GHE_PROTOCOL. */
  githubApiUrl: string;
  /** How long one GitHub API request may take before the upload answers 503. */
  githubTimeoutMs: number;
  /** Retries of a failed GitHub request (5xx, network) before giving up. */
  githubRetries: number;
  /** Octokit's throttling (GitHub's advice: writes at least 1 s apart). Off only against a GitHub stand-in. */
  githubThrottle: boolean;
  settingsCacheMs: number;
  /** How often every open PR is re-decided from GitHub (the sweep); 0 turns the periodic sweep off. */
  reconcileIntervalMs: number;
  /** An upload body that sends nothing for this long is cut (408) and its claim released. */
  uploadIdleMs: number;
  /** Interface the Node process listens on. */
  host: string;
  /** The GitHub App's webhook secret: deliveries are checked against it before Probot sees them. */
  webhookSecret?: string;
  /** false when APP_ID / private key / webhook secret are missing: Probot's setup flow is served instead. */
  appConfigured: boolean;
  /** GitHub's web base for the sign-in (OAuth) pages: https://github.com, or the GHE host. */
  githubWebUrl: string;
  /** The GitHub App's client id and secret (its user authorization); without them nobody can sign in. */
  githubClientId?: string;
  githubClientSecret?: string;
  /** How long a dashboard session lasts. */
  sessionMs: number;
  /** pino's level; unset: info for the server, warn for the CLI. */
  logLevel?: string;
  /** Fixes the setup flow's one-time token (a random one is printed in the log when unset). */
  setupToken?: string;
  /** Where builds are kept: `filesystem` (DATA_DIR) or `s3` (a bucket; a build is rows). */
  storage: 'filesystem' | 's3';
  /** The bucket, when S3_BUCKET is set: STORAGE=s3 needs it, and so does `migrate-storage` (run before the switch). */
  s3?: S3Settings;
  /** STORAGE=s3: how long an object no build references stays in the bucket before the cleanup removes it. */
  s3GcGraceHours: number;
}

/** An S3-compatible bucket (AWS S3, Ceph RGW, MinIO…), always addressed path-style: `<endpoint>/<bucket>/<key>`. */
export interface S3Settings {
  /** Unset: AWS S3 of `region`. */
  endpoint?: string;
  bucket: string;
  region: string;
  /** Unset: the AWS SDK's default chain (web identity, the instance's role, ~/.aws). */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
}

export class ConfigError extends Error {}

const MiB = 1024 * 1024;

const positiveInt = (what: string) =>
  z
    .string()
    .regex(/^[1-9][0-9]*$/, `must be a positive whole number${what}`)
    .transform(Number)
    .refine(Number.isSafeInteger, 'is too large');

const absoluteUrl = z
  .string()
  .refine((v) => /^https?:\/\/[^/\s]+/.test(v) && URL.canParse(v), 'must be an absolute http(s) URL');

const schema = z.object({
  PORT: positiveInt('').refine((p) => p <= 65535, 'must be a port number from 1 to 65535').default(3000).describe("Port the Node process listens on (nginx proxies to it)."),
  PUBLIC_URL: absoluteUrl.optional().describe("Base URL of the upload and webhook host, as GitHub and CI reach it (also the OIDC audience). Unset: http://localhost:<PORT>."),
  PREVIEW_DOMAIN: z
    .string()
    .regex(/^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/, 'must be a lower-case DNS name such as previews.example.net')
    .default('localhost').describe("Domain under which previews are served: pr<N>-<sha7>--<site>.<PREVIEW_DOMAIN>. Use a registrable domain of its own."),
  DATA_DIR: z.string().min(1, 'must not be empty').default('./data').describe("Holds builds/, the SQLite database, the local master key and app.env (the setup flow's credentials)."),
  DATABASE_URL: z
    .string()
    .refine((v) => /^postgres(ql)?:\/\/[^/\s]/.test(v) && URL.canParse(v), 'must be a PostgreSQL URL: postgres://user:password@host:5432/database')
    .optional().describe("PostgreSQL's connection URL (postgres://user:password@host:5432/database): the database of every replica sharing it. Unset: SQLite in DATA_DIR (one process). It can hold a password: it is never logged."),
  KEY_PROVIDER: z.enum(['local', 'azure'], { message: 'must be "local" or "azure"' }).default('local').describe("Who wraps the encryption keys: local (DATA_DIR/master.key) or azure (Azure Key Vault)."),
  AZURE_KEY_ID: z
    .string()
    .regex(/^https:\/\/[^/]+\/keys\/[^/]+\/[0-9a-zA-Z]+$/, 'must be a versioned Key Vault key id: https://<vault>/keys/<name>/<version>')
    .optional().describe("Versioned Key Vault key id; required with KEY_PROVIDER=azure."),
  MAX_UPLOAD_BYTES: positiveInt(' of bytes').default(100 * MiB).describe("Largest compressed upload accepted (413 beyond)."),
  MAX_BUILD_BYTES: positiveInt(' of bytes').default(1024 * MiB).describe("Largest uncompressed build accepted."),
  MAX_BUILD_FILES: positiveInt('').default(50_000).describe("Most entries one build may hold."),
  MAX_ACCOUNT_BYTES: positiveInt(' of bytes').default(20 * 1024 * MiB).describe("Bytes of builds one account (organization or user) may store."),
  MAX_PR_BUILDS: positiveInt('').default(100).describe("Builds one pull request may hold."),
  CLEANUP_AFTER_HOURS: z
    .string()
    .regex(/^[0-9]+(\.[0-9]+)?$/, 'must be a number of hours (0 or more)')
    .transform(Number)
    .default(24).describe("How long builds of closed pull requests are kept."),
  OIDC_ISSUER: absoluteUrl.default('https://token.actions.githubusercontent.com').describe("Trusted issuer of GitHub Actions OIDC tokens."),
  GHE_HOST: z.string().regex(/^[A-Za-z0-9.-]+(:[0-9]+)?$/, 'must be a host name, optionally with :port').optional().describe("GitHub Enterprise Server host; the API base becomes <GHE_PROTOCOL>://<GHE_HOST>/api/v3. Unset: github.com."),
  GHE_PROTOCOL: z.enum(['https', 'http'], { message: 'must be "https" or "http"' }).default('https').describe("Scheme of GHE_HOST."),
  GITHUB_TIMEOUT_MS: positiveInt(' of milliseconds').default(10_000).describe("How long one GitHub request may take; past it an upload answers 503."),
  GITHUB_RETRIES: z.string().regex(/^[0-9]$/, 'must be a number of retries from 0 to 9').transform(Number).default(2).describe("Retries of a GitHub request that failed with 5xx or a network error."),
  GITHUB_THROTTLE: z.enum(['true', 'false'], { message: 'must be "true" or "false"' }).default('true').describe("Octokit's write throttling; false only against a local GitHub stand-in."),
  // How long `.github/preview-gate.yml` is trusted without asking GitHub again (a push changing it forgets it).
  SETTINGS_CACHE_SECONDS: z
    .string()
    .regex(/^(0|[1-9][0-9]*)$/, 'must be a whole number of seconds (0 turns the cache off)')
    .transform(Number)
    .default(60).describe("How long .github/preview-gate.yml is trusted without asking GitHub again (0: always ask)."),
  UPLOAD_IDLE_SECONDS: positiveInt(' of seconds').default(30).describe("An upload body that sends nothing for this long is cut (408)."),
  RECONCILE_INTERVAL_MINUTES: z
    .string()
    .regex(/^(0|[1-9][0-9]*|[0-9]+\.[0-9]+)$/, 'must be a number of minutes, such as 15 or 0.5 (0 turns the periodic sweep off)')
    .transform(Number)
    .default(15).describe("How often every open pull request is re-decided from GitHub (the sweep), in minutes (0.5: every 30 s); 0 turns it off."),
  // Loopback by default: nginx on this machine reaches Node, nobody else does (the image sets 0.0.0.0 for its network).
  HOST: z.string().min(1).default('127.0.0.1').describe("Interface the Node process listens on: loopback by default, so only nginx on this host reaches it; 0.0.0.0 is an explicit choice (the image sets it for its network)."),
  APP_ID: z.string().regex(/^[0-9]+$/, 'must be the numeric GitHub App id').optional().describe("The GitHub App id. Set it with PRIVATE_KEY (or PRIVATE_KEY_PATH) and WEBHOOK_SECRET; none of the three: the setup flow runs."),
  WEBHOOK_SECRET: z.string().optional().describe("The GitHub App's webhook secret."),
  PRIVATE_KEY: z.string().optional().describe("The GitHub App's private key (PEM; \\n escapes allowed)."),
  PRIVATE_KEY_PATH: z.string().optional().describe("File holding the GitHub App's private key (instead of PRIVATE_KEY)."),
  GITHUB_CLIENT_ID: z.string().regex(/^[A-Za-z0-9._-]+$/, 'must be the GitHub App\'s client id (Iv1.… or Iv23…)').optional().describe("The GitHub App's client id, for sign-in to the dashboard (with GITHUB_CLIENT_SECRET)."),
  GITHUB_CLIENT_SECRET: z.string().optional().describe("The GitHub App's client secret (with GITHUB_CLIENT_ID)."),
  SESSION_HOURS: positiveInt(' of hours').default(12).describe("How long a dashboard session lasts, in hours."),
  LOG_LEVEL: z
    .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], { message: 'must be one of fatal, error, warn, info, debug, trace, silent' })
    .optional()
    .describe('How much is logged. Unset: info for the server, warn for the CLI.'),
  SETUP_TOKEN: z.string().optional().describe("Fixes the setup flow's one-time token (a random one is printed in the log when unset)."),
  STORAGE: z.enum(['filesystem', 's3'], { message: 'must be "filesystem" or "s3"' }).default('filesystem').describe("Where builds are kept: filesystem (DATA_DIR/builds) or s3 (S3_BUCKET). `preview-gate migrate-storage` copies a filesystem deployment's stored files into the bucket ahead of the switch."),
  S3_ENDPOINT: absoluteUrl.optional().describe("URL of an S3-compatible engine (Ceph RGW, MinIO…), addressed path-style: <S3_ENDPOINT>/<S3_BUCKET>/<key>. Unset: AWS S3 of S3_REGION."),
  S3_BUCKET: z
    .string()
    .regex(/^(?=.{3,63}$)[a-z0-9][a-z0-9.-]*[a-z0-9]$/, 'must be an S3 bucket name: 3 to 63 lower-case letters, digits, dots or hyphens')
    .optional().describe("The bucket holding the files of builds (objects/<repository id>/<sha256>); required with STORAGE=s3. Keep it private: nothing in it is meant to be fetched directly."),
  S3_REGION: z.string().regex(/^[a-z0-9-]+$/, 'must be a region name such as us-east-1').default('us-east-1').describe("The bucket's region (what the request signatures name)."),
  S3_GC_GRACE_HOURS: z
    .string()
    .regex(/^[0-9]+(\.[0-9]+)?$/, 'must be a number of hours (0 or more)')
    .transform(Number)
    .default(24)
    .describe("With STORAGE=s3: hours an object that no build references (and that no upload referenced meanwhile) stays in the bucket before the cleanup deletes it; an upload in flight longer than this may have to be sent again."),
  AWS_ACCESS_KEY_ID: z.string().optional().describe("The bucket's access key id (with AWS_SECRET_ACCESS_KEY). Unset: the AWS SDK's default chain (web identity, the instance's role, ~/.aws)."),
  AWS_SECRET_ACCESS_KEY: z.string().optional().describe("The bucket's secret access key (with AWS_ACCESS_KEY_ID)."),
  AWS_SESSION_TOKEN: z.string().optional().describe("The session token of temporary credentials (with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)."),
});

/** The variables of the configuration, each with its zod type, default and description (docs/operations.md). */
export const configSchema = schema;

/**
 * Where the settings come from, first found wins (the same for the server and every CLI command):
 *   1. the process environment;
 *   2. `.env` in the working directory;
 *   3. `DATA_DIR/app.env`, written by the setup flow (DATA_DIR itself from 1 or 2).
 * A variable set to an empty string is set (and refused by loadConfig), not unset.
 */
export function gatherEnvironment(env: NodeJS.ProcessEnv = process.env, cwd = process.cwd()): NodeJS.ProcessEnv {
  const dotEnv = readEnvFile(path.join(cwd, '.env'));
  const given = env.DATA_DIR ?? dotEnv.DATA_DIR;
  if (given?.trim() === '') return { ...dotEnv, ...env }; // refused by loadConfig, naming DATA_DIR
  const dataDir = path.resolve(cwd, given ?? './data');
  const appEnv = readEnvFile(path.join(dataDir, APP_ENV_FILE));
  return { ...appEnv, ...dotEnv, ...env, DATA_DIR: dataDir };
}

/** The file the setup flow writes the GitHub App's credentials to, in DATA_DIR. */
export const APP_ENV_FILE = 'app.env';

function readEnvFile(file: string): Record<string, string> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new ConfigError(`${file} cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  return parseEnv(text) as Record<string, string>;
}

export interface LoadOptions {
  /** `verify` needs only WEBHOOK_SECRET, from an operator's machine without the app's key. */
  partialCredentials?: boolean;
}

/** gatherEnvironment → loadConfig: what the server and the CLI start from. */
export function loadSettings(env: NodeJS.ProcessEnv = process.env, cwd = process.cwd(), options?: LoadOptions): Config {
  return loadConfig(gatherEnvironment(env, cwd), options);
}

/**
 * Environment → Config. A variable set to an empty string is an error naming it (`PREVIEW_DOMAIN=` is not
 * "localhost"). Throws ConfigError with one line naming the first bad variable.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, options: LoadOptions = {}): Config {
  const present = Object.fromEntries(
    Object.keys(schema.shape)
      .map((k) => [k, env[k]?.trim()])
      .filter(([, v]) => v !== undefined),
  );
  const empty = Object.keys(present).find((k) => present[k] === '');
  if (empty) throw new ConfigError(`${empty} is set but empty: give it a value, or remove the variable to use its default`);
  const parsed = schema.safeParse(present);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const name = String(issue.path[0]);
    const value = present[name] !== undefined && !/SECRET|KEY$|TOKEN$|^DATABASE_URL$/.test(name) ? ` (got "${present[name]}")` : '';
    throw new ConfigError(`${name} ${issue.message}${value}`);
  }
  const e = parsed.data;
  if (Boolean(e.GITHUB_CLIENT_ID) !== Boolean(e.GITHUB_CLIENT_SECRET)) {
    throw new ConfigError(`${e.GITHUB_CLIENT_ID ? 'GITHUB_CLIENT_SECRET' : 'GITHUB_CLIENT_ID'} must be set too: sign-in needs the GitHub App's client id and secret`);
  }
  if (e.KEY_PROVIDER === 'azure' && !e.AZURE_KEY_ID) {
    throw new ConfigError('AZURE_KEY_ID must be set when KEY_PROVIDER is "azure"');
  }
  // Checked only when a bucket is configured: AWS variables a host sets for other programs never stop a filesystem deployment.
  if (e.S3_BUCKET && Boolean(e.AWS_ACCESS_KEY_ID) !== Boolean(e.AWS_SECRET_ACCESS_KEY)) {
    throw new ConfigError(`${e.AWS_ACCESS_KEY_ID ? 'AWS_SECRET_ACCESS_KEY' : 'AWS_ACCESS_KEY_ID'} must be set too: the bucket's credentials are an access key id and its secret`);
  }
  if (e.STORAGE === 's3' && !e.S3_BUCKET) throw new ConfigError('S3_BUCKET must be set when STORAGE is "s3"');
  if (options.partialCredentials !== true) checkCredentialsComplete(e);
  checkPrivateKey(e.PRIVATE_KEY, e.PRIVATE_KEY_PATH);
  const dataDir = path.resolve(e.DATA_DIR);
  const publicUrl = (e.PUBLIC_URL ?? `http://localhost:${e.PORT}`).replace(/\/+$/, '');
  return {
    port: e.PORT,
    publicUrl,
    previewScheme: publicUrl.startsWith('https:') ? 'https' : 'http',
    previewDomain: e.PREVIEW_DOMAIN,
    dataDir,
    buildsDir: path.join(dataDir, 'builds'),
    databaseFile: path.join(dataDir, 'preview-gate.sqlite'),
    databaseUrl: e.DATABASE_URL,
    keyProvider: e.KEY_PROVIDER,
    masterKeyFile: path.join(dataDir, 'master.key'),
    azureKeyId: e.AZURE_KEY_ID,
    maxUploadBytes: e.MAX_UPLOAD_BYTES,
    maxBuildBytes: e.MAX_BUILD_BYTES,
    maxBuildFiles: e.MAX_BUILD_FILES,
    cleanupAfterHours: e.CLEANUP_AFTER_HOURS,
    maxAccountBytes: e.MAX_ACCOUNT_BYTES,
    maxPrBuilds: e.MAX_PR_BUILDS,
    oidcIssuer: e.OIDC_ISSUER.replace(/\/+$/, ''),
    githubApiUrl: e.GHE_HOST ? `${e.GHE_PROTOCOL}://${e.GHE_HOST}/api/v3` : 'https://api.github.com',
    githubTimeoutMs: e.GITHUB_TIMEOUT_MS,
    githubRetries: e.GITHUB_RETRIES,
    githubThrottle: e.GITHUB_THROTTLE === 'true',
    settingsCacheMs: e.SETTINGS_CACHE_SECONDS * 1000,
    reconcileIntervalMs: Math.round(e.RECONCILE_INTERVAL_MINUTES * 60_000),
    uploadIdleMs: e.UPLOAD_IDLE_SECONDS * 1000,
    host: e.HOST,
    webhookSecret: e.WEBHOOK_SECRET,
    appConfigured: Boolean(e.APP_ID && (e.PRIVATE_KEY || e.PRIVATE_KEY_PATH) && e.WEBHOOK_SECRET),
    githubWebUrl: e.GHE_HOST ? `${e.GHE_PROTOCOL}://${e.GHE_HOST}` : 'https://github.com',
    githubClientId: e.GITHUB_CLIENT_ID,
    githubClientSecret: e.GITHUB_CLIENT_SECRET,
    sessionMs: e.SESSION_HOURS * 3600_000,
    logLevel: e.LOG_LEVEL,
    setupToken: e.SETUP_TOKEN,
    storage: e.STORAGE,
    s3GcGraceHours: e.S3_GC_GRACE_HOURS,
    s3: e.S3_BUCKET ? s3Settings({ ...e, S3_BUCKET: e.S3_BUCKET }) : undefined,
  };
}

function s3Settings(e: { S3_ENDPOINT?: string; S3_BUCKET: string; S3_REGION: string; AWS_ACCESS_KEY_ID?: string; AWS_SECRET_ACCESS_KEY?: string; AWS_SESSION_TOKEN?: string }): S3Settings {
  return {
    endpoint: e.S3_ENDPOINT?.replace(/\/+$/, ''),
    bucket: e.S3_BUCKET,
    region: e.S3_REGION,
    credentials:
      e.AWS_ACCESS_KEY_ID && e.AWS_SECRET_ACCESS_KEY
        ? { accessKeyId: e.AWS_ACCESS_KEY_ID, secretAccessKey: e.AWS_SECRET_ACCESS_KEY, ...(e.AWS_SESSION_TOKEN ? { sessionToken: e.AWS_SESSION_TOKEN } : {}) }
        : undefined,
  };
}

/**
 * All three GitHub App credentials, or none (then the setup flow registers the app). Some but not all is a
 * mistake (a variable lost on the way): starting the setup flow then would register a second app.
 */
function checkCredentialsComplete(e: { APP_ID?: string; PRIVATE_KEY?: string; PRIVATE_KEY_PATH?: string; WEBHOOK_SECRET?: string }): void {
  const credentials: [string, unknown][] = [
    ['APP_ID', e.APP_ID],
    ['PRIVATE_KEY (or PRIVATE_KEY_PATH)', e.PRIVATE_KEY ?? e.PRIVATE_KEY_PATH],
    ['WEBHOOK_SECRET', e.WEBHOOK_SECRET],
  ];
  const set = credentials.filter(([, v]) => v).map(([k]) => k);
  const missing = credentials.filter(([, v]) => !v).map(([k]) => k);
  if (!set.length || !missing.length) return;
  throw new ConfigError(
    `${missing.join(' and ')} ${missing.length > 1 ? 'are' : 'is'} missing while ${set.join(' and ')} ${set.length > 1 ? 'are' : 'is'} set: ` +
      'set all three GitHub App credentials, or none of them to run the setup flow',
  );
}

/**
 * Creates DATA_DIR one level at a time. Node's recursive mkdir never returns when the system answers ENOENT for
 * a parent that exists (DATA_DIR=/proc/x: procfs refuses new entries with ENOENT), so it is not used here.
 */
export function ensureDataDir(dataDir: string): void {
  const missing: string[] = [];
  let dir = dataDir;
  while (!fs.existsSync(dir)) {
    missing.unshift(dir);
    const parent = path.dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  for (const d of missing) {
    try {
      fs.mkdirSync(d);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'error';
      if (code === 'EEXIST') continue;
      const who = code === 'EACCES' || code === 'EPERM' ? `, not writable by uid ${process.getuid?.() ?? '?'}` : '';
      throw new ConfigError(`DATA_DIR ${dataDir} cannot be created (${code} at ${d}${who}): choose a directory this user can write`);
    }
  }
  if (!fs.statSync(dataDir).isDirectory()) throw new ConfigError(`DATA_DIR ${dataDir} is not a directory`);
}

/**
 * The GitHub App's private key, checked at start so a pasted fragment says which variable is wrong (Probot's
 * own message is "privateKey option is required"). Probot accepts `\n` escapes in PRIVATE_KEY; so does this.
 */
function checkPrivateKey(inline: string | undefined, file: string | undefined): void {
  let pem = inline;
  let name = 'PRIVATE_KEY';
  if (!pem && file) {
    name = 'PRIVATE_KEY_PATH';
    try {
      pem = fs.readFileSync(file, 'utf8');
    } catch (err) {
      throw new ConfigError(`PRIVATE_KEY_PATH names a file that cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'}: ${file})`);
    }
  }
  if (!pem) return;
  try {
    crypto.createPrivateKey(pem.replace(/\\n/g, '\n'));
  } catch {
    throw new ConfigError(`${name} is not a PEM private key (the .pem file GitHub gave for the app, starting with -----BEGIN RSA PRIVATE KEY-----)`);
  }
}
