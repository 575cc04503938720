import crypto from 'node:crypto';
import { and, eq } from './db/orm.js';
import type { Logger } from 'pino';
import type { Config } from './config.js';
import type { Database } from './db/database.js';
import { builds, pullRequests } from './db/tables.js';
import { isNotFound, type Octokit } from './github.js';
import type { PullRequest, Repository } from './registry.js';
import type { RepoSettings } from './trust.js';
import { changesOfBuilds, describeChanges, type ChangedFile } from './previews/changed-pages.js';

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
    private readonly db: Database,
    private readonly config: Config,
    private readonly log: Logger,
  ) {}

  /** Brings GitHub in line with the PR's state for `changed` builds (and the comment for all of them). */
  async notify(octokit: Octokit, repo: Repository, pr: PullRequest, settings: RepoSettings, changed: Build[]): Promise<void> {
    const [owner, name] = repo.fullName.split('/') as [string, string];
    const all = await this.db.orm.select().from(builds).where(and(eq(builds.pullRequestId, pr.id), eq(builds.status, 'ready')));
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
      await this.db.orm.update(builds).set({ deploymentId: id }).where(eq(builds.id, build.id));
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
    const body = await this.commentBody(r, pr, settings, all);
    const hash = crypto.createHash('sha256').update(body).digest('hex');
    // The same body already written there (another replica's run, a feedback that changed nothing): no edit.
    if (pr.commentId && pr.commentHash === hash) {
      this.log.debug({ repo: r.fullName, pr: pr.number }, 'preview comment unchanged: not edited');
      return;
    }
    const existing = pr.commentId ?? (await this.findComment(octokit, owner, repo, pr.number));
    if (existing) {
      try {
        await octokit.rest.issues.updateComment({ owner, repo, comment_id: existing, body });
        await this.saveComment(pr, existing, hash);
        return;
      } catch (err) {
        if (!isNotFound(err)) throw err;
        this.log.info({ repo: r.fullName, pr: pr.number }, 'preview comment was deleted; posting a new one');
      }
    }
    const { data } = await octokit.rest.issues.createComment({ owner, repo, issue_number: pr.number, body });
    await this.saveComment(pr, data.id, hash);
  }

  private async findComment(octokit: Octokit, owner: string, repo: string, number: number): Promise<number | undefined> {
    const comments = await octokit.paginate(octokit.rest.issues.listComments, { owner, repo, issue_number: number, per_page: 100 });
    return comments.find((c) => c.body?.includes(COMMENT_MARKER))?.id;
  }

  private async saveComment(pr: PullRequest, commentId: number, commentHash: string): Promise<void> {
    await this.db.orm.update(pullRequests).set({ commentId, commentHash }).where(eq(pullRequests.id, pr.id));
  }

  async commentBody(repo: Repository, pr: PullRequest, settings: RepoSettings, all: Build[]): Promise<string> {
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
    lines.push(...(await this.changedPagesSection(repo, pr, all)));
    return lines.join('\n');
  }

  /**
   * Per build, newest first: the pages it changed since the PR's previous build, the first CHANGES_PER_BUILD with
   * direct links, then how many more (on the dashboard). Bounded so that the comment stays far below GitHub's
   * 65,536 characters whatever the paths.
   */
  private async changedPagesSection(repo: Repository, pr: PullRequest, all: Build[]): Promise<string[]> {
    if (!all.length) return [];
    // The newest COMMENT_BUILDS builds, and the one before them to compare the oldest of them with: a PR may hold
    // MAX_PR_BUILDS builds, and each list costs a few milliseconds to decode.
    const byAge = [...all].sort((a, b) => a.id - b.id);
    const recent = byAge.slice(-COMMENT_BUILDS);
    const changes = await changesOfBuilds(this.db.orm, this.config, repo.site, pr.number, byAge.slice(-COMMENT_BUILDS - 1));
    const dashboard = this.config.githubClientId ? ` on the [dashboard](${this.config.publicUrl}/)` : '';
    const lines = ['', '**Pages changed by each commit** (HTML files whose bytes differ from the commit built before it):'];
    if (pr.visibility === 'hidden') {
      lines.push(
        '',
        dashboard
          ? "_These previews are hidden: their links answer 404, except to people who can push to the repository and opened that commit's preview from the dashboard (for an hour)._"
          : '_These previews are hidden: their links answer 404 until the previews are published._',
      );
    }
    lines.push('');
    let budget = COMMENT_CHANGES_BUDGET;
    for (const build of [...recent].reverse()) {
      const entry = changes.get(build.id) ?? { kind: 'unknown' };
      const text = [`- \`${build.sha7}\`: ${describeChanges(entry, (sha7) => `\`${sha7}\``)}`];
      if (entry.kind === 'compared') {
        const listed = [
          ...entry.pages.changed.map((f) => ['changed', f] as const),
          ...entry.pages.added.map((f) => ['added', f] as const),
          ...entry.pages.removed.map((f) => ['removed', f] as const),
        ];
        let shown = 0;
        for (const [kind, file] of listed.slice(0, CHANGES_PER_BUILD)) {
          const line = `  - ${kind}: ${link(file)}`;
          if (line.length > budget) break;
          budget -= line.length;
          text.push(line);
          shown++;
        }
        if (shown < listed.length) text.push(`  - and ${listed.length - shown} more${dashboard}`);
      }
      lines.push(...text);
    }
    const older = byAge.length - recent.length;
    if (older > 0) lines.push(`- ${older} older commit${older === 1 ? '' : 's'}${dashboard || ' (not listed here)'}`);
    return lines;
  }
}

const CHANGES_PER_BUILD = 10;
/** Builds whose changes the comment lists, newest first. */
const COMMENT_BUILDS = 10;
/** Characters the links of the changed pages may take in the comment, all builds together. */
const COMMENT_CHANGES_BUDGET = 30_000;

/** A markdown link whose text is the path as a code span: a path is the PR author's text, never markdown or a mention. */
function link(file: ChangedFile): string {
  const shown = file.path.length > 120 ? `…${file.path.slice(-119)}` : file.path;
  return `[${codeSpan(shown)}](${file.url})`;
}

function codeSpan(text: string): string {
  const clean = text.replace(/[\u0000-\u001f\u007f]/g, '\ufffd');
  const longestRun = Math.max(0, ...(clean.match(/`+/g) ?? []).map((run) => run.length));
  const fence = '`'.repeat(longestRun + 1);
  const pad = clean.startsWith('`') || clean.endsWith('`') ? ' ' : '';
  return `${fence}${pad}${clean}${pad}${fence}`;
}
