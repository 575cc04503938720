/**
 * The database, as code. Every table is described here; drizzle-kit turns changes into the committed
 * migrations under src/db/migrations (`npm run db:generate`), which are applied at start-up.
 */
import { blob, index, integer, primaryKey, sql, sqliteTable, text, uniqueIndex } from './orm.js';

const createdAt = () =>
  integer('created_at', { mode: 'timestamp_ms' })
    .notNull()
    .default(sql`(unixepoch('subsec') * 1000)`);

/** A GitHub organization or user that owns repositories; it holds its own data-encryption key (DEK). */
export const accounts = sqliteTable(
  'accounts',
  {
    id: integer('id').primaryKey({ autoIncrement: true }),
    login: text('login').notNull(),
    /** GitHub's numeric account id, known once the app has seen an installation or an API answer. */
    githubId: integer('github_id'),
    /** The account DEK, wrapped by the key service (KEY_PROVIDER); never stored in the clear. */
    wrappedDek: blob('wrapped_dek', { mode: 'buffer' }).notNull(),
    /** Which key of the key service wrapped it (a local key fingerprint or a versioned Key Vault key id). */
    dekKeyId: text('dek_key_id').notNull(),
    installationId: integer('installation_id'),
    createdAt: createdAt(),
  },
  (t) => [uniqueIndex('accounts_login').on(t.login), uniqueIndex('accounts_github_id').on(t.githubId)],
);

/** People, identified only by provider + provider id, never by login (logins can be renamed and reused). */
export const users = sqliteTable(
  'users',
  {
    id: integer('id').primaryKey({ autoIncrement: true }),
    provider: text('provider', { enum: ['github'] }).notNull(),
    providerId: text('provider_id').notNull(),
    /** Last login seen, for messages only. */
    login: text('login'),
    /** The user's own DEK (for their GitHub tokens), wrapped by the key service; made at the first sign-in. */
    wrappedDek: blob('wrapped_dek', { mode: 'buffer' }),
    dekKeyId: text('dek_key_id'),
    createdAt: createdAt(),
  },
  (t) => [uniqueIndex('users_provider_id').on(t.provider, t.providerId)],
);

/**
 * Dashboard sessions (GitHub sign-in). The cookie holds a random token; only its sha256 is stored. The user's
 * GitHub tokens are sealed with the user's DEK.
 */
export const sessions = sqliteTable(
  'sessions',
  {
    id: integer('id').primaryKey({ autoIncrement: true }),
    tokenHash: text('token_hash').notNull(),
    userId: integer('user_id')
      .notNull()
      .references(() => users.id),
    /** Sent back in every dashboard form (CSRF). */
    csrf: text('csrf').notNull(),
    accessToken: blob('access_token', { mode: 'buffer' }).notNull(),
    accessExpiresAt: integer('access_expires_at', { mode: 'timestamp_ms' }),
    refreshToken: blob('refresh_token', { mode: 'buffer' }),
    expiresAt: integer('expires_at', { mode: 'timestamp_ms' }).notNull(),
    revokedAt: integer('revoked_at', { mode: 'timestamp_ms' }),
    createdAt: createdAt(),
  },
  (t) => [uniqueIndex('sessions_token_hash').on(t.tokenHash)],
);

/** A hidden preview host's cookie (one host, ≤ 1 h), given for a one-time ticket; only its sha256 is stored. */
export const previewGrants = sqliteTable(
  'preview_grants',
  {
    id: integer('id').primaryKey({ autoIncrement: true }),
    tokenHash: text('token_hash').notNull(),
    sessionId: integer('session_id')
      .notNull()
      .references(() => sessions.id),
    host: text('host').notNull(),
    expiresAt: integer('expires_at', { mode: 'timestamp_ms' }).notNull(),
    createdAt: createdAt(),
  },
  (t) => [uniqueIndex('preview_grants_token_hash').on(t.tokenHash)],
);

