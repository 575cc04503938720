import { and, count, countDistinct, eq, gte, isNotNull, sql, sum } from './db/orm.js';
import type { Database } from './db/database.js';
import { accounts, builds, pullRequests, repositories, uploads } from './db/tables.js';

/** The figures a bill would use, per account. */
export interface AccountUsage {
  account: string;
  githubId: number | null;
  /** Repositories the app is installed on now. */
  repositories: number;
  /** Builds stored now. */
  builds: number;
  /** What those builds hold (uncompressed), counting a file once per build. */
  bytesLogical: number;
  /** What they take on disk: identical files of a repository's builds are stored once. */
  bytesStored: number;
  /** Builds stored since the first day of the month (UTC), by upload or pull mode, and their bytes. */
  uploadsThisMonth: number;
  bytesUploadedThisMonth: number;
  /** Distinct PR authors (GitHub user ids) whose PRs were built this month. */
  authorsThisMonth: number;
}

export interface UsageReport {
  /** `YYYY-MM`, UTC. */
  month: string;
  accounts: AccountUsage[];
}

export function usageReport(database: Database, now = new Date()): Promise<UsageReport> {
  // One transaction: every figure from the same moment.
  return database.transaction(async (db) => {
    const monthStart = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1));
    const repos = await db
      .select({ accountId: repositories.accountId, n: count() })
      .from(repositories)
      // Installed as GitHub says (an installation event or the sweep gave its id), not merely named by `secret set`.
      .where(and(eq(repositories.installed, true), isNotNull(repositories.githubId)))
      .groupBy(repositories.accountId);
    const stored = await db
      .select({
        accountId: repositories.accountId,
        n: count(),
        bytes: sum(builds.bytes),
        // Builds stored before objects existed are their own copies.
        ownCopies: sum(sql<number>`case when ${builds.contentAddressed} then 0 else ${builds.bytes} end`),
      })
      .from(builds)
      .innerJoin(pullRequests, eq(builds.pullRequestId, pullRequests.id))
      .innerJoin(repositories, eq(pullRequests.repositoryId, repositories.id))
      .where(eq(builds.status, 'ready'))
      .groupBy(repositories.accountId);
    const inObjects = await db
      .select({ accountId: repositories.accountId, bytes: sum(repositories.objectBytes) })
      .from(repositories)
      .groupBy(repositories.accountId);
    const month = await db
      .select({ accountId: uploads.accountId, n: count(), bytes: sum(uploads.bytes), authors: countDistinct(uploads.authorUserId) })
      .from(uploads)
      .where(and(gte(uploads.createdAt, monthStart)))
      .groupBy(uploads.accountId);
    const byAccount = <T extends { accountId: number }>(rows: T[]) => new Map(rows.map((r) => [r.accountId, r]));
    const [repoRows, storedRows, monthRows, objectRows] = [byAccount(repos), byAccount(stored), byAccount(month), byAccount(inObjects)];
    return {
      month: monthStart.toISOString().slice(0, 7),
      accounts: (await db.select().from(accounts).orderBy(accounts.login)).map((a) => ({
          account: a.login,
          githubId: a.githubId,
          repositories: repoRows.get(a.id)?.n ?? 0,
          builds: storedRows.get(a.id)?.n ?? 0,
          bytesLogical: Number(storedRows.get(a.id)?.bytes ?? 0),
          bytesStored: Number(objectRows.get(a.id)?.bytes ?? 0) + Number(storedRows.get(a.id)?.ownCopies ?? 0),
          uploadsThisMonth: monthRows.get(a.id)?.n ?? 0,
          bytesUploadedThisMonth: Number(monthRows.get(a.id)?.bytes ?? 0),
          authorsThisMonth: monthRows.get(a.id)?.authors ?? 0,
        })),
    };
  });
}

/** The report as an aligned table for a terminal. */
export function formatUsage(report: UsageReport): string {
  const header = ['account', 'repositories', 'builds', 'logical', 'stored', `uploads ${report.month}`, `uploaded ${report.month}`, 'authors'];
  const rows = report.accounts.map((a) => [
    a.account,
    String(a.repositories),
    String(a.builds),
    formatBytes(a.bytesLogical),
    formatBytes(a.bytesStored),
    String(a.uploadsThisMonth),
    formatBytes(a.bytesUploadedThisMonth),
    String(a.authorsThisMonth),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(header), ...rows.map(line)].join('\n') + '\n';
}

function formatBytes(bytes: number): string {
  if (bytes < 1000) return `${bytes} B`;
  const units = ['kB', 'MB', 'GB', 'TB'];
  let value = bytes / 1000;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}
