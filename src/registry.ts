import { and, eq, sql } from './db/orm.js';
import type { Database, Orm } from './db/database.js';
import { first, only } from './db/query.js';
import { accounts, pullRequests, repositories, users } from './db/tables.js';
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
    readonly db: Database,
    private readonly secrets: SecretStore,
  ) {}

  findRepository(fullName: string, q: Orm = this.db.orm): Promise<Repository | undefined> {
    return first(
      q
        .select()
        .from(repositories)
        .where(sql`lower(${repositories.fullName}) = ${fullName.toLowerCase()}`)
        .limit(1),
    );
  }

  findRepositoryById(githubId: number, q: Orm = this.db.orm): Promise<Repository | undefined> {
    return first(q.select().from(repositories).where(eq(repositories.githubId, githubId)).limit(1));
  }

  /**
   * The account row of a GitHub org/user, created with a fresh wrapped DEK the first time. With GitHub's id the
   * row follows a renamed login, and a different account that later takes a freed login gets a row of its own.
   */
  async ensureAccount(login: string, githubId?: number): Promise<Account> {
    const existing = await this.db.transaction((tx) => this.existingAccount(tx, login, githubId));
    if (existing) return existing;
    // The key service may be a network call (Key Vault): made between transactions, never inside one.
    const key = await this.secrets.newWrappedAccountKey();
    return this.db.transaction(async (tx) => {
      // Created meanwhile by another request: that row, not a second one.
      const created = await this.existingAccount(tx, login, githubId);
      if (created) return created;
      await this.evictAccountLogin(tx, login, githubId);
      return only(tx.insert(accounts).values({ login, githubId, ...key }).returning());
    });
  }

  /** The account row of `login` / `githubId` brought up to date, or undefined when a new row is needed. */
  private async existingAccount(tx: Orm, login: string, githubId: number | undefined): Promise<Account | undefined> {
    const byId = githubId === undefined ? undefined : await first(tx.select().from(accounts).where(eq(accounts.githubId, githubId)).limit(1));
    if (byId) {
      if (byId.login !== login) {
        await this.evictAccountLogin(tx, login, githubId);
        await tx.update(accounts).set({ login }).where(eq(accounts.id, byId.id));
      }
      return { ...byId, login };
    }
    const byLogin = await first(tx.select().from(accounts).where(eq(accounts.login, login)).limit(1));
    if (byLogin && (byLogin.githubId === null || githubId === undefined)) {
      if (githubId !== undefined) await tx.update(accounts).set({ githubId }).where(eq(accounts.id, byLogin.id));
      return { ...byLogin, githubId: githubId ?? byLogin.githubId };
    }
    return undefined;
  }

  /** Remembers which installation of the app covers the account (webhooks without `installation` use it). */
  async setInstallation(accountId: number, installationId: number | null, q: Orm = this.db.orm): Promise<void> {
    await q.update(accounts).set({ installationId }).where(eq(accounts.id, accountId));
  }

  async accountOf(repo: Repository, q: Orm = this.db.orm): Promise<Account> {
    return only(q.select().from(accounts).where(eq(accounts.id, repo.accountId)).limit(1));
  }

  /** The repository row for `owner/name`, registered (with its default site) the first time; id still unknown. */
  async ensureRepository(fullName: string): Promise<Repository> {
    const existing = await this.findRepository(fullName);
    if (existing) return existing;
    const [owner, name] = fullName.split('/') as [string, string];
    const account = await this.ensureAccount(owner);
    return this.db.transaction(async (tx) => {
      const site = await this.freeSite(tx, defaultSite(name), owner);
      return only(tx.insert(repositories).values({ accountId: account.id, fullName, site }).returning());
    });
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
    return only(this.db.orm.update(repositories).set({ private: ref.private }).where(eq(repositories.id, repo.id)).returning());
  }

  private async resolveByIdOrName(ref: RepositoryRef): Promise<Repository> {
    const [owner, name] = ref.fullName.split('/') as [string, string];
    const byId = await this.findRepositoryById(ref.id);
    if (byId) {
      const account = await this.ensureAccount(owner, ref.ownerId);
      if (byId.fullName !== ref.fullName || byId.accountId !== account.id) {
        return this.db.transaction(async (tx) => {
          await this.evictRepositoryName(tx, ref.fullName, ref.id);
          return only(tx.update(repositories).set({ fullName: ref.fullName, accountId: account.id }).where(eq(repositories.id, byId.id)).returning());
        });
      }
      return byId;
    }
    const byName = await this.findRepository(ref.fullName);
    if (byName && byName.githubId === null) {
      const account = await this.ensureAccount(owner, ref.ownerId);
      return only(
        this.db.orm
          .update(repositories)
          .set({ githubId: ref.id, fullName: ref.fullName, accountId: account.id })
          .where(eq(repositories.id, byName.id))
          .returning(),
      );
    }
    if (byName) await this.db.transaction((tx) => this.evictRepositoryName(tx, ref.fullName, ref.id));
    const account = await this.ensureAccount(owner, ref.ownerId);
    return this.db.transaction(async (tx) => {
      const site = await this.freeSite(tx, defaultSite(name), String(ref.id));
      return only(tx.insert(repositories).values({ accountId: account.id, fullName: ref.fullName, githubId: ref.id, site }).returning());
    });
  }

  /** A name now used by repository `newOwnerId` stops matching the row that had it (which keeps its id). */
  private async evictRepositoryName(tx: Orm, fullName: string, newGithubId: number): Promise<void> {
    const holder = await this.findRepository(fullName, tx);
    if (!holder || holder.githubId === newGithubId) return;
    // `#` is outside GitHub's alphabet for names, so the parked name can never match a real repository.
    await tx
      .update(repositories)
      .set({ fullName: `${holder.fullName}#${holder.githubId ?? `row${holder.id}`}` })
      .where(eq(repositories.id, holder.id));
  }

  private async evictAccountLogin(tx: Orm, login: string, newGithubId: number | undefined): Promise<void> {
    const holder = await first(tx.select().from(accounts).where(eq(accounts.login, login)).limit(1));
    if (!holder || holder.githubId === newGithubId) return;
    await tx.update(accounts).set({ login: `${holder.login}#${holder.githubId ?? `row${holder.id}`}` }).where(eq(accounts.id, holder.id));
  }

  /** The default site, or `<site>-<suffix>` (the repository id, or the owner) when another repository has it. */
  private async freeSite(tx: Orm, site: string, suffix: string): Promise<string> {
    const taken = async (s: string) => (await first(tx.select({ id: repositories.id }).from(repositories).where(eq(repositories.site, s)).limit(1))) !== undefined;
    if (!(await taken(site))) return site;
    const alternative = defaultSite(`${site}-${suffix}`);
    if (!(await taken(alternative))) return alternative;
    return defaultSite(`${site}-${suffix}-${Date.now().toString(36)}`);
  }

  async isSiteTaken(site: string, byOtherThan: number, q: Orm = this.db.orm): Promise<boolean> {
    const holder = await first(q.select({ id: repositories.id }).from(repositories).where(eq(repositories.site, site)).limit(1));
    return holder !== undefined && holder.id !== byOtherThan;
  }

  /**
   * The row of a repository named in a webhook payload, by GitHub's id (its name brought up to date), or a row
   * known only by that name whose id was never learnt; undefined when preview-gate holds nothing of it.
   */
  async knownRepository(ref: RepositoryRef): Promise<Repository | undefined> {
    const byName = await this.findRepository(ref.fullName);
    if ((await this.findRepositoryById(ref.id)) || byName?.githubId === null) return this.resolveRepository(ref);
    return undefined;
  }

  installedRepositories(): Promise<Repository[]> {
    return this.db.orm.select().from(repositories).where(eq(repositories.installed, true));
  }

  async forgetStoredSettings(repo: Repository): Promise<void> {
    await this.db.orm.update(repositories).set({ settings: null }).where(eq(repositories.id, repo.id));
  }

  async markInstalled(repo: Repository): Promise<void> {
    await this.db.orm.update(repositories).set({ installed: true, uninstalledAt: null }).where(eq(repositories.id, repo.id));
  }

  /** Installed repositories of an account (by GitHub id, else login). */
  async repositoriesOfAccount(account: { id?: number; login: string }): Promise<Repository[]> {
    const orm = this.db.orm;
    const row =
      (account.id !== undefined ? await first(orm.select().from(accounts).where(eq(accounts.githubId, account.id)).limit(1)) : undefined) ??
      (await first(orm.select().from(accounts).where(sql`lower(${accounts.login}) = ${account.login.toLowerCase()}`).limit(1)));
    if (!row) return [];
    return orm.select().from(repositories).where(and(eq(repositories.accountId, row.id), eq(repositories.installed, true)));
  }

  /** Open PRs of these repositories, optionally only those whose author has GitHub id `authorGithubId`. */
  async openPullRequests(repos: Repository[], authorGithubId?: number, q: Orm = this.db.orm): Promise<{ repo: Repository; pr: PullRequest }[]> {
    const result: { repo: Repository; pr: PullRequest }[] = [];
    for (const repo of repos) {
      const rows = await q
        .select({ pr: pullRequests })
        .from(pullRequests)
        .leftJoin(users, eq(pullRequests.authorUserId, users.id))
        .where(
          and(
            eq(pullRequests.repositoryId, repo.id),
            eq(pullRequests.state, 'open'),
            authorGithubId === undefined ? undefined : and(eq(users.provider, 'github'), eq(users.providerId, String(authorGithubId))),
          ),
        );
      for (const { pr } of rows) result.push({ repo, pr });
    }
    return result;
  }

  /** An account renamed on GitHub (installation_target.renamed): its row and its repositories follow. */
  async renameAccount(githubId: number, login: string): Promise<void> {
    const account = await this.ensureAccount(login, githubId);
    await this.db.transaction(async (tx) => {
      for (const repo of await tx.select().from(repositories).where(eq(repositories.accountId, account.id))) {
        const name = repo.fullName.split('/')[1]!;
        if (name.includes('#')) continue; // a parked name of a repository that lost it
        await tx.update(repositories).set({ fullName: `${login}/${name}` }).where(eq(repositories.id, repo.id));
      }
    });
  }

  /** The `users` row of a GitHub user: identified by numeric id, the login is kept for messages only. */
  async upsertUser(githubId: number, login: string, q: Orm = this.db.orm): Promise<number> {
    const row = await only(
      q
        .insert(users)
        .values({ provider: 'github', providerId: String(githubId), login })
        .onConflictDoUpdate({ target: [users.provider, users.providerId], set: { login } })
        .returning({ id: users.id }),
    );
    return row.id;
  }

  findPullRequest(repositoryId: number, number: number, q: Orm = this.db.orm): Promise<PullRequest | undefined> {
    return first(q.select().from(pullRequests).where(and(eq(pullRequests.repositoryId, repositoryId), eq(pullRequests.number, number))).limit(1));
  }
}
