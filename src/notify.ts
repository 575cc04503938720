import { and, eq } from './db/orm.js';
import type { Logger } from 'pino';
import type { Config } from './config.js';
import type { Db } from './db/client.js';
import { builds, pullRequests } from './db/schema.js';
import { isNotFound, type Octokit } from './github.js';
import type { PullRequest, Repository } from './registry.js';
import type { RepoSettings } from './trust.js';

/** Finds our comment again, whoever edited the rest of it. */
export const COMMENT_MARKER = '<!-- preview-gate:comment -->';
export const STATUS_CONTEXT = 'preview-gate';

type Build = typeof builds.$inferSelect;

export const buildUrl = (config: Config, site: string, pr: number, sha7: string) =>
  `${config.previewScheme}://pr${pr}-${sha7}--${site}.${config.previewDomain}/`;
export const latestUrl = (config: Config, site: string, pr: number) => `${config.previewScheme}://pr${pr}--${site}.${config.previewDomain}/`;

/**
 * Tells GitHub what happened: one PR comment (edited in place), a commit status per built SHA, and a
 * Deployment per public build. Idempotent: running it twice gives the same end state.
 */
export class Notifier {
  constructor(
    private readonly db: Db,
    private readonly config: Config,
    private readonly log: Logger,
  ) {}

  /** Brings GitHub in line with the PR's state for `changed` builds (and the comment for all of them). */
  async notify(octokit: Octokit, repo: Repository, pr: PullRequest, settings: RepoSettings, changed: Build[]): Promise<void> {
    const [owner, name] = repo.fullName.split('/') as [string, string];
    const all = this.db.select().from(builds).where(and(eq(builds.pullRequestId, pr.id), eq(builds.status, 'ready'))).all();
    const isPublic = pr.visibility === 'public';
    for (const build of changed) {
      const url = buildUrl(this.config, repo.site, pr.number, build.sha7);
      await octokit.rest.repos.createCommitStatus({
        owner,
        repo: name,
        sha: build.sha,
        context: STATUS_CONTEXT,
        state: isPublic ? 'success' : 'pending',
        target_url: isPublic ? url : undefined,
        description: isPublic ? 'Preview is live' : `Waiting for the '${settings.trustedLabel}' label`,
      });
      await this.deployment(octokit, owner, name, pr, build, isPublic, url);
    }
    if (settings.comment) await this.comment(octokit, owner, name, repo, pr, settings, all);
  }

  private async deployment(octokit: Octokit, owner: string, repo: string, pr: PullRequest, build: Build, isPublic: boolean, url: string) {
    let id = build.deploymentId;
    if (!id) {
      if (!isPublic) return; // nothing to view yet
      const { data } = await octokit.rest.repos.createDeployment({
        owner,
        repo,
        ref: build.sha,
        environment: `preview/pr-${pr.number}`,
        auto_merge: false,
        required_contexts: [],
        transient_environment: true,
        production_environment: false,
        description: `Preview of ${build.sha7}`,
      });
      if (!('id' in data)) return;
      id = data.id;
      this.db.update(builds).set({ deploymentId: id }).where(eq(builds.id, build.id)).run();
    }
    await octokit.rest.repos.createDeploymentStatus({
      owner,
      repo,
      deployment_id: id,
      state: isPublic ? 'success' : 'inactive',
      environment_url: isPublic ? url : undefined,
    });
  }

  private async comment(octokit: Octokit, owner: string, repo: string, r: Repository, pr: PullRequest, settings: RepoSettings, all: Build[]) {
    const body = this.commentBody(r, pr, settings, all);
    const existing = pr.commentId ?? (await this.findComment(octokit, owner, repo, pr.number));
    if (existing) {
      try {
        await octokit.rest.issues.updateComment({ owner, repo, comment_id: existing, body });
        if (existing !== pr.commentId) this.saveCommentId(pr, existing);
        return;
      } catch (err) {
        if (!isNotFound(err)) throw err;
        this.log.info({ repo: r.fullName, pr: pr.number }, 'preview comment was deleted; posting a new one');
      }
    }
    const { data } = await octokit.rest.issues.createComment({ owner, repo, issue_number: pr.number, body });
    this.saveCommentId(pr, data.id);
  }

  private async findComment(octokit: Octokit, owner: string, repo: string, number: number): Promise<number | undefined> {
    const comments = await octokit.paginate(octokit.rest.issues.listComments, { owner, repo, issue_number: number, per_page: 100 });
    return comments.find((c) => c.body?.includes(COMMENT_MARKER))?.id;
  }

  private saveCommentId(pr: PullRequest, commentId: number) {
    this.db.update(pullRequests).set({ commentId }).where(eq(pullRequests.id, pr.id)).run();
  }

  commentBody(repo: Repository, pr: PullRequest, settings: RepoSettings, all: Build[]): string {
    const lines = [COMMENT_MARKER];
    if (pr.visibility === 'public') {
      lines.push(`**Preview** of the newest commit: ${latestUrl(this.config, repo.site, pr.number)}`, '');
      lines.push('| commit | preview |', '|---|---|');
      for (const b of [...all].reverse()) lines.push(`| ${b.sha7} | ${buildUrl(this.config, repo.site, pr.number, b.sha7)} |`);
    } else {
      lines.push(
        `**Previews of this pull request are hidden**: ${pr.reason ?? 'it is not trusted yet'}.`,
        '',
        `A maintainer who has reviewed the changes can add the label \`${settings.trustedLabel}\` to publish them` +
          (all.length ? ` (${all.length} build${all.length === 1 ? '' : 's'} waiting).` : '.'),
      );
      if (this.config.githubClientId) {
        lines.push('', `People who can push to this repository can look at the hidden previews first, and publish or hide them, on the [preview-gate dashboard](${this.config.publicUrl}/).`);
      }
    }
    return lines.join('\n');
  }
}
