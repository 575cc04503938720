import fs from 'node:fs';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream } from 'node:stream/web';
import type { Logger } from 'pino';
import type { BuildStore } from './builds/store.js';
import { extractZip } from './builds/zip.js';
import type { Config } from './config.js';
import { HttpError, tooLarge } from './errors.js';
import { githubError, type GitHub, type Octokit } from './github.js';
import { STATUS_CONTEXT } from './notify.js';
import type { Previews } from './previews.js';
import type { Registry } from './registry.js';

/** The fields of a `workflow_run` webhook payload that pull mode reads. */
export interface WorkflowRunLike {
  id: number;
  path: string;
  event: string;
  conclusion: string | null;
  head_sha: string;
  head_branch: string | null;
  head_repository: { full_name: string; owner: { login: string } | null } | null;
  pull_requests: ({ number: number; head: { sha: string } } | null)[];
}

export type PullOutcome = { stored: true; pr: number; visibility: string } | { stored: false; why: string };

/** A whole download is bounded in time, unlike other GitHub calls, which must answer within GITHUB_TIMEOUT_MS. */
const DOWNLOAD_TIMEOUT_MS = 15 * 60_000;

/**
 * Pull mode, for PRs from forks (no secrets, no OIDC token): when the repository's preview workflow has
 * finished, the app asks GitHub which PR the run built, downloads the run's artifact with the installation
 * token and stores it like an upload. Nothing in the run's output decides where it goes or who it trusts.
 */
export class ArtifactPuller {
  constructor(
    private readonly registry: Registry,
    private readonly previews: Previews,
    private readonly github: GitHub,
    private readonly store: BuildStore,
    private readonly config: Config,
    private readonly log: Logger,
  ) {}

  /**
   * Stores the artifact of a finished run, or says why not (logged on one line). Throws only when GitHub
   * cannot be asked (the webhook then fails and GitHub redelivers it).
   */
  async onWorkflowRun(octokit: Octokit, repoFullName: string, run: WorkflowRunLike): Promise<PullOutcome> {
    const outcome = await this.pull(octokit, repoFullName, run).catch((err: unknown) => {
      // A refused artifact (unsafe, too large, already stored) is final; GitHub being unreachable is not.
      if (err instanceof HttpError && err.status < 500) return { stored: false as const, why: err.message };
      throw err;
    });
    const fields = { repo: repoFullName, run: run.id, sha: run.head_sha };
    if (outcome.stored) this.log.info({ ...fields, pr: outcome.pr }, `stored the preview artifact of workflow run ${run.id} (${outcome.visibility})`);
    else this.log.info(fields, `workflow run ${run.id} not stored: ${outcome.why}`);
    return outcome;
  }

  private async pull(octokit: Octokit, repoFullName: string, run: WorkflowRunLike): Promise<PullOutcome> {
    const repo = await this.registry.findRepository(repoFullName);
    if (!repo?.installed) return { stored: false, why: 'the repository is not installed' };
    // What the payload alone decides comes first: most runs of a busy repository end here, asking GitHub nothing.
    if (run.event !== 'pull_request') return { stored: false, why: `the run was triggered by ${run.event}, not by pull_request` };
    if (run.conclusion !== 'success') return { stored: false, why: `the run's conclusion is ${run.conclusion ?? 'unknown'}` };
    const [owner, name] = repoFullName.split('/') as [string, string];
    const settings = await this.github.settings(octokit, owner, name);
    if (!settings.workflow) return { stored: false, why: 'no workflow is named in .github/preview-gate.yml (pull mode is off)' };
    if (path.posix.basename(run.path) !== settings.workflow) {
      return { stored: false, why: `the run is of ${path.posix.basename(run.path)}, not of the preview workflow ${settings.workflow}` };
    }

    const number = await this.findPullRequest(octokit, owner, name, run);
    if (number === undefined) return { stored: false, why: `commit ${run.head_sha} is the head of no open pull request` };
    const facts = await this.github.prFacts(octokit, owner, name, number, settings);
    if (facts.state !== 'open') return { stored: false, why: `pull request #${number} is closed` };
    if (!(await this.github.prHasCommit(octokit, owner, name, number, run.head_sha))) {
      return { stored: false, why: `commit ${run.head_sha} is not part of pull request #${number}` };
    }

    const artifact = await this.findArtifact(octokit, owner, name, run.id, settings.artifact);
    if (!artifact) return { stored: false, why: `the run has no artifact named "${settings.artifact}"` };
    if (artifact.expired) return { stored: false, why: `the artifact "${settings.artifact}" has expired` };
    if (artifact.size_in_bytes > this.config.maxUploadBytes) {
      return { stored: false, why: `the artifact is larger than ${this.config.maxUploadBytes} bytes` };
    }

    const zipFile = this.store.stagingFile(`-artifact-${artifact.id}.zip`);
    try {
      const { pr } = await this.previews.ingestBuild(repo, number, async () => ({ repo, facts }), run.head_sha, 'artifact', async (target) => {
        await this.download(octokit, owner, name, artifact.id, zipFile);
        return extractZip(zipFile, target);
      });
      return { stored: true, pr: number, visibility: pr.visibility };
    } catch (err) {
      if (err instanceof HttpError && (err.status === 400 || err.status === 413)) {
        await this.showRefusal(octokit, owner, name, run.head_sha, err.message);
      }
      throw err;
    } finally {
      await fs.promises.rm(zipFile, { force: true });
    }
  }

