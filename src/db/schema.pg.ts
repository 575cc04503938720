/**
 * The PostgreSQL schema: src/db/schema.ts column for column (same tables, columns, indexes, unique constraints
 * and foreign keys; test/schema-parity.test.ts fails when they drift). drizzle-kit turns changes into the
 * committed migrations under src/db/migrations-pg (`npm run db:generate` writes both folders).
 *
 * The JavaScript values are SQLite's, so query code is shared unchanged (src/db/tables.ts switches the tables):
 * - timestamps are epoch milliseconds in a `bigint` (SQLite: `integer` mode `timestamp_ms`), read and written
 *   as `Date`; raw SQL in the code compares them with `date.getTime()` numbers, which works on both engines;
 * - booleans are `boolean`, blobs `bytea` (Buffer), JSON text `jsonb`;
 * - ids and sizes GitHub or files can push past 2^31 (GitHub ids, comment and deployment ids, byte counts) are
 *   `bigint` read as numbers (SQLite integers are 64-bit); row ids are identity columns (`by default`, so
 *   `preview-gate migrate-to-postgres` can copy a SQLite database's ids as they are).
 */
import { sql } from './orm.js';
import { bigint, boolean, customType, index, integer, jsonb, pgTable, primaryKey, text, uniqueIndex } from './orm.pg.js';

/** Epoch milliseconds in a bigint, as a Date (pg hands int8 over as a string unless told otherwise: both read). */
const epochMs = customType<{ data: Date; driverData: string | number }>({
  dataType: () => 'bigint',
  toDriver: (value) => value.getTime(),
  fromDriver: (value) => new Date(Number(value)),
});

const bytea = customType<{ data: Buffer; driverData: Buffer }>({
  dataType: () => 'bytea',
  toDriver: (value) => value,
  fromDriver: (value) => value,
});

/** A 64-bit integer read as a JavaScript number (every value stored here is far below 2^53). */
const bigNumber = (name: string) => bigint(name, { mode: 'number' });

/** An autoincrement row id (SQLite `integer primary key autoincrement`). */
const rowId = () => integer('id').primaryKey().generatedByDefaultAsIdentity();

/** Now, in epoch ms, as SQLite's `unixepoch('subsec') * 1000` (the statement's time, not the transaction's). */
const createdAt = () =>
  epochMs('created_at')
    .notNull()
    .default(sql`(floor(extract(epoch from clock_timestamp()) * 1000))::bigint`);

export const accounts = pgTable(
  'accounts',
  {
    id: rowId(),
    login: text('login').notNull(),
    githubId: bigNumber('github_id'),
    wrappedDek: bytea('wrapped_dek').notNull(),
    dekKeyId: text('dek_key_id').notNull(),
    installationId: bigNumber('installation_id'),
    createdAt: createdAt(),
  },
  (t) => [uniqueIndex('accounts_login').on(t.login), uniqueIndex('accounts_github_id').on(t.githubId)],
);

export const users = pgTable(
  'users',
  {
    id: rowId(),
    provider: text('provider', { enum: ['github'] }).notNull(),
    providerId: text('provider_id').notNull(),
    login: text('login'),
    wrappedDek: bytea('wrapped_dek'),
    dekKeyId: text('dek_key_id'),
    createdAt: createdAt(),
  },
  (t) => [uniqueIndex('users_provider_id').on(t.provider, t.providerId)],
);

export const sessions = pgTable(
  'sessions',
  {
    id: rowId(),
    tokenHash: text('token_hash').notNull(),
    userId: integer('user_id')
      .notNull()
      .references(() => users.id),
    csrf: text('csrf').notNull(),
    accessToken: bytea('access_token').notNull(),
    accessExpiresAt: epochMs('access_expires_at'),
    refreshToken: bytea('refresh_token'),
    expiresAt: epochMs('expires_at').notNull(),
    revokedAt: epochMs('revoked_at'),
    createdAt: createdAt(),
  },
  (t) => [uniqueIndex('sessions_token_hash').on(t.tokenHash)],
);

export const previewGrants = pgTable(
  'preview_grants',
  {
    id: rowId(),
    tokenHash: text('token_hash').notNull(),
    sessionId: integer('session_id')
      .notNull()
      .references(() => sessions.id),
    host: text('host').notNull(),
    expiresAt: epochMs('expires_at').notNull(),
    createdAt: createdAt(),
  },
  (t) => [uniqueIndex('preview_grants_token_hash').on(t.tokenHash)],
);

