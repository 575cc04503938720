import { and, eq, sql } from './db/orm.js';
import type { Db } from './db/client.js';
import { accounts, pullRequests, repositories, users } from './db/schema.js';
import type { SecretStore } from './secrets/secrets.js';
import { defaultSite } from './trust.js';

export type Account = typeof accounts.$inferSelect;
export type Repository = typeof repositories.$inferSelect;
export type PullRequest = typeof pullRequests.$inferSelect;

/** A repository as GitHub names it: its id, its name now, and (when the source says) owner id and privacy. */
export interface RepositoryRef {
  id: number;
  fullName: string;
  ownerId?: number;
  private?: boolean;
}

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

  findRepositoryById(githubId: number): Repository | undefined {
    return this.db.select().from(repositories).where(eq(repositories.githubId, githubId)).get();
  }

  /**
   * The account row of a GitHub org/user, created with a fresh wrapped DEK the first time. With GitHub's id the
   * row follows a renamed login, and a different account that later takes a freed login gets a row of its own.
   */
  async ensureAccount(login: string, githubId?: number): Promise<Account> {
    const byId = githubId === undefined ? undefined : this.db.select().from(accounts).where(eq(accounts.githubId, githubId)).get();
    if (byId) {
      if (byId.login !== login) {
        this.evictAccountLogin(login, githubId);
        this.db.update(accounts).set({ login }).where(eq(accounts.id, byId.id)).run();
      }
      return { ...byId, login };
    }
    const byLogin = this.db.select().from(accounts).where(eq(accounts.login, login)).get();
    if (byLogin && (byLogin.githubId === null || githubId === undefined)) {
      if (githubId !== undefined) this.db.update(accounts).set({ githubId }).where(eq(accounts.id, byLogin.id)).run();
      return { ...byLogin, githubId: githubId ?? byLogin.githubId };
    }
    if (byLogin) this.evictAccountLogin(login, githubId);
    const key = await this.secrets.newWrappedAccountKey();
    return this.db.insert(accounts).values({ login, githubId, ...key }).returning().get();
  }

  /** Remembers which installation of the app covers the account (webhooks without `installation` use it). */
  setInstallation(accountId: number, installationId: number | null): void {
    this.db.update(accounts).set({ installationId }).where(eq(accounts.id, accountId)).run();
  }

  accountOf(repo: Repository): Account {
    return this.db.select().from(accounts).where(eq(accounts.id, repo.accountId)).get()!;
  }

  /** The repository row for `owner/name`, registered (with its default site) the first time; id still unknown. */
  async ensureRepository(fullName: string): Promise<Repository> {
    const existing = this.findRepository(fullName);
    if (existing) return existing;
    const [owner, name] = fullName.split('/') as [string, string];
    const account = await this.ensureAccount(owner);
    const site = this.freeSite(defaultSite(name), owner);
    return this.db.insert(repositories).values({ accountId: account.id, fullName, site }).returning().get();
  }

  /**
   * The repository row for GitHub's repository `id`, its name brought up to date (a rename or transfer keeps
   * the row: site, PRs, builds, secrets). A row found by name only is adopted when its id was never known;
   * a row with the same name but another id is a different repository that held the name before: it keeps
   * its things and loses the name, and the new repository starts with nothing.
   */
  async resolveRepository(ref: RepositoryRef): Promise<Repository> {
    const repo = await this.resolveByIdOrName(ref);
    if (ref.private === undefined || repo.private === ref.private) return repo;
    return this.db.update(repositories).set({ private: ref.private }).where(eq(repositories.id, repo.id)).returning().get();
  }

  private async resolveByIdOrName(ref: RepositoryRef): Promise<Repository> {
    const [owner, name] = ref.fullName.split('/') as [string, string];
    const byId = this.findRepositoryById(ref.id);
    if (byId) {
      const account = await this.ensureAccount(owner, ref.ownerId);
      if (byId.fullName !== ref.fullName || byId.accountId !== account.id) {
        this.evictRepositoryName(ref.fullName, ref.id);
        return this.db.update(repositories).set({ fullName: ref.fullName, accountId: account.id }).where(eq(repositories.id, byId.id)).returning().get();
      }
      return byId;
    }
    const byName = this.findRepository(ref.fullName);
    if (byName && byName.githubId === null) {
      const account = await this.ensureAccount(owner, ref.ownerId);
      return this.db
        .update(repositories)
        .set({ githubId: ref.id, fullName: ref.fullName, accountId: account.id })
        .where(eq(repositories.id, byName.id))
        .returning()
        .get();
    }
    if (byName) this.evictRepositoryName(ref.fullName, ref.id);
    const account = await this.ensureAccount(owner, ref.ownerId);
    const site = this.freeSite(defaultSite(name), String(ref.id));
    return this.db.insert(repositories).values({ accountId: account.id, fullName: ref.fullName, githubId: ref.id, site }).returning().get();
  }

  /** A name now used by repository `newOwnerId` stops matching the row that had it (which keeps its id). */
  private evictRepositoryName(fullName: string, newGithubId: number): void {
    const holder = this.findRepository(fullName);
    if (!holder || holder.githubId === newGithubId) return;
    // `#` is outside GitHub's alphabet for names, so the parked name can never match a real repository.
    this.db
      .update(repositories)
      .set({ fullName: `${holder.fullName}#${holder.githubId ?? `row${holder.id}`}` })
      .where(eq(repositories.id, holder.id))
      .run();
  }

  private evictAccountLogin(login: string, newGithubId: number | undefined): void {
    const holder = this.db.select().from(accounts).where(eq(accounts.login, login)).get();
    if (!holder || holder.githubId === newGithubId) return;
    this.db.update(accounts).set({ login: `${holder.login}#${holder.githubId ?? `row${holder.id}`}` }).where(eq(accounts.id, holder.id)).run();
  }

  /** The default site, or `<site>-<suffix>` (the repository id, or the owner) when another repository has it. */
  private freeSite(site: string, suffix: string): string {
    const taken = (s: string) => this.db.select().from(repositories).where(eq(repositories.site, s)).get();
    if (!taken(site)) return site;
    const alternative = defaultSite(`${site}-${suffix}`);
    if (!taken(alternative)) return alternative;
    return defaultSite(`${site}-${suffix}-${Date.now().toString(36)}`);
  }

  isSiteTaken(site: string, byOtherThan: number): boolean {
    const holder = this.db.select().from(repositories).where(eq(repositories.site, site)).get();
    return holder !== undefined && holder.id !== byOtherThan;
  }

  /**
   * The row of a repository named in a webhook payload, by GitHub's id (its name brought up to date), or a row
   * known only by that name whose id was never learnt; undefined when preview-gate holds nothing of it.
   */
  async knownRepository(ref: RepositoryRef): Promise<Repository | undefined> {
    const byName = this.findRepository(ref.fullName);
    if (this.findRepositoryById(ref.id) || byName?.githubId === null) return this.resolveRepository(ref);
    return undefined;
  }

  installedRepositories(): Repository[] {
    return this.db.select().from(repositories).where(eq(repositories.installed, true)).all();
  }

  forgetStoredSettings(repo: Repository): void {
    this.db.update(repositories).set({ settings: null }).where(eq(repositories.id, repo.id)).run();
  }

  markInstalled(repo: Repository): void {
    this.db.update(repositories).set({ installed: true, uninstalledAt: null }).where(eq(repositories.id, repo.id)).run();
  }

  /** Installed repositories of an account (by GitHub id, else login). */
  repositoriesOfAccount(account: { id?: number; login: string }): Repository[] {
    const row =
      (account.id !== undefined ? this.db.select().from(accounts).where(eq(accounts.githubId, account.id)).get() : undefined) ??
      this.db.select().from(accounts).where(sql`lower(${accounts.login}) = ${account.login.toLowerCase()}`).get();
    if (!row) return [];
    return this.db.select().from(repositories).where(and(eq(repositories.accountId, row.id), eq(repositories.installed, true))).all();
  }

  /** Open PRs of these repositories, optionally only those whose author has GitHub id `authorGithubId`. */
  openPullRequests(repos: Repository[], authorGithubId?: number): { repo: Repository; pr: PullRequest }[] {
    const result: { repo: Repository; pr: PullRequest }[] = [];
    for (const repo of repos) {
      const rows = this.db
        .select({ pr: pullRequests })
        .from(pullRequests)
        .leftJoin(users, eq(pullRequests.authorUserId, users.id))
        .where(
          and(
            eq(pullRequests.repositoryId, repo.id),
            eq(pullRequests.state, 'open'),
            authorGithubId === undefined ? undefined : and(eq(users.provider, 'github'), eq(users.providerId, String(authorGithubId))),
          ),
        )
        .all();
      for (const { pr } of rows) result.push({ repo, pr });
    }
    return result;
  }

  /** An account renamed on GitHub (installation_target.renamed): its row and its repositories follow. */
  async renameAccount(githubId: number, login: string): Promise<void> {
    const account = await this.ensureAccount(login, githubId);
    for (const repo of this.db.select().from(repositories).where(eq(repositories.accountId, account.id)).all()) {
      const name = repo.fullName.split('/')[1]!;
      if (name.includes('#')) continue; // a parked name of a repository that lost it
      this.db.update(repositories).set({ fullName: `${login}/${name}` }).where(eq(repositories.id, repo.id)).run();
    }
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
