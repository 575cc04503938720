import fs from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { Router, type Request, type Response } from 'express';
import multer from 'multer';
import { BuildTree, extractTarGz, type BuildTarget, type ExtractResult } from '../builds/extract.js';
import type { BuildStore } from '../builds/store.js';
import type { Config } from '../config.js';
import type { Database } from '../db/database.js';
import { badRequest, forbidden, tooLarge, unavailable } from '../errors.js';
import type { GitHub, Octokit } from '../github.js';
import type { Metrics } from '../metrics.js';
import { buildUrl } from '../notify.js';
import type { Previews } from '../previews.js';
import type { Registry, Repository } from '../registry.js';
import type { SecretStore } from '../secrets/secrets.js';
import { manifestReader, MANIFESTS_READ_PER_REPOSITORY } from './manifest-reader.js';
import { ManifestList } from './manifest-list.js';
import { MANIFEST_HEADER, manifestListsDir, Manifests, readManifestBody } from './manifests.js';
import { claimedSlug, tokenAlgorithm, tokenFromHeader, verifyOidcToken, verifyTravisToken } from './tokens.js';

export const UPLOAD_SECRET_NAME = 'upload-key';
/** A manifest of 50,000 files with paths of 200 characters fits. */
const MAX_MANIFEST_BYTES = 16 * 1024 * 1024;
/** The Retry-After of a manifest refused because its repository's are being read (the worst one takes ~1 s). */
const MANIFEST_RETRY_AFTER_S = 2;

export interface UploadDeps {
  config: Config;
  db: Database;
  registry: Registry;
  secrets: SecretStore;
  store: BuildStore;
  previews: Previews;
  metrics: Metrics;
  /** Undefined while the GitHub App is not configured (Probot's setup flow is running). */
  github?: GitHub;
}

