/**
 * The tables every query is built from, for whichever engine is open. Query code imports them from here, never
 * from ./schema.js or ./schema.pg.js directly: `useTables('postgres')` (called by openPostgres) re-points these
 * live ES module bindings at the PostgreSQL tables, and every importer sees the switch.
 *
 * They stay typed as the SQLite tables: the PostgreSQL schema is kept column for column in step with SQLite's
 * (test/schema-parity.test.ts) and its custom types give the same JavaScript values (Date, boolean, Buffer,
 * number, parsed JSON), so one set of types describes both and shared query code type-checks once. The casts
 * below are the one place where that promise is taken on trust instead of checked by the compiler.
 */
import * as sqlite from './schema.js';
import * as pg from './schema.pg.js';

export let accounts = sqlite.accounts;
export let users = sqlite.users;
export let sessions = sqlite.sessions;
export let previewGrants = sqlite.previewGrants;
export let previewTickets = sqlite.previewTickets;
export let auditEvents = sqlite.auditEvents;
export let repositories = sqlite.repositories;
export let pullRequests = sqlite.pullRequests;
export let builds = sqlite.builds;
export let buildContents = sqlite.buildContents;
export let buildFiles = sqlite.buildFiles;
export let objects = sqlite.objects;
export let manifests = sqlite.manifests;
export let secrets = sqlite.secrets;
export let visibilityChanges = sqlite.visibilityChanges;
export let uploads = sqlite.uploads;
export let jobs = sqlite.jobs;
export let replicas = sqlite.replicas;
export let schedules = sqlite.schedules;
export let prLocks = sqlite.prLocks;

/** Which engine's tables the bindings above point at now. */
export let tablesKind: 'sqlite' | 'postgres' = 'sqlite';

/** Points every table binding at one engine's tables (one engine per process: the server opens one database). */
export function useTables(kind: 'sqlite' | 'postgres'): void {
  // One schema object for both branches, typed as SQLite's (see the comment at the top of this file).
  const s = kind === 'sqlite' ? sqlite : (pg as unknown as typeof sqlite);
  accounts = s.accounts;
  users = s.users;
  sessions = s.sessions;
  previewGrants = s.previewGrants;
  previewTickets = s.previewTickets;
  auditEvents = s.auditEvents;
  repositories = s.repositories;
  pullRequests = s.pullRequests;
  builds = s.builds;
  buildContents = s.buildContents;
  buildFiles = s.buildFiles;
  objects = s.objects;
  manifests = s.manifests;
  secrets = s.secrets;
  visibilityChanges = s.visibilityChanges;
  uploads = s.uploads;
  jobs = s.jobs;
  replicas = s.replicas;
  schedules = s.schedules;
  prLocks = s.prLocks;
  tablesKind = kind;
}
