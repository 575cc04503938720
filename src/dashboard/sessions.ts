import crypto from 'node:crypto';
import { and, desc, eq, gt, isNull, lt, sql } from '../db/orm.js';
import type { Database } from '../db/database.js';
import { first, only } from '../db/query.js';
import { auditEvents, previewGrants, previewTickets, sessions, users } from '../db/tables.js';
import { newDataKey, open, seal } from '../secrets/envelope.js';
import type { KeyService } from '../secrets/key-service.js';
import type { GitHubUser, GitHubUserApi, UserTokens } from './github-user.js';

/** How long a one-time ticket (dashboard → preview host) stays good. */
const TICKET_MS = 60_000;
/** How long a preview host's cookie lasts (and never past its session). */
export const GRANT_MS = 60 * 60_000;
/** How long audit events are kept. */
export const AUDIT_DAYS = 90;

const hash = (token: string) => crypto.createHash('sha256').update(token).digest('hex');
const newToken = () => crypto.randomBytes(32).toString('base64url');
const tokenAad = (userId: number, which: string) => `preview-gate:user-token:v1|user=${userId}|${which}`;

export interface Session {
  id: number;
  userId: number;
  csrf: string;
  expiresAt: Date;
  user: { id: number; githubId: number; login: string };
}

/**
 * Sign-in sessions, the one-time tickets and host cookies of hidden previews, and the audit trail. Cookies
 * and tickets are random; the database holds only their sha256, and the user's GitHub tokens sealed with the
 * user's own DEK (wrapped by the key service, like an account's).
 */
export class Sessions {
  private readonly tokenRequests = new Map<number, Promise<string>>();
  constructor(
    private readonly db: Database,
    private readonly keys: KeyService,
    private readonly api: GitHubUserApi,
    private readonly sessionMs: number,
  ) {}

  /** Records the signed-in user and opens a session; returns the cookie value. */
  async open(githubUser: GitHubUser, tokens: UserTokens): Promise<string> {
    const user = await this.ensureUser(githubUser);
    const key = await this.userKey(user.id);
    const token = newToken();
    await this.db.orm
      .insert(sessions)
      .values({
        tokenHash: hash(token),
        userId: user.id,
        csrf: newToken(),
        accessToken: seal(key, Buffer.from(tokens.accessToken), tokenAad(user.id, 'access')),
        accessExpiresAt: tokens.accessExpiresAt,
        refreshToken: tokens.refreshToken ? seal(key, Buffer.from(tokens.refreshToken), tokenAad(user.id, 'refresh')) : null,
        expiresAt: new Date(Date.now() + this.sessionMs),
      });
    key.fill(0);
    await this.audit(user.id, 'sign-in', githubUser.login);
    return token;
  }

  /** The live session a cookie names, or undefined (unknown, expired, revoked). */
  async find(cookie: string | undefined): Promise<Session | undefined> {
    if (!cookie) return undefined;
    const row = await first(
      this.db.orm
        .select({ session: sessions, user: users })
        .from(sessions)
        .innerJoin(users, eq(sessions.userId, users.id))
        .where(and(eq(sessions.tokenHash, hash(cookie)), isNull(sessions.revokedAt), gt(sessions.expiresAt, new Date())))
        .limit(1),
    );
    if (!row) return undefined;
    return {
      id: row.session.id,
      userId: row.user.id,
      csrf: row.session.csrf,
      expiresAt: row.session.expiresAt,
      user: { id: row.user.id, githubId: Number(row.user.providerId), login: row.user.login ?? row.user.providerId },
    };
  }

  async revoke(sessionId: number): Promise<void> {
    await this.db.orm.update(sessions).set({ revokedAt: new Date() }).where(eq(sessions.id, sessionId));
  }

  /**
   * The user's GitHub token for this session, refreshed when it has expired (GitHub App user tokens last 8 h).
   * Concurrent callers of one session share one refresh: a refresh token is good once, a second refresh with it fails.
   */
  accessToken(session: Session): Promise<string> {
    const inFlight = this.tokenRequests.get(session.id);
    if (inFlight) return inFlight;
    const request = this.readOrRefreshToken(session).finally(() => this.tokenRequests.delete(session.id));
    this.tokenRequests.set(session.id, request);
    return request;
  }