  /** The PR's people see why its preview is missing: an `error` commit status (best effort, only logged if it fails). */
  private async showRefusal(octokit: Octokit, owner: string, repo: string, sha: string, why: string): Promise<void> {
    try {
      await octokit.rest.repos.createCommitStatus({
        owner,
        repo,
        sha,
        state: 'error',
        context: STATUS_CONTEXT,
        // GitHub keeps at most 140 characters of a status description.
        description: `Preview artifact refused: ${why}`.slice(0, 140),
      });
    } catch (err) {
      this.log.warn({ repo: `${owner}/${repo}`, sha, err: (err as Error).message }, 'could not set the commit status of a refused artifact');
    }
  }

  /**
   * The open PR whose head is the run's commit. Same-repository runs list their PRs; runs of forks list none,
   * so the open PRs of the fork's branch are asked for and matched on head SHA and head repository.
   */
  private async findPullRequest(octokit: Octokit, owner: string, repo: string, run: WorkflowRunLike): Promise<number | undefined> {
    const listed = run.pull_requests.find((p) => p?.head.sha === run.head_sha);
    if (listed) return listed.number;
    const headOwner = run.head_repository?.owner?.login;
    if (!run.head_repository || !headOwner || !run.head_branch) return undefined;
    try {
      const { data } = await octokit.rest.pulls.list({
        owner,
        repo,
        state: 'open',
        head: `${headOwner}:${run.head_branch}`,
        per_page: 100,
      });
      return data.find((p) => p.head.sha === run.head_sha && p.head.repo?.full_name === run.head_repository!.full_name)?.number;
    } catch (err) {
      throw githubError(err, `which pull request built ${run.head_sha}`);
    }
  }

  private async findArtifact(octokit: Octokit, owner: string, repo: string, runId: number, artifactName: string) {
    try {
      const { data } = await octokit.rest.actions.listWorkflowRunArtifacts({ owner, repo, run_id: runId, name: artifactName, per_page: 100 });
      return data.artifacts.find((a) => a.name === artifactName);
    } catch (err) {
      throw githubError(err, `for the artifacts of workflow run ${runId}`);
    }
  }

  /** Streams the artifact's zip (GitHub answers with a redirect to storage) to `file`, within MAX_UPLOAD_BYTES. */
  private async download(octokit: Octokit, owner: string, repo: string, artifactId: number, file: string): Promise<void> {
    let body: ReadableStream | null;
    try {
      const response = await octokit.rest.actions.downloadArtifact({
        owner,
        repo,
        artifact_id: artifactId,
        archive_format: 'zip',
        request: {
          parseSuccessResponseBody: false,
          fetch: (url: string, init: RequestInit) => globalThis.fetch(url, { ...init, signal: AbortSignal.timeout(DOWNLOAD_TIMEOUT_MS) }),
        },
      });
      body = response.data as unknown as ReadableStream | null;
    } catch (err) {
      throw githubError(err, `for artifact ${artifactId}`);
    }
    if (!body) throw githubError(new Error('empty body'), `for artifact ${artifactId}`);
    const max = this.config.maxUploadBytes;
    let received = 0;
    const limit = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        received += chunk.length;
        cb(received > max ? tooLarge(`The artifact is larger than ${max} bytes.`) : null, chunk);
      },
    });
    try {
      await pipeline(Readable.fromWeb(body), limit, fs.createWriteStream(file, { flags: 'wx', mode: 0o600 }));
    } catch (err) {
      if (err instanceof HttpError) throw err;
      throw githubError(err, `for artifact ${artifactId} (the download broke off)`);
    }
  }
}