/**
 * A one-time ticket (≤ 60 s) from the dashboard to one hidden preview host; only its sha256 is stored. A row, so
 * any replica can redeem it, and deleting it on redemption makes it one-time whichever replica is asked.
 */
export const previewTickets = sqliteTable(
  'preview_tickets',
  {
    tokenHash: text('token_hash').primaryKey(),
    sessionId: integer('session_id')
      .notNull()
      .references(() => sessions.id),
    host: text('host').notNull(),
    expiresAt: integer('expires_at', { mode: 'timestamp_ms' }).notNull(),
  },
  (t) => [index('preview_tickets_expires').on(t.expiresAt)],
);

/** Who looked at a hidden preview, and who did what on the dashboard (kept AUDIT_DAYS). */
export const auditEvents = sqliteTable(
  'audit_events',
  {
    id: integer('id').primaryKey({ autoIncrement: true }),
    userId: integer('user_id').references(() => users.id),
    /** `sign-in`, `sign-out`, `view-hidden`, `publish`, `hide`. */
    action: text('action').notNull(),
    /** `owner/repo#N` or a preview host: what it was about. */
    subject: text('subject').notNull(),
    detail: text('detail'),
    createdAt: createdAt(),
  },
  (t) => [index('audit_events_created').on(t.createdAt)],
);

export const repositories = sqliteTable(
  'repositories',
  {
    id: integer('id').primaryKey({ autoIncrement: true }),
    accountId: integer('account_id')
      .notNull()
      .references(() => accounts.id),
    /** owner/name as GitHub spells it (matched case-insensitively). */
    fullName: text('full_name').notNull(),
    githubId: integer('github_id'),
    /** Whether GitHub says the repository is private; null until known (treated as private). */
    private: integer('private', { mode: 'boolean' }),
    /** DNS label under which the repository's previews are served; unique per deployment. */
    site: text('site').notNull(),
    /** Last `.github/preview-gate.yml` read from the default branch, as JSON. */
    settings: text('settings', { mode: 'json' }).$type<Record<string, unknown>>(),
    installed: integer('installed', { mode: 'boolean' }).notNull().default(true),
    /** When the app lost access: previews are hidden at once and removed after CLEANUP_AFTER_HOURS. */
    uninstalledAt: integer('uninstalled_at', { mode: 'timestamp_ms' }),
    /**
     * The sum of `objects.size` of this repository, kept in the transactions that add or remove its object rows:
     * the quota is checked at every upload, and summing the rows made a one-page upload take 0.38 s with 300,000
     * objects stored, 1.8 s with a million (bench/stored-objects.mjs).
     */
    objectBytes: integer('object_bytes').notNull().default(0),
    createdAt: createdAt(),
  },
  (t) => [
    uniqueIndex('repositories_full_name').on(sql`lower(${t.fullName})`),
    uniqueIndex('repositories_site').on(t.site),
    uniqueIndex('repositories_github_id').on(t.githubId),
  ],
);

