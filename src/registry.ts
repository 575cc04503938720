import { eq, sql } from 'drizzle-orm';
import type { Db } from './db/client.js';
import { accounts, pullRequests, repositories, users } from './db/schema.js';
import type { SecretStore } from './secrets/secrets.js';
import { defaultSite } from './trust.js';

export type Account = typeof accounts.$inferSelect;
export type Repository = typeof repositories.$inferSelect;
export type PullRequest = typeof pullRequests.$inferSelect;

/** Accounts, repositories, users and pull requests as the database knows them. */
export class Registry {
  constructor(
    readonly db: Db,
    private readonly secrets: SecretStore,
  ) {}

  findRepository(fullName: string): Repository | undefined {
    return this.db
      .select()
      .from(repositories)
      .where(sql`lower(${repositories.fullName}) = ${fullName.toLowerCase()}`)
      .get();
  }

  /** The account row of a GitHub org/user, created with a fresh wrapped DEK the first time. */
  async ensureAccount(login: string): Promise<Account> {
    const existing = this.db.select().from(accounts).where(eq(accounts.login, login)).get();
    if (existing) return existing;
    const key = await this.secrets.newWrappedAccountKey();
    return this.db
      .insert(accounts)
      .values({ login, ...key })
      .onConflictDoUpdate({ target: accounts.login, set: { login } })
      .returning()
      .get();
  }

  /** The repository row for `owner/name`, registered (with its default site) the first time. */
  async ensureRepository(fullName: string): Promise<Repository> {
    const existing = this.findRepository(fullName);
    if (existing) return existing;
    const [owner, name] = fullName.split('/') as [string, string];
    const account = await this.ensureAccount(owner);
    const site = this.freeSite(defaultSite(name), owner);
    return this.db.insert(repositories).values({ accountId: account.id, fullName, site }).returning().get();
  }

  /** The default site, or `<site>-<owner>` when another repository already serves under that name. */
  private freeSite(site: string, owner: string): string {
    const taken = (s: string) => this.db.select().from(repositories).where(eq(repositories.site, s)).get();
    if (!taken(site)) return site;
    const alternative = defaultSite(`${site}-${owner}`);
    if (!taken(alternative)) return alternative;
    return defaultSite(`${site}-${owner}-${Date.now().toString(36)}`);
  }

  /** The `users` row of a GitHub user: identified by numeric id, the login is kept for messages only. */
  upsertUser(githubId: number, login: string): number {
    return this.db
      .insert(users)
      .values({ provider: 'github', providerId: String(githubId), login })
      .onConflictDoUpdate({ target: [users.provider, users.providerId], set: { login } })
      .returning({ id: users.id })
      .get().id;
  }

  findPullRequest(repositoryId: number, number: number): PullRequest | undefined {
    return this.db
      .select()
      .from(pullRequests)
      .where(sql`${pullRequests.repositoryId} = ${repositoryId} and ${pullRequests.number} = ${number}`)
      .get();
  }
}