export const previewTickets = pgTable(
  'preview_tickets',
  {
    tokenHash: text('token_hash').primaryKey(),
    sessionId: integer('session_id')
      .notNull()
      .references(() => sessions.id),
    host: text('host').notNull(),
    expiresAt: epochMs('expires_at').notNull(),
  },
  (t) => [index('preview_tickets_expires').on(t.expiresAt)],
);

export const auditEvents = pgTable(
  'audit_events',
  {
    id: rowId(),
    userId: integer('user_id').references(() => users.id),
    action: text('action').notNull(),
    subject: text('subject').notNull(),
    detail: text('detail'),
    createdAt: createdAt(),
  },
  (t) => [index('audit_events_created').on(t.createdAt)],
);

export const repositories = pgTable(
  'repositories',
  {
    id: rowId(),
    accountId: integer('account_id')
      .notNull()
      .references(() => accounts.id),
    fullName: text('full_name').notNull(),
    githubId: bigNumber('github_id'),
    private: boolean('private'),
    site: text('site').notNull(),
    settings: jsonb('settings').$type<Record<string, unknown>>(),
    installed: boolean('installed').notNull().default(true),
    uninstalledAt: epochMs('uninstalled_at'),
    objectBytes: bigNumber('object_bytes').notNull().default(0),
    createdAt: createdAt(),
  },
  (t) => [
    uniqueIndex('repositories_full_name').on(sql`lower(${t.fullName})`),
    uniqueIndex('repositories_site').on(t.site),
    uniqueIndex('repositories_github_id').on(t.githubId),
  ],
);

export const pullRequests = pgTable(
  'pull_requests',
  {
    id: rowId(),
    repositoryId: integer('repository_id')
      .notNull()
      .references(() => repositories.id),
    number: integer('number').notNull(),
    authorUserId: integer('author_user_id').references(() => users.id),
    state: text('state', { enum: ['open', 'closed'] }).notNull(),
    headSha: text('head_sha'),
    trusted: boolean('trusted').notNull().default(false),
    visibility: text('visibility', { enum: ['public', 'hidden'] }).notNull().default('hidden'),
    reason: text('reason'),
    factsAt: epochMs('facts_at'),
    labelSha: text('label_sha'),
    closedAt: epochMs('closed_at'),
    commentId: bigNumber('comment_id'),
    commentHash: text('comment_hash'),
    title: text('title'),
    headRef: text('head_ref'),
    fork: boolean('fork'),
    authorAvatarUrl: text('author_avatar_url'),
    headAt: epochMs('head_at'),
    updatedAt: epochMs('updated_at'),
    createdAt: createdAt(),
  },
  (t) => [uniqueIndex('pull_requests_repo_number').on(t.repositoryId, t.number)],
);

export const builds = pgTable(
  'builds',
  {
    id: rowId(),
    pullRequestId: integer('pull_request_id')
      .notNull()
      .references(() => pullRequests.id),
    sha: text('sha').notNull(),
    sha7: text('sha7').notNull(),
    status: text('status', { enum: ['pending', 'ready'] }).notNull(),
    bytes: bigNumber('bytes').notNull().default(0),
    files: integer('files').notNull().default(0),
    deploymentId: bigNumber('deployment_id'),
    contentAddressed: boolean('content_addressed').notNull().default(false),
    claimOwner: text('claim_owner'),
    claimExpiresAt: epochMs('claim_expires_at'),
    createdAt: createdAt(),
  },
  (t) => [uniqueIndex('builds_pr_sha7').on(t.pullRequestId, t.sha7)],
);

export const buildContents = pgTable('build_contents', {
  buildId: integer('build_id')
    .primaryKey()
    .references(() => builds.id, { onDelete: 'cascade' }),
  paths: bytea('paths').notNull(),
  hashes: bytea('hashes').notNull(),
  loads: bytea('loads'),
});