export const pullRequests = sqliteTable(
  'pull_requests',
  {
    id: integer('id').primaryKey({ autoIncrement: true }),
    repositoryId: integer('repository_id')
      .notNull()
      .references(() => repositories.id),
    number: integer('number').notNull(),
    authorUserId: integer('author_user_id').references(() => users.id),
    state: text('state', { enum: ['open', 'closed'] }).notNull(),
    headSha: text('head_sha'),
    trusted: integer('trusted', { mode: 'boolean' }).notNull().default(false),
    /** Where the PR folder lives on disk: `<pr>` (public) or `hidden--<pr>` (hidden). */
    visibility: text('visibility', { enum: ['public', 'hidden'] }).notNull().default('hidden'),
    /** Why the last decision was taken, in words a maintainer understands. */
    reason: text('reason'),
    /** When the GitHub facts behind the current decision were read: older facts never overrule newer ones. */
    factsAt: integer('facts_at', { mode: 'timestamp_ms' }),
    /**
     * With `labelTrustsNewCommits: false`: the head SHA the trusted label was given at. The label vouches for
     * that commit only; any other head removes it.
     */
    labelSha: text('label_sha'),
    closedAt: integer('closed_at', { mode: 'timestamp_ms' }),
    /** The one preview comment on the PR, edited in place. */
    commentId: integer('comment_id'),
    /** The sha256 of the comment body last written there: an edit that would change nothing is not sent. */
    commentHash: text('comment_hash'),
    /** Shown on the dashboard, from the last facts read (null until a read carried them): never used for a decision. */
    title: text('title'),
    headRef: text('head_ref'),
    fork: integer('fork', { mode: 'boolean' }),
    authorAvatarUrl: text('author_avatar_url'),
    /**
     * Shown on the dashboard as the head commit's age: GitHub's `updated_at` of the PR in the first facts that
     * carried this head (a push's own time when it came from its synchronize delivery; for a PR first seen later,
     * its last update, so never older than the truth). No extra request: the facts were read for a decision.
     */
    headAt: integer('head_at', { mode: 'timestamp_ms' }),
    updatedAt: integer('updated_at', { mode: 'timestamp_ms' }),
    createdAt: createdAt(),
  },
  (t) => [uniqueIndex('pull_requests_repo_number').on(t.repositoryId, t.number)],
);

/** One stored (or being stored) commit build of a PR. */
export const builds = sqliteTable(
  'builds',
  {
    id: integer('id').primaryKey({ autoIncrement: true }),
    pullRequestId: integer('pull_request_id')
      .notNull()
      .references(() => pullRequests.id),
    sha: text('sha').notNull(),
    sha7: text('sha7').notNull(),
    /** `pending` while an upload holds the claim on this sha7; `ready` once its folder is in place. */
    status: text('status', { enum: ['pending', 'ready'] }).notNull(),
    bytes: integer('bytes').notNull().default(0),
    files: integer('files').notNull().default(0),
    /** The GitHub Deployment (environment preview/pr-<N>) created for this build. */
    deploymentId: integer('deployment_id'),
    /** Its files are links into the repository's objects (false: stored before objects existed, its own copies). */
    contentAddressed: integer('content_addressed', { mode: 'boolean' }).notNull().default(false),
    /** While `pending`: the replica whose upload holds the claim, and until when (renewed while it runs). */
    claimOwner: text('claim_owner'),
    claimExpiresAt: integer('claim_expires_at', { mode: 'timestamp_ms' }),
    createdAt: createdAt(),
  },
  // One claim per sha7 per PR: the database, not the filesystem, decides which of N concurrent uploads wins.
  (t) => [uniqueIndex('builds_pr_sha7').on(t.pullRequestId, t.sha7)],
);

/**
 * What a stored build holds, path by path, one row per build, written with the build's object rows: `paths` is
 * the gzip of its file paths, sorted and NUL-separated (NUL is never in a stored path); `hashes` their sha256s,
 * 32 bytes each in the same order. The dashboard and the PR comment compare a build with the PR's previous one
 * from it (changed-pages.ts) without reading any file. Builds stored before this table existed have no row:
 * their changes are "not known".
 */
export const buildContents = sqliteTable('build_contents', {
  buildId: integer('build_id')
    .primaryKey()
    .references(() => builds.id, { onDelete: 'cascade' }),
  paths: blob('paths', { mode: 'buffer' }).notNull(),
  hashes: blob('hashes', { mode: 'buffer' }).notNull(),
  /** Per page, the files of this build it loads (src/previews/changed-pages.ts); null when none is known. */
  loads: blob('loads', { mode: 'buffer' }),
});

/**
 * With `STORAGE=s3`, a stored build is these rows: each path of the build and the object
 * (`objects/<repository id>/<sha256>` in the bucket) it is served from. Written in the transaction that makes the
 * build ready, after every put was acknowledged; nothing on a disk names a build. `repository_id` is the build's
 * repository, kept here so that garbage collection finds unreferenced objects without joining through PRs.
 */