/** POST /create-build/<pr>/<sha>: parse → authenticate → authorize → store → answer. */
export function uploadRouter(deps: UploadDeps): Router {
  const { config } = deps;
  const manifests = new Manifests(deps.db, manifestListsDir(config.dataDir));
  const router = Router({ caseSensitive: true, strict: true }); // as the app's routing (server.ts)
  const multipart = multer({
    // Named as this replica's, so that another replica's start leaves it (see BuildStore.removeStaging).
    storage: multer.diskStorage({ destination: deps.store.stagingDir, filename: (_req, _file, done) => done(null, path.basename(deps.store.stagingFile())) }),
    limits: { fileSize: config.maxUploadBytes, files: 1, fields: 0, parts: 1 },
  }).single('artifact');

  router.post('/create-build/:pr/:sha', async (req, res) => {
    answerWhateverComes(deps, req, res);
    const pr = parsePr(req.params.pr);
    const sha = parseSha(req.params.sha);
    // Authenticate before reading a single byte of the body.
    const authenticated = await authenticate(deps, tokenFromHeader(req.headers.authorization), pr);
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > config.maxUploadBytes) throw tooLarge(`The upload is larger than ${config.maxUploadBytes} bytes.`);
    // A digest upload: the archive holds only what the manifest's answer said was missing.
    const digest = req.headers[MANIFEST_HEADER];
    const manifest = typeof digest === 'string' ? await manifests.find(authenticated.id, pr, sha, digest.trim()) : undefined;

    let tempFile: string | undefined;
    let answer;
    try {
      answer = await storeUpload(deps, req, res, authenticated, pr, sha, async (target) => {
        cutWhenIdle(req, res, config.uploadIdleMs);
        const body = isMultipart(req) ? fs.createReadStream((tempFile = await receiveMultipart(multipart, req, res))) : req;
        return extractTarGz(body as Readable, { ...target, manifest: manifest?.files, asked: manifest?.asked });
      });
      if (manifest) await manifests.forget(manifest.id);
    } finally {
      // Removed before answering, so a client that sees the answer never sees a leftover.
      if (tempFile) await fs.promises.rm(tempFile, { force: true });
    }
    res.status(answer.status).json(answer.body);
  });

  /**
   * The digest protocol's first step: the build's file list with hashes. Answers the hashes the repository
   * does not store yet, or, when it stores them all, stores the build at once and answers like an upload.
   */
  router.post('/create-build/:pr/:sha/manifest', async (req, res) => {
    answerWhateverComes(deps, req, res);
    const pr = parsePr(req.params.pr);
    const sha = parseSha(req.params.sha);
    const authenticated = await authenticate(deps, tokenFromHeader(req.headers.authorization), pr);
    // Inflating, parsing, checking and looking up its contents grow with the manifest: done on its thread,
    // where repositories take turns; a repository's manifests beyond a few at once wait on the client's side.
    const leave = manifestReader().enter(authenticated.id);
    if (!leave) {
      res.set('Retry-After', String(MANIFEST_RETRY_AFTER_S));
      throw unavailable(`This repository already has ${MANIFESTS_READ_PER_REPOSITORY} manifests being read; send this one again in a few seconds.`);
    }
    let read;
    try {
      const { body, gzip } = await readManifestBody(req, MAX_MANIFEST_BYTES);
      read = await manifestReader().read(authenticated.id, {
        body,
        gzip,
        maxBytes: MAX_MANIFEST_BYTES,
        limits: { maxBuildFiles: config.maxBuildFiles, maxBuildBytes: config.maxBuildBytes },
        objectsDir: deps.store.objects.forRepository(authenticated.id).dir,
        storedHashes: deps.store.bucket ? [...(await deps.store.bucket.storedSizes(authenticated.id)).keys()] : undefined,
        listsDir: manifests.listsDir,
      });
    } finally {
      leave();
    }
    // A SHA already stored is answered now (409), not after the client sent what is missing.
    if (read.allStored || (await deps.previews.hasBuild(authenticated, pr, sha))) {
      const files = ManifestList.from(await fs.promises.readFile(path.join(manifests.listsDir, read.list)));
      await fs.promises.rm(path.join(manifests.listsDir, read.list), { force: true });
      const answer = await storeUpload(deps, req, res, authenticated, pr, sha, async (target) => new BuildTree({ ...target, manifest: files }).finish());
      res.status(answer.status).json(answer.body);
      return;
    }
    await manifests.remember(authenticated.id, pr, sha, read.digest, read.list);
    // Sent as the thread made it: `send` would hash megabytes for an ETag nobody revalidates.
    res.status(200).type('json').end(Buffer.from(read.answer.buffer, read.answer.byteOffset, read.answer.byteLength));
  });

  router.all('/create-build/{*rest}', (req, res) => {
    if (req.method !== 'POST') {
      res.set('Allow', 'POST').status(405).json({ error: 'Only POST is allowed on /create-build/.' });
      return;
    }
    throw badRequest('The upload URL must be /create-build/<pr number>/<40-character commit SHA>.');
  });

  return router;
}

/**
 * Stores a build (GitHub asked while `extract` runs; nothing published before its yes); the answer is 201
 * with the URL or 202 hidden.
 */