/** See schema.ts: a build's files with `STORAGE=s3`. */
export const buildFiles = pgTable(
  'build_files',
  {
    buildId: integer('build_id')
      .notNull()
      .references(() => builds.id, { onDelete: 'cascade' }),
    path: text('path').notNull(),
    repositoryId: integer('repository_id').notNull(),
    sha256: text('sha256').notNull(),
    size: bigNumber('size').notNull(),
    contentType: text('content_type').notNull(),
  },
  (t) => [primaryKey({ columns: [t.buildId, t.path] }), index('build_files_object').on(t.repositoryId, t.sha256)],
);

export const objects = pgTable(
  'objects',
  {
    repositoryId: integer('repository_id')
      .notNull()
      .references(() => repositories.id),
    sha256: text('sha256').notNull(),
    size: bigNumber('size').notNull(),
    pageRefs: bytea('page_refs'),
    createdAt: createdAt(),
  },
  (t) => [primaryKey({ columns: [t.repositoryId, t.sha256] })],
);

export const manifests = pgTable(
  'manifests',
  {
    id: rowId(),
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

export const secrets = pgTable(
  'secrets',
  {
    id: rowId(),
    accountId: integer('account_id')
      .notNull()
      .references(() => accounts.id),
    repositoryId: integer('repository_id')
      .notNull()
      .references(() => repositories.id),
    name: text('name').notNull(),
    ciphertext: bytea('ciphertext').notNull(),
    wrappedDek: bytea('wrapped_dek').notNull(),
    createdAt: createdAt(),
  },
  (t) => [uniqueIndex('secrets_repo_name').on(t.repositoryId, t.name)],
);

export const visibilityChanges = pgTable(
  'visibility_changes',
  {
    id: rowId(),
    pullRequestId: integer('pull_request_id')
      .notNull()
      .references(() => pullRequests.id),
    from: text('from', { enum: ['public', 'hidden'] }).notNull(),
    to: text('to', { enum: ['public', 'hidden'] }).notNull(),
    reason: text('reason').notNull(),
    cause: text('cause').notNull(),
    actorUserId: integer('actor_user_id').references(() => users.id),
    createdAt: createdAt(),
  },
  (t) => [index('visibility_changes_pr').on(t.pullRequestId)],
);

export const uploads = pgTable(
  'uploads',
  {
    id: rowId(),
    accountId: integer('account_id')
      .notNull()
      .references(() => accounts.id),
    repositoryId: integer('repository_id')
      .notNull()
      .references(() => repositories.id),
    pullRequestNumber: integer('pull_request_number').notNull(),
    sha: text('sha').notNull(),
    bytes: bigNumber('bytes').notNull(),
    files: integer('files').notNull(),
    source: text('source', { enum: ['upload', 'artifact'] }).notNull(),
    authorUserId: integer('author_user_id').references(() => users.id),
    createdAt: createdAt(),
  },
  (t) => [index('uploads_account_time').on(t.accountId, t.createdAt)],
);

export const jobs = pgTable(
  'jobs',
  {
    id: rowId(),
    kind: text('kind').notNull(),
    key: text('key').notNull(),
    data: jsonb('data').$type<Record<string, unknown>>().notNull(),
    dueAt: epochMs('due_at').notNull(),
    attempts: integer('attempts').notNull().default(0),
    generation: integer('generation').notNull().default(1),
    lastError: text('last_error'),
    leaseOwner: text('lease_owner'),
    leaseUntil: epochMs('lease_until'),
    createdAt: createdAt(),
  },
  (t) => [uniqueIndex('jobs_kind_key').on(t.kind, t.key), index('jobs_due').on(t.dueAt)],
);

export const replicas = pgTable('replicas', {
  id: text('id').primaryKey(),
  host: text('host').notNull(),
  pid: integer('pid').notNull(),
  heartbeatAt: epochMs('heartbeat_at').notNull(),
  stoppedAt: epochMs('stopped_at'),
  createdAt: createdAt(),
});

export const schedules = pgTable('schedules', {
  name: text('name').primaryKey(),
  nextRunAt: epochMs('next_run_at').notNull(),
  leaseOwner: text('lease_owner'),
  leaseUntil: epochMs('lease_until'),
  lastRunAt: epochMs('last_run_at'),
});

export const prLocks = pgTable('pr_locks', {
  key: text('key').primaryKey(),
  owner: text('owner').notNull(),
  leaseUntil: epochMs('lease_until').notNull(),
});