export const buildFiles = sqliteTable(
  'build_files',
  {
    buildId: integer('build_id')
      .notNull()
      .references(() => builds.id, { onDelete: 'cascade' }),
    path: text('path').notNull(),
    repositoryId: integer('repository_id').notNull(),
    sha256: text('sha256').notNull(),
    size: integer('size').notNull(),
    contentType: text('content_type').notNull(),
  },
  (t) => [primaryKey({ columns: [t.buildId, t.path] }), index('build_files_object').on(t.repositoryId, t.sha256)],
);

/**
 * The repository's content-addressed files (`<objects>/<repository id>/<ab>/<sha256>`) that builds link: what
 * they cost on disk, for quotas and `usage`. A row is added when a build using the object is stored, and removed
 * with the object once no build links it.
 */
export const objects = sqliteTable(
  'objects',
  {
    repositoryId: integer('repository_id')
      .notNull()
      .references(() => repositories.id),
    sha256: text('sha256').notNull(),
    size: integer('size').notNull(),
    /**
     * For an HTML content: the files it loads, as written in it, `\n`-separated (src/previews/changed-pages.ts),
     * read when its bytes came through an upload; null when never read (stored before, or larger than 1 MB).
     */
    pageRefs: blob('page_refs', { mode: 'buffer' }),
    createdAt: createdAt(),
  },
  (t) => [primaryKey({ columns: [t.repositoryId, t.sha256] })],
);

/**
 * A digest upload's manifest, between `POST …/manifest` and the upload that names it by its sha256 (kept an
 * hour).
 */
export const manifests = sqliteTable(
  'manifests',
  {
    id: integer('id').primaryKey({ autoIncrement: true }),
    repositoryId: integer('repository_id')
      .notNull()
      .references(() => repositories.id),
    pullRequestNumber: integer('pull_request_number').notNull(),
    sha: text('sha').notNull(),
    digest: text('digest').notNull(),
    body: text('body').notNull(),
    createdAt: createdAt(),
  },
  (t) => [uniqueIndex('manifests_upload').on(t.repositoryId, t.pullRequestNumber, t.sha, t.digest)],
);

/** Encrypted values (upload secrets). The value's own DEK is wrapped by the account DEK. */
export const secrets = sqliteTable(
  'secrets',
  {
    id: integer('id').primaryKey({ autoIncrement: true }),
    accountId: integer('account_id')
      .notNull()
      .references(() => accounts.id),
    repositoryId: integer('repository_id')
      .notNull()
      .references(() => repositories.id),
    name: text('name').notNull(),
    /** iv (12) ‖ ciphertext ‖ tag (16), AES-256-GCM under the secret's DEK. */
    ciphertext: blob('ciphertext', { mode: 'buffer' }).notNull(),
    /** The secret's DEK: iv ‖ ciphertext ‖ tag under the account DEK. */
    wrappedDek: blob('wrapped_dek', { mode: 'buffer' }).notNull(),
    createdAt: createdAt(),
  },
  (t) => [uniqueIndex('secrets_repo_name').on(t.repositoryId, t.name)],
);

/** Every change of a PR's visibility, and what caused it. */
export const visibilityChanges = sqliteTable(
  'visibility_changes',
  {
    id: integer('id').primaryKey({ autoIncrement: true }),
    pullRequestId: integer('pull_request_id')
      .notNull()
      .references(() => pullRequests.id),
    from: text('from', { enum: ['public', 'hidden'] }).notNull(),
    to: text('to', { enum: ['public', 'hidden'] }).notNull(),
    reason: text('reason').notNull(),
    /** What triggered it: `upload` or the webhook event name (`pull_request.labeled`, ...). */
    cause: text('cause').notNull(),
    actorUserId: integer('actor_user_id').references(() => users.id),
    createdAt: createdAt(),
  },
  (t) => [index('visibility_changes_pr').on(t.pullRequestId)],
);

/**
 * Every build stored, kept after its files are cleaned up: the ledger that `preview-gate usage` (and a bill)
 * counts uploads from. Rows are never updated.
 */
