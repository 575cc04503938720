import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
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
  PORT: positiveInt('').refine((p) => p <= 65535, 'must be a port number from 1 to 65535').default(3000),
  PUBLIC_URL: absoluteUrl.optional(),
  PREVIEW_DOMAIN: z
    .string()
    .regex(/^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/, 'must be a lower-case DNS name such as previews.example.net')
    .default('localhost'),
  DATA_DIR: z.string().min(1, 'must not be empty').default('./data'),
  KEY_PROVIDER: z.enum(['local', 'azure'], { message: 'must be "local" or "azure"' }).default('local'),
  AZURE_KEY_ID: z
    .string()
    .regex(/^https:\/\/[^/]+\/keys\/[^/]+\/[0-9a-zA-Z]+$/, 'must be a versioned Key Vault key id: https://<vault>/keys/<name>/<version>')
    .optional(),
  MAX_UPLOAD_BYTES: positiveInt(' of bytes').default(100 * MiB),
  MAX_BUILD_BYTES: positiveInt(' of bytes').default(1024 * MiB),
  MAX_BUILD_FILES: positiveInt('').default(50_000),
  MAX_ACCOUNT_BYTES: positiveInt(' of bytes').default(20 * 1024 * MiB),
  MAX_PR_BUILDS: positiveInt('').default(100),
  CLEANUP_AFTER_HOURS: z
    .string()
    .regex(/^[0-9]+(\.[0-9]+)?$/, 'must be a number of hours (0 or more)')
    .transform(Number)
    .default(24),
  OIDC_ISSUER: absoluteUrl.default('https://token.actions.githubusercontent.com'),
  GHE_HOST: z.string().regex(/^[A-Za-z0-9.-]+(:[0-9]+)?$/, 'must be a host name, optionally with :port').optional(),
  GHE_PROTOCOL: z.enum(['https', 'http'], { message: 'must be "https" or "http"' }).default('https'),
  GITHUB_TIMEOUT_MS: positiveInt(' of milliseconds').default(10_000),
  GITHUB_RETRIES: z.string().regex(/^[0-9]$/, 'must be a number of retries from 0 to 9').transform(Number).default(2),
  GITHUB_THROTTLE: z.enum(['true', 'false'], { message: 'must be "true" or "false"' }).default('true'),
  // How long `.github/preview-gate.yml` is trusted without asking GitHub again (a push changing it forgets it).
  SETTINGS_CACHE_SECONDS: z
    .string()
    .regex(/^(0|[1-9][0-9]*)$/, 'must be a whole number of seconds (0 turns the cache off)')
    .transform(Number)
    .default(60),
  UPLOAD_IDLE_SECONDS: positiveInt(' of seconds').default(30),
  RECONCILE_INTERVAL_MINUTES: z
    .string()
    .regex(/^(0|[1-9][0-9]*)$/, 'must be a whole number of minutes (0 turns the periodic sweep off)')
    .transform(Number)
    .default(15),
  // Loopback by default: nginx on this machine reaches Node, nobody else does (the image sets 0.0.0.0 for its network).
  HOST: z.string().min(1).default('127.0.0.1'),
  APP_ID: z.string().regex(/^[0-9]+$/, 'must be the numeric GitHub App id').optional(),
  WEBHOOK_SECRET: z.string().optional(),
  PRIVATE_KEY: z.string().optional(),
  PRIVATE_KEY_PATH: z.string().optional(),
  GITHUB_CLIENT_ID: z.string().regex(/^[A-Za-z0-9._-]+$/, 'must be the GitHub App\'s client id (Iv1.… or Iv23…)').optional(),
  GITHUB_CLIENT_SECRET: z.string().optional(),
  SESSION_HOURS: positiveInt(' of hours').default(12),
});

/**
 * Environment → Config. Empty strings count as unset (as in a `.env` file with `VAR=`).
 * Throws ConfigError with one line naming the first bad variable.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const present = Object.fromEntries(
    Object.keys(schema.shape)
      .map((k) => [k, env[k]?.trim()])
      .filter(([, v]) => v !== undefined && v !== ''),
  );
  const parsed = schema.safeParse(present);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const name = String(issue.path[0]);
    const value = present[name] !== undefined && !/SECRET|KEY$/.test(name) ? ` (got "${present[name]}")` : '';
    throw new ConfigError(`${name} ${issue.message}${value}`);
  }
  const e = parsed.data;
  if (Boolean(e.GITHUB_CLIENT_ID) !== Boolean(e.GITHUB_CLIENT_SECRET)) {
    throw new ConfigError(`${e.GITHUB_CLIENT_ID ? 'GITHUB_CLIENT_SECRET' : 'GITHUB_CLIENT_ID'} must be set too: sign-in needs the GitHub App's client id and secret`);
  }
  if (e.KEY_PROVIDER === 'azure' && !e.AZURE_KEY_ID) {
    throw new ConfigError('AZURE_KEY_ID must be set when KEY_PROVIDER is "azure"');
  }
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
    reconcileIntervalMs: e.RECONCILE_INTERVAL_MINUTES * 60_000,
    uploadIdleMs: e.UPLOAD_IDLE_SECONDS * 1000,
    host: e.HOST,
    webhookSecret: e.WEBHOOK_SECRET,
    appConfigured: Boolean(e.APP_ID && (e.PRIVATE_KEY || e.PRIVATE_KEY_PATH) && e.WEBHOOK_SECRET),
    githubWebUrl: e.GHE_HOST ? `${e.GHE_PROTOCOL}://${e.GHE_HOST}` : 'https://github.com',
    githubClientId: e.GITHUB_CLIENT_ID,
    githubClientSecret: e.GITHUB_CLIENT_SECRET,
    sessionMs: e.SESSION_HOURS * 3600_000,
  };
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