  private async readOrRefreshToken(session: Session): Promise<string> {
    const row = await only(this.db.orm.select().from(sessions).where(eq(sessions.id, session.id)).limit(1));
    const key = await this.userKey(session.userId);
    try {
      const fresh = !row.accessExpiresAt || row.accessExpiresAt.getTime() > Date.now() + 60_000;
      if (fresh || !row.refreshToken) return open(key, row.accessToken, tokenAad(session.userId, 'access')).toString();
      const tokens = await this.api.refresh(open(key, row.refreshToken, tokenAad(session.userId, 'refresh')).toString());
      await this.db.orm
        .update(sessions)
        .set({
          accessToken: seal(key, Buffer.from(tokens.accessToken), tokenAad(session.userId, 'access')),
          accessExpiresAt: tokens.accessExpiresAt,
          refreshToken: tokens.refreshToken ? seal(key, Buffer.from(tokens.refreshToken), tokenAad(session.userId, 'refresh')) : row.refreshToken,
        })
        .where(eq(sessions.id, session.id));
      return tokens.accessToken;
    } finally {
      key.fill(0);
    }
  }

  /** A one-time ticket (≤ 60 s) that lets this session's user open the hidden preview at `host`. */
  async issueTicket(session: Session, host: string): Promise<string> {
    const ticket = newToken();
    await this.db.orm.insert(previewTickets).values({ tokenHash: hash(ticket), sessionId: session.id, host, expiresAt: new Date(Date.now() + TICKET_MS) });
    return ticket;
  }

  /**
   * Exchanges a ticket, once, on the host it was made for, for that host's cookie value (≤ 1 h, never past the
   * session). Undefined for a ticket replayed, expired, unknown or for another host.
   */
  async redeemTicket(ticket: string, host: string): Promise<{ cookie: string; maxAgeSeconds: number } | undefined> {
    // Deleted as it is read: of two redemptions (two replicas, one database) only one gets the row.
    const entry = await first(this.db.orm.delete(previewTickets).where(eq(previewTickets.tokenHash, hash(ticket))).returning());
    if (!entry || entry.expiresAt.getTime() < Date.now() || entry.host !== host) return undefined;
    const session = await first(this.db.orm.select().from(sessions).where(eq(sessions.id, entry.sessionId)).limit(1));
    if (!session || session.revokedAt || session.expiresAt.getTime() <= Date.now()) return undefined;
    // One `now` for both: the cookie's Max-Age is exactly the grant's lifetime (an hour, or what the session has left).
    const now = Date.now();
    const expiresAt = Math.min(now + GRANT_MS, session.expiresAt.getTime());
    const cookie = newToken();
    await this.db.orm.insert(previewGrants).values({ tokenHash: hash(cookie), sessionId: session.id, host, expiresAt: new Date(expiresAt) });
    return { cookie, maxAgeSeconds: Math.floor((expiresAt - now) / 1000) };
  }

  /** The live session behind a preview host's cookie, only on that host. */
  async grant(cookie: string | undefined, host: string): Promise<Session | undefined> {
    if (!cookie) return undefined;
    const row = await first(
      this.db.orm
        .select({ grant: previewGrants, session: sessions, user: users })
        .from(previewGrants)
        .innerJoin(sessions, eq(previewGrants.sessionId, sessions.id))
        .innerJoin(users, eq(sessions.userId, users.id))
        .where(and(eq(previewGrants.tokenHash, hash(cookie)), eq(previewGrants.host, host), gt(previewGrants.expiresAt, new Date())))
        .limit(1),
    );
    if (!row || row.session.revokedAt || row.session.expiresAt.getTime() <= Date.now()) return undefined;
    const { user } = row;
    return {
      id: row.session.id,
      userId: user.id,
      csrf: row.session.csrf,
      expiresAt: row.session.expiresAt,
      user: { id: user.id, githubId: Number(user.providerId), login: user.login ?? user.providerId },
    };
  }

  async audit(userId: number | null, action: string, subject: string, detail?: string): Promise<void> {
    await this.db.orm.insert(auditEvents).values({ userId, action, subject, detail });
  }

