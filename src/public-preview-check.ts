import { badRequest, forbidden, notFound } from './errors.js';
import type { Previews } from './previews.js';
import type { Registry, Repository } from './registry.js';
import { isGitHubRepositoryName, type TrustDecision } from './trust.js';
import { tokenFromHeader } from './upload/tokens.js';

export interface PublicPreviewAnswer {
  canHavePublicPreview: boolean;
  reason: string;
}


/**
 * `GET /can-have-public-preview/<owner>/<repo>/<pr>`, safe to leave open to anyone: answered from a decision at
 * most `maxAgeMs` old (one GitHub read per PR at a time, whatever the number of askers), only for repositories
 * the app serves, with the upload token required for a private repository and no team or label named for it.
 */
export class PublicPreviewCheck {
  private readonly decisions = new Map<string, { at: number; decision: Promise<TrustDecision> }>();

  constructor(
    private readonly registry: Registry,
    private readonly previews: Previews,
    /** The upload route's own token check: the repository a valid upload token for `pr` proves. */
    private readonly authenticate: (token: string, pr: number) => Promise<Repository>,
    private readonly maxAgeMs = 60_000,
    private readonly now: () => number = Date.now,
  ) {}

  async answer(owner: string, name: string, pr: number, authorization: string | undefined): Promise<PublicPreviewAnswer> {
    if (!isGitHubRepositoryName(`${owner}/${name}`)) throw badRequest(`"${owner}/${name}" is not a GitHub repository name.`);
    const repo = await this.registry.findRepository(`${owner}/${name}`);
    if (!repo?.installed) throw notFound(`preview-gate serves no previews for ${owner}/${name}.`);
    // Unknown privacy counts as private until GitHub has said otherwise.
    const isPrivate = repo.private !== false;
    if (isPrivate) {
      const proven = await this.authenticate(tokenFromHeader(authorization), pr);
      if (proven.id !== repo.id) throw forbidden(`The token is not for ${owner}/${name}.`);
    }
    const decision = await this.decision(repo, pr);
    if (!isPrivate) return { canHavePublicPreview: decision.trusted, reason: decision.reason };
    return {
      canHavePublicPreview: decision.trusted,
      reason: decision.trusted ? 'the pull request is trusted' : 'the pull request is not trusted yet',
    };
  }

  /** The PR's decision, read from GitHub at most once per `maxAgeMs`; concurrent askers share one read. */
  private decision(repo: Repository, pr: number): Promise<TrustDecision> {
    const key = `${repo.id}#${pr}`;
    const now = this.now();
    const cached = this.decisions.get(key);
    if (cached && now - cached.at < this.maxAgeMs) return cached.decision;
    const decision = this.previews.decisions.readFacts(repo, pr).then(({ facts }) => facts.decision);
    this.decisions.set(key, { at: now, decision });
    // A failed read is not kept: the next asker tries again.
    decision.catch(() => this.decisions.get(key)?.decision === decision && this.decisions.delete(key));
    if (this.decisions.size > 10_000) this.forgetOld(now);
    return decision;
  }

  private forgetOld(now: number): void {
    for (const [key, entry] of this.decisions) if (now - entry.at >= this.maxAgeMs) this.decisions.delete(key);
  }
}