export const uploads = sqliteTable(
  'uploads',
  {
    id: integer('id').primaryKey({ autoIncrement: true }),
    accountId: integer('account_id')
      .notNull()
      .references(() => accounts.id),
    repositoryId: integer('repository_id')
      .notNull()
      .references(() => repositories.id),
    pullRequestNumber: integer('pull_request_number').notNull(),
    sha: text('sha').notNull(),
    bytes: integer('bytes').notNull(),
    files: integer('files').notNull(),
    /** `upload` (CI sent it) or `artifact` (pull mode fetched it). */
    source: text('source', { enum: ['upload', 'artifact'] }).notNull(),
    /** The PR's author, as a users row. */
    authorUserId: integer('author_user_id').references(() => users.id),
    createdAt: createdAt(),
  },
  (t) => [index('uploads_account_time').on(t.accountId, t.createdAt)],
);

/**
 * Durable work: decisions that still have to be taken and feedback that still has to reach GitHub. A row per
 * pending item (one per kind and key: a second request for the same PR is coalesced into the row), retried
 * with backoff until done, across restarts. `generation` grows with every request, so a request that arrives
 * while the item runs is not lost: the row is deleted only if it was not asked for again meanwhile.
 */
export const jobs = sqliteTable(
  'jobs',
  {
    id: integer('id').primaryKey({ autoIncrement: true }),
    /** `decide` (re-decide a PR from GitHub's facts), `feedback` (comment/status/deployment), ... */
    kind: text('kind').notNull(),
    /** What the job is about, e.g. `pr:<repository row id>#<number>`; jobs of one key run in order. */
    key: text('key').notNull(),
    data: text('data', { mode: 'json' }).$type<Record<string, unknown>>().notNull(),
    dueAt: integer('due_at', { mode: 'timestamp_ms' }).notNull(),
    attempts: integer('attempts').notNull().default(0),
    generation: integer('generation').notNull().default(1),
    lastError: text('last_error'),
    /** The replica running it now, and until when (renewed while it runs); another replica takes it after. */
    leaseOwner: text('lease_owner'),
    leaseUntil: integer('lease_until', { mode: 'timestamp_ms' }),
    createdAt: createdAt(),
  },
  (t) => [uniqueIndex('jobs_kind_key').on(t.kind, t.key), index('jobs_due').on(t.dueAt)],
);

/**
 * The server processes sharing this database and DATA_DIR, one row each (a random id per start). A live one
 * renews `heartbeat_at`; a clean stop sets `stopped_at`. A row whose heartbeat expired without a clean stop
 * is a crashed replica: the next start (or a live replica's heartbeat) repairs what it left.
 */
export const replicas = sqliteTable('replicas', {
  id: text('id').primaryKey(),
  host: text('host').notNull(),
  pid: integer('pid').notNull(),
  heartbeatAt: integer('heartbeat_at', { mode: 'timestamp_ms' }).notNull(),
  stoppedAt: integer('stopped_at', { mode: 'timestamp_ms' }),
  createdAt: createdAt(),
});

/**
 * Periodic work done once per interval by all replicas together (the sweep, the cleanup): whichever replica
 * claims the row when it is due (and its lease free) runs it and sets the next run.
 */
export const schedules = sqliteTable('schedules', {
  name: text('name').primaryKey(),
  nextRunAt: integer('next_run_at', { mode: 'timestamp_ms' }).notNull(),
  leaseOwner: text('lease_owner'),
  leaseUntil: integer('lease_until', { mode: 'timestamp_ms' }),
  lastRunAt: integer('last_run_at', { mode: 'timestamp_ms' }),
});

/**
 * One PR's work across replicas: the row's owner holds the PR until `lease_until` (renewed while it works). Taken
 * by an insert, or an update of an expired row; a dead replica's row expires with its lease.
 */
export const prLocks = sqliteTable('pr_locks', {
  key: text('key').primaryKey(),
  owner: text('owner').notNull(),
  leaseUntil: integer('lease_until', { mode: 'timestamp_ms' }).notNull(),
});