  /** Drops expired tickets, grants and sessions' leftovers and audit events past AUDIT_DAYS. */
  async prune(now = new Date()): Promise<void> {
    await this.db.transaction(async (tx) => {
      await tx.delete(previewGrants).where(lt(previewGrants.expiresAt, now));
      await tx.delete(previewTickets).where(lt(previewTickets.expiresAt, now));
      await tx.delete(auditEvents).where(lt(auditEvents.createdAt, new Date(now.getTime() - AUDIT_DAYS * 86_400_000)));
    });
  }

  /**
   * The user's row, made at the first sign-in, its login kept up to date. One upsert: two first sign-ins at once
   * both read "no such user" under PostgreSQL's READ COMMITTED, and the second insert would break the unique index.
   */
  private async ensureUser(githubUser: GitHubUser) {
    return only(
      this.db.orm
        .insert(users)
        .values({ provider: 'github', providerId: String(githubUser.id), login: githubUser.login })
        .onConflictDoUpdate({ target: [users.provider, users.providerId], set: { login: githubUser.login } })
        .returning(),
    );
  }

  /**
   * The user's DEK (made and wrapped by the key service at first use). Two first sign-ins at once both make one;
   * only the first stored wins (a conditional update, atomic in the database) and the other uses the winner's,
   * so no session's tokens are sealed with a key that was thrown away.
   */
  private async userKey(userId: number): Promise<Buffer> {
    const user = await only(this.db.orm.select().from(users).where(eq(users.id, userId)).limit(1));
    if (user.wrappedDek && user.dekKeyId) return this.keys.unwrapKey(user.wrappedDek, user.dekKeyId);
    const dek = newDataKey();
    const { wrapped, keyId } = await this.keys.wrapKey(dek);
    const stored = await this.db.orm
      .update(users)
      .set({ wrappedDek: wrapped, dekKeyId: keyId })
      .where(and(eq(users.id, userId), isNull(users.wrappedDek)))
      .returning({ id: users.id });
    if (stored.length === 1) return dek;
    dek.fill(0);
    return this.userKey(userId);
  }
}

/** The audit trail, newest first, for `preview-gate audit`. */
export function auditTrail(db: Database, limit = 1000) {
  return db.orm
    .select({ at: auditEvents.createdAt, action: auditEvents.action, subject: auditEvents.subject, detail: auditEvents.detail, user: users.login, userId: users.providerId })
    .from(auditEvents)
    .leftJoin(users, eq(auditEvents.userId, users.id))
    .orderBy(desc(auditEvents.id))
    .limit(limit);
}

/**
 * Ends every open session of one user (`login`, as last seen, or GitHub's numeric id): the dashboard at their
 * next request, their hidden-preview cookies once nginx's kept yes runs out (5 s); for `preview-gate sessions
 * revoke`. Undefined when no such user signed in.
 */
export function revokeUserSessions(
  db: Database,
  who: string,
): Promise<{ login: string; githubId: string; revoked: number } | { ambiguous: string[] } | undefined> {
  return db.transaction(async (tx) => {
    const matches = /^[0-9]+$/.test(who)
      ? await tx.select().from(users).where(and(eq(users.provider, 'github'), eq(users.providerId, who)))
      : await tx.select().from(users).where(sql`lower(${users.login}) = ${who.toLowerCase()}`);
    // After a GitHub rename two people can have been seen with one login: only the id says which one is meant.
    if (matches.length > 1) return { ambiguous: matches.map((u) => u.providerId) };
    const user = matches[0];
    if (!user) return undefined;
    const { length: revoked } = await tx
      .update(sessions)
      .set({ revokedAt: new Date() })
      .where(and(eq(sessions.userId, user.id), isNull(sessions.revokedAt), gt(sessions.expiresAt, new Date())))
      .returning({ id: sessions.id });
    const login = user.login ?? user.providerId;
    await tx.insert(auditEvents).values({ userId: null, action: 'revoke', subject: login, detail: `${revoked} session(s), by the operator` });
    return { login, githubId: user.providerId, revoked };
  });
}