async function storeUpload(
  deps: UploadDeps,
  req: Request,
  res: Response,
  repo: Repository,
  pr: number,
  sha: string,
  extract: (target: BuildTarget) => Promise<ExtractResult>,
): Promise<{ status: number; body: object }> {
  const { config } = deps;
  if (!deps.github) throw unavailable('The GitHub App is not configured yet; the operator must finish its setup.');
  const github = deps.github;
  let authorized: ReturnType<typeof authorizeWithGitHub> | undefined;
  const authorize = () => {
    const endAuthorize = deps.metrics.uploadPhaseSeconds.startTimer({ phase: 'authorize' });
    authorized = authorizeWithGitHub(deps, github, repo, pr, sha);
    authorized.then(() => endAuthorize(), () => undefined);
    return authorized;
  };
  let stored;
  const endStore = deps.metrics.uploadPhaseSeconds.startTimer({ phase: 'store' });
  try {
    stored = await deps.previews.ingestBuild(repo, pr, authorize, sha, 'upload', extract);
    endStore();
  } catch (err) {
    // Not once answered (an idle body cut with 408): setting a header then throws ERR_HTTP_HEADERS_SENT.
    if (!req.complete && !res.headersSent) res.set('Connection', 'close');
    throw err;
  }
  const { repo: current, facts } = await authorized!;
  const { visibility } = stored.pr;
  const warning = await deps.previews.decisions.siteNote(current, facts.settings);
  return visibility === 'public'
    ? { status: 201, body: { url: buildUrl(config, (await deps.previews.decisions.currentRepo(current)).site, pr, stored.build.sha7), visibility, ...(warning ? { warning } : {}) } }
    : { status: 202, body: { visibility, reason: stored.pr.reason ?? facts.decision.reason } };
}

/**
 * Counts the answer in the metrics and, whatever the answer, reads and drops a body still coming (up to a
 * bound), so a client that writes its whole body before reading (Node's fetch, Python's requests) reads the
 * answer instead of a broken pipe.
 */
function answerWhateverComes(deps: UploadDeps, req: Request, res: Response): void {
  res.on('finish', () => deps.metrics.uploads.inc({ status: String(res.statusCode) }));
  res.once('finish', () => {
    if (!req.complete) discardRestOfBody(req, deps.config.maxUploadBytes, deps.config.uploadIdleMs);
  });
}

/**
 * GitHub's yes to an upload: the PR is open and holds the commit (asked at once), with the facts its decision
 * needs. Every request settles before this does, so none outlives the upload.
 */
async function authorizeWithGitHub(deps: UploadDeps, github: GitHub, repo: Repository, pr: number, sha: string) {
  const [owner, name] = repo.fullName.split('/') as [string, string];
  // Both questions at once, each settled: no request outlives the upload.
  const ask = async (octokit: Octokit) => {
    const [read, commit] = await Promise.allSettled([deps.previews.decisions.readFacts(repo, pr, { octokit }), github.prHasCommit(octokit, owner, name, pr, sha)]);
    return { read, commit };
  };
  // The installation is asked every time (an app removed without a delivery must answer 403), but the PR and
  // the commit are asked at once with the remembered installation's token: one GitHub round trip, not two.
  // When GitHub names another installation, they are asked again with its token.
  const remembered = (await deps.registry.accountOf(repo)).installationId;
  const early = remembered ? github.forInstallation(remembered).then(ask) : undefined;
  let answers;
  try {
    const octokit = await deps.previews.octokitFor(repo, { askGitHub: true });
    answers = early && (await deps.registry.accountOf(repo)).installationId === remembered ? await early : await ask(octokit);
  } finally {
    await early?.catch(() => undefined);
  }
  const { read, commit } = answers;
  if (read.status === 'rejected') throw read.reason;
  // A closed PR is the answer whatever the commit question gave.
  if (read.value.facts.state !== 'open') {
    // A PR we hold builds of is brought in line (hidden, retention starts); an unknown one gets no row.
    if ((await deps.registry.findPullRequest(read.value.repo.id, pr))?.factsAt) await deps.previews.decisions.apply(read.value.repo, read.value.facts, { event: 'upload' });
    throw forbidden(`Pull request #${pr} is closed.`);
  }
  if (commit.status === 'rejected') throw commit.reason;
  if (!commit.value) throw forbidden(`Commit ${sha} is not part of pull request #${pr}.`);
  return read.value;
}

/**
 * The repository the token proves the upload comes from. The algorithm picks the verifier, and each
 * verifier accepts exactly one algorithm: HS256 with the repository's upload secret (Travis-style), or
 * RS256 from the OIDC issuer's key set (GitHub Actions). `alg: none` and confusions fail both.
 */
export async function authenticate(deps: UploadDeps, token: string, pr: number): Promise<Repository> {
  if (tokenAlgorithm(token) === 'RS256') {
    const { config } = deps;
    const claims = await verifyOidcToken(token, { issuer: config.oidcIssuer, audience: config.publicUrl, pr });
    // By id when the token carries one: a repository that took a freed name is not the one stored under it.
    const byId = claims.repositoryId === undefined ? undefined : await deps.registry.findRepositoryById(claims.repositoryId);
    const repo = byId ?? (await deps.registry.findRepository(claims.repository));
    if (!repo || !repo.installed) throw forbidden(`The preview-gate app is not installed on ${claims.repository}.`);
    if (repo.githubId !== null && claims.repositoryId !== undefined && repo.githubId !== claims.repositoryId) {
      throw forbidden(`The token's repository_id does not match ${claims.repository}.`);
    }
    const account = await deps.registry.accountOf(repo);
    if (account.githubId !== null && claims.repositoryOwnerId !== undefined && account.githubId !== claims.repositoryOwnerId) {
      throw forbidden(`The token's repository_owner_id does not match the owner of ${claims.repository}.`);
    }
    return repo;
  }
  const slug = claimedSlug(token);
  const repo = await deps.registry.findRepository(slug);
  const secret = repo && (await deps.secrets.get(repo.id, UPLOAD_SECRET_NAME));
  if (!repo || !secret) {
    throw forbidden(`No upload secret is set for ${slug}; run "preview-gate secret set ${slug} upload-key".`);
  }
  await verifyTravisToken(token, secret, { slug: repo.fullName, pr });
  return repo;
}

export function parsePr(raw: string | undefined): number {
  if (!raw || !/^[1-9][0-9]{0,8}$/.test(raw)) throw badRequest(`"${raw}" is not a pull request number.`);
  return Number(raw);
}

function parseSha(raw: string | undefined): string {
  if (!raw || !/^[0-9a-f]{40}$/.test(raw)) {
    throw badRequest(`"${raw}" is not a full commit SHA (40 lower-case hex characters).`);
  }
  return raw;
}

/**
 * A refused upload's remaining bytes are read and dropped, up to `maxBytes` (then the connection is cut) and
 * as long as they keep coming (idle for `idleMs`: cut).
 */
function discardRestOfBody(req: Request, maxBytes: number, idleMs: number): void {
  let dropped = 0;
  req.on('data', (chunk: Buffer) => {
    dropped += chunk.length;
    if (dropped > maxBytes) req.destroy();
  });
  req.setTimeout(idleMs, () => req.destroy());
  req.resume();
}

/**
 * A body that sends nothing for `idleMs` is cut: 408 if nothing was answered yet, then the connection closed,
 * which ends the extraction (claim released, staging removed) like any client that goes away. Until the body ends.
 */
function cutWhenIdle(req: Request, res: Response, idleMs: number): void {
  req.setTimeout(idleMs, () => {
    if (res.headersSent) return void req.destroy();
    res.set('Connection', 'close').status(408).json({ error: `The upload sent nothing for ${Math.round(idleMs / 1000)} s and was stopped; send it again.` });
    res.once('finish', () => req.destroy());
  });
  // Only the body's silence counts: once it has all arrived, the client waits for the answer (GitHub's facts, the
  // PR's turn behind another replica's work), and a quiet socket then is the server's doing, not the client's.
  req.once('end', () => req.setTimeout(0));
}

const isMultipart = (req: Request) => (req.headers['content-type'] ?? '').toLowerCase().startsWith('multipart/');

/** Lets multer stream the `artifact` field to a temp file; returns its path. */
async function receiveMultipart(multipart: ReturnType<multer.Multer['single']>, req: Request, res: Response): Promise<string> {
  await new Promise<void>((resolve, reject) => multipart(req, res, (err: unknown) => (err ? reject(err) : resolve())));
  if (!req.file) throw badRequest('The multipart body has no file field "artifact".');
  return req.file.path;
}
