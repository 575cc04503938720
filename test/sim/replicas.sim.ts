/**
 * The multi-replica simulation (`npm run test:replicas`, issue 28 item 4; SPEC "Scale-out"): three real server
 * processes on one shared store (SQLite on one DATA_DIR, or PostgreSQL when DATABASE_URL is set), real nginx doing
 * round robin over them, the GitHub stand-in, and 30 pull requests whose labels, commits, state and author's team
 * change while their deliveries (signed as GitHub signs them, some duplicated, some late) and CI's uploads (real
 * tarballs, concurrent duplicates of one SHA through different replicas) go through nginx. One replica is
 * SIGKILLed in the middle of an upload and restarted. At the end every invariant is checked and printed.
 *
 * SIM_STORAGE=s3 runs the same on STORAGE=s3 (issue 29): builds in the bucket of test/engines/rgw.sh, rows in the
 * PostgreSQL of test/engines/postgres.sh, nginx rendered in its S3 mode; three more invariants: nothing is kept under
 * DATA_DIR/builds, every build_files object is in the bucket with its size, and after garbage collection no object
 * lacks its row and none that a row names is missing.
 *
 * SIM_SEED fixes the random choices (printed at the end); SIM_PRS changes the number of pull requests.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { spawn, spawnSync } from 'node:child_process';
import { SignJWT } from 'jose';
import { FakeGitHub } from '../helpers/fake-github.js';
import { freePort, request } from '../helpers/nginx.js';
import { tarball, tarEntry } from '../helpers/tarballs.js';
import type { RunningNginx } from '../helpers/nginx.js';
import { Cluster, startNginxFor } from './cluster.js';
import { commentWrites, intervals, iso, missingObjects, overlaps, singletonRuns, table, unrecordedObjects, unreferencedObjects, type Check, type CommentWrite } from './invariants.js';
import { filesUnder, StoredFolders, StoredRows, type Stored } from './stored.js';
import { loadConfig } from '../../src/config.js';

const PRS = Number(process.env.SIM_PRS ?? 30);
const SEED = Number(process.env.SIM_SEED ?? Math.floor(Math.random() * 1e6));
/** The sweep's interval, set as an operator would (RECONCILE_INTERVAL_MINUTES). */
const SWEEP_MINUTES = '0.1';
const SWEEP_MS = 6000;
const REPLICAS = 3;
/** Pull requests whose scripts run at once (the CI jobs and maintainers of a busy organisation). */
const CONCURRENT_PRS = 8;
/** The longest pause between two changes of one PR (the traffic lasts about a minute). */
const STEP_PAUSE_MS = Number(process.env.SIM_STEP_PAUSE_MS ?? 3000);
const LABEL = 'safe for preview';
const TEAM = 'reviewers';
const REPO_ID = 7001;
const INSTALLATION_ID = 42;
const OWNER = { id: 9001, login: 'sim-org' };
const SLUG = `${OWNER.login}/docs`;
const SITE = 'docs';
const PREVIEW_DOMAIN = 'previews.sim.test';
const WEBHOOK_SECRET = 'sim-webhook-secret';
const UPLOAD_SECRET = crypto.randomBytes(32).toString('base64url');
const MAINTAINER = { id: 1001, login: 'maintainer' };
/** The pull request whose first upload is cut by the SIGKILL (in the middle of the run). */
const KILL_PR = Math.min(PRS, 12);
/** Builds in a bucket (SIM_STORAGE=s3) or in DATA_DIR/builds (the default). */
const S3 = process.env.SIM_STORAGE === 's3';
/** Why the S3 configuration cannot run here (it needs both engines: run it through test/engines/run.sh). */
const S3_MISSING = !S3
  ? undefined
  : !process.env.S3_ENDPOINT
    ? 'SIM_STORAGE=s3 needs S3_ENDPOINT (run it inside test/engines/rgw.sh)'
    : !process.env.DATABASE_URL
      ? 'SIM_STORAGE=s3 needs DATABASE_URL (replicas on STORAGE=s3 share no disk: run it inside test/engines/postgres.sh)'
      : undefined;
/** The garbage collector's grace period with STORAGE=s3: short, so that the collection at the end sees every object past it. */
const GC_GRACE_SECONDS = 10;

const random = mulberry32(SEED);
let tmp: string;
let fake: FakeGitHub;
let cluster: Cluster;
let nginx: RunningNginx;
let publicHost: string;
let dataDir: string;
let env: NodeJS.ProcessEnv;
let stored: Stored;
/** STORAGE=s3: the object put without rows (putOrphan), `objects/<repository id>/<sha256>`. */
let orphanKey: string | undefined;

// --- what the clients saw -----------------------------------------------------------------------------------

interface Delivery {
  event: string;
  action: string;
  pr: number;
  /** Every answer, re-sends included (0: the connection failed or was reset). */
  answers: number[];
}
interface Upload {
  pr: number;
  sha: string;
  marker: string;
  /** Uploads of one SHA sent at once through nginx (a CI job re-run while the first still uploads). */
  group: string;
  answers: number[];
  /** What the CLI said when its answer could not be read from it. */
  cliOutput?: string;
}
const deliveries: Delivery[] = [];
const uploads: Upload[] = [];
const figures = { cliUploads: 0, deliveriesSent: 0, deliveriesResent: 0, uploadRequests: 0, uploadsResent: 0, kills: 0, restarts: 0 };
/** What happened around the SIGKILL, printed at the end. */
const killStory: string[] = [];

// --- set-up -------------------------------------------------------------------------------------------------

beforeAll(async () => {
  if (S3_MISSING) return;
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-sim-'));
  fs.chmodSync(tmp, 0o755); // nginx's workers walk down to the builds
  dataDir = path.join(tmp, 'data');
  fake = await new FakeGitHub().start();
  fake.addRepo({ id: REPO_ID, owner: OWNER, name: 'docs', files: { '.github/preview-gate.yml': `trustedTeams: [${TEAM}]\n` } }, INSTALLATION_ID);
  fake.teams.set(`${OWNER.login}/${TEAM}`, []);

  const ports = await Promise.all(Array.from({ length: REPLICAS }, () => freePort()));
  const nginxPort = await freePort();
  publicHost = `127.0.0.1:${nginxPort}`;
  env = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    NODE_OPTIONS: '',
    // Every replica the same configuration: one data directory (or one PostgreSQL), the same app and secrets.
    DATA_DIR: dataDir,
    ...(process.env.DATABASE_URL ? { DATABASE_URL: process.env.DATABASE_URL } : {}),
    HOST: '127.0.0.1',
    PUBLIC_URL: `http://${publicHost}`,
    PREVIEW_DOMAIN,
    APP_ID: '1',
    PRIVATE_KEY: crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs1', format: 'pem' }).toString(),
    WEBHOOK_SECRET,
    ...fake.env,
    GITHUB_THROTTLE: 'false',
    RECONCILE_INTERVAL_MINUTES: SWEEP_MINUTES,
    // The start and end of every job, PR operation and scheduled run (debug lines) are what the invariants read.
    LOG_LEVEL: 'debug',
    ...(S3
      ? {
          STORAGE: 's3',
          S3_ENDPOINT: process.env.S3_ENDPOINT,
          S3_BUCKET: process.env.S3_BUCKET,
          S3_REGION: process.env.S3_REGION,
          AWS_ACCESS_KEY_ID: process.env.AWS_ACCESS_KEY_ID,
          AWS_SECRET_ACCESS_KEY: process.env.AWS_SECRET_ACCESS_KEY,
          S3_GC_GRACE_HOURS: (GC_GRACE_SECONDS / 3600).toFixed(6),
        }
      : {}),
  };
  stored = S3 ? new StoredRows(process.env.DATABASE_URL!, loadConfig(env).s3!, SLUG) : new StoredFolders(path.join(dataDir, 'builds', SITE));
  const secret = spawnSync('node', ['bin/preview-gate.js', 'secret', 'set', SLUG, 'upload-key'], { env, input: UPLOAD_SECRET, encoding: 'utf8' });
  if (secret.status !== 0) throw new Error(`secret set failed: ${secret.stderr}`);
  cluster = new Cluster(env, ports);
  // One after another: the first creates the database; the others join it.
  for (let i = 0; i < REPLICAS; i++) await cluster.start(i);
  nginx = await startNginxFor(path.join(tmp, 'nginx'), {
    ports,
    listenPort: nginxPort,
    previewDomain: PREVIEW_DOMAIN,
    buildsDir: path.join(dataDir, 'builds'),
    publicHost: '127.0.0.1',
    publicUrl: `http://${publicHost}`,
    maxUploadBytes: 100 * 1024 * 1024,
    ...(S3 ? { s3: { endpoint: process.env.S3_ENDPOINT!, bucket: process.env.S3_BUCKET! } } : {}),
  });
  if (S3) await putOrphan();
}, 180_000);

/**
 * STORAGE=s3: an object put without its rows, as a replica killed between an upload's puts and its transaction
 * leaves one (the slow upload's kill comes before its puts: they follow the whole body and GitHub's answer). The
 * collection at the end must remove it.
 */
async function putOrphan(): Promise<void> {
  const rows = stored as StoredRows;
  const body = Buffer.from(`an upload's file whose replica died before its rows (seed ${SEED})`);
  const [repositoryId, sha256] = [await rows.repositoryId(), crypto.createHash('sha256').update(body).digest('hex')];
  await rows.bucket.putOnce(repositoryId, sha256, body, body.length);
  orphanKey = `objects/${repositoryId}/${sha256}`;
}

afterAll(async () => {
  await cluster?.stopAll();
  await nginx?.stop();
  await fake?.close();
  await stored?.close();
  if (process.env.SIM_KEEP) process.stdout.write(`simulation files kept in ${tmp}\n`);
  else if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

// --- clients --------------------------------------------------------------------------------------------------

/** One POST through nginx to the upload/webhook host; status 0 when the connection failed or was reset. */
function post(urlPath: string, headers: Record<string, string>, body: Buffer, localAddress: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve) => {
    const req = http.request(
      { host: '127.0.0.1', port: Number(publicHost.split(':')[1]), path: urlPath, method: 'POST', localAddress, agent: false, headers: { host: publicHost, 'content-length': String(body.length), ...headers } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString() }));
        res.on('error', () => resolve({ status: 0, text: 'reset' }));
      },
    );
    req.on('error', (err) => resolve({ status: 0, text: (err as NodeJS.ErrnoException).code ?? err.message }));
    req.end(body);
  });
}

/** The source address of a PR's CI runner: each CI job comes from its own address, as from separate runners. */
const ciAddress = (pr: number) => `127.0.1.${pr}`;
/** GitHub's hook servers: a handful of addresses. */
const hookAddress = () => `127.0.2.${1 + Math.floor(random() * 4)}`;

/**
 * A delivery as GitHub sends it (HMAC-SHA256 of the body). GitHub never redelivers on its own: the simulation
 * re-sends only a delivery that was not answered 2xx (what a replica killed under it answered), as an operator
 * would press "Redeliver" (the same delivery id).
 */
async function deliver(event: string, payload: Record<string, any>, pr: number, id = crypto.randomUUID()): Promise<void> {
  const body = Buffer.from(JSON.stringify(payload));
  const headers = {
    'content-type': 'application/json',
    'x-github-event': event,
    'x-github-delivery': id,
    'x-hub-signature-256': `sha256=${crypto.createHmac('sha256', WEBHOOK_SECRET).update(body).digest('hex')}`,
  };
  const record: Delivery = { event, action: String(payload.action ?? ''), pr, answers: [] };
  deliveries.push(record);
  for (let attempt = 0; attempt < 8; attempt++) {
    if (attempt) figures.deliveriesResent++;
    figures.deliveriesSent++;
    const { status } = await post('/api/github/webhooks', headers, body, hookAddress());
    record.answers.push(status);
    if (status >= 200 && status < 300) return;
    await sleep(500 * 2 ** attempt);
  }
}

async function uploadToken(pr: number): Promise<string> {
  return new SignJWT({ slug: SLUG, 'pull-request': pr })
    .setProtectedHeader({ alg: 'HS256' })
    .setIssuer('Travis CI, GmbH')
    .setIssuedAt()
    .setExpirationTime('1h')
    .sign(Buffer.from(UPLOAD_SECRET));
}

/** One file every build has, byte for byte: one object that many builds share (removing one build must keep it). */
const COMMON_CSS = 'body { margin: 0 }\n';

const siteOf = (marker: string) =>
  tarball({
    'index.html': `<!doctype html><title>${marker}</title><h1>${marker}</h1>`,
    'assets/app.js': `console.log(${JSON.stringify(marker)});`,
    'assets/common.css': COMMON_CSS,
    [`pages/${marker}.html`]: `<p>${marker}</p>`,
  });

/**
 * Sends one upload, retried as the CLI retries (a refused or reset connection, 502/503/504) until it has an
 * answer: 201/202 stored, 409 stored already, anything else refused.
 */
async function upload(record: Upload, body: Buffer, firstAnswer?: number): Promise<void> {
  if (firstAnswer !== undefined) record.answers.push(firstAnswer);
  for (let attempt = record.answers.length; attempt < 8; attempt++) {
    if (record.answers.length) {
      figures.uploadsResent++;
      await sleep(1000 * 2 ** Math.min(attempt - 1, 3));
    }
    figures.uploadRequests++;
    const { status } = await post(`/create-build/${record.pr}/${record.sha}`, { authorization: `Token ${await uploadToken(record.pr)}`, 'content-type': 'application/gzip' }, body, ciAddress(record.pr));
    record.answers.push(status);
    if (status !== 0 && ![502, 503, 504].includes(status)) return;
  }
}

/** The site's files, as a CI job's build folder. */
function siteFolder(marker: string): string {
  const dir = path.join(tmp, 'ci', marker);
  const files: Record<string, string> = {
    'index.html': `<!doctype html><title>${marker}</title><h1>${marker}</h1>`,
    'assets/app.js': `console.log(${JSON.stringify(marker)});`,
    'assets/common.css': COMMON_CSS,
    [`pages/${marker}.html`]: `<p>${marker}</p>`,
  };
  for (const [name, body] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    fs.writeFileSync(path.join(dir, name), body);
  }
  return dir;
}

/**
 * An upload by the real CLI (`preview-gate upload <folder>`: the digest protocol, a manifest then the missing
 * files, two requests that nginx may send to two replicas), with its own retries. Its answer read from what it says.
 */
async function uploadWithCli(record: Upload): Promise<void> {
  const dir = siteFolder(record.marker);
  const args = ['bin/preview-gate.js', 'upload', dir, '--pr', String(record.pr), '--sha', record.sha, '--url', `http://${publicHost}`, '--repo', SLUG];
  figures.uploadRequests++;
  figures.cliUploads++;
  const child = spawn('node', args, { env: { PATH: process.env.PATH, PREVIEW_GATE_SECRET: UPLOAD_SECRET }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d));
  child.stderr.on('data', (d: Buffer) => (out += d));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  figures.uploadsResent += (out.match(/retrying in/g) ?? []).length;
  const status = /already stored/.test(out) ? 409 : /stored, not public yet/.test(out) ? 202 : code === 0 && /^https?:\/\//m.test(out) ? 201 : Number(/HTTP (\d{3})/.exec(out)?.[1] ?? 0);
  record.answers.push(status);
  if (!status) record.cliOutput = out.trim();
}

/** Uploads a commit's build `copies` times at once (one group: one of them stores it, the others get 409). */
async function uploadCommit(pr: number, sha: string, copies: number): Promise<void> {
  const marker = `pr${pr}-${sha.slice(0, 7)}`;
  if (copies === 1 && pr % 5 === 2) {
    const record: Upload = { pr, sha, marker, group: `${pr}/${sha}`, answers: [] };
    uploads.push(record);
    return uploadWithCli(record);
  }
  const body = siteOf(marker);
  const group = `${pr}/${sha}`;
  await Promise.all(
    Array.from({ length: copies }, () => {
      const record: Upload = { pr, sha, marker, group, answers: [] };
      uploads.push(record);
      return upload(record, body);
    }),
  );
}

/**
 * The upload the SIGKILL cuts: its body streams slowly through nginx; once a file of it is in a replica's staging
 * folder, that replica is killed and restarted, and the upload is sent again as the CLI would.
 */
async function uploadKilledMidway(pr: number, sha: string): Promise<void> {
  const marker = `pr${pr}-${sha.slice(0, 7)}`;
  const record: Upload = { pr, sha, marker, group: `${pr}/${sha}`, answers: [] };
  uploads.push(record);
  const token = await uploadToken(pr);
  figures.uploadRequests++;
  let done = false;
  let partsSent = 0;
  const answered = new Promise<number>((resolve) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port: Number(publicHost.split(':')[1]),
        path: `/create-build/${pr}/${sha}`,
        method: 'POST',
        localAddress: ciAddress(pr),
        agent: false,
        headers: { host: publicHost, authorization: `Token ${token}`, 'content-type': 'application/gzip', 'transfer-encoding': 'chunked' },
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
        res.on('error', () => resolve(0));
      },
    );
    req.on('error', () => resolve(0));
    const gzip = zlib.createGzip({ level: 1 });
    gzip.on('data', (c: Buffer) => req.write(c));
    const write = (name: string, body: string | Buffer) => new Promise<void>((r) => gzip.write(tarEntry({ path: name, body }), () => gzip.flush(() => r())));
    void (async () => {
      await write('kill-marker.html', `<p>${marker}</p>`);
      // More files until the replica is killed (or, should the kill not come, a whole build after all).
      for (let i = 0; i < 200 && !done; i++) {
        await write(`part-${i}.bin`, crypto.randomBytes(2048));
        partsSent++;
        await sleep(50);
      }
      if (!req.destroyed) {
        gzip.end(Buffer.alloc(1024));
        gzip.on('end', () => req.end());
      }
    })();
  });
  const owner = S3 ? await uploaderToBucket(pr, sha, `<p>${marker}</p>`, () => partsSent) : await uploaderToStaging();
  const index = cluster.indexOf(owner);
  if (index === undefined) throw new Error(`no replica has the id ${owner} of the slow upload's claim`);
  await cluster.kill(index);
  const killedAt = Date.now();
  done = true;
  figures.kills++;
  const first = await answered;
  // The orchestrator restarts the replica a moment later (systemd's RestartSec, a pod's restart), on its port.
  const restarted = sleep(500)
    .then(() => cluster.start(index))
    .then(() => {
      figures.restarts++;
      killStory.push(`replica ${index} answering again ${Date.now() - killedAt} ms after the kill`);
    });
  await upload(record, siteOf(marker), first);
  killStory.unshift(`replica ${index} SIGKILLed at ${iso(killedAt)} with PR ${pr} ${sha.slice(0, 7)} in its staging; that upload's answers: ${record.answers.join(', ')}`);
  await restarted;
}

/** The replica whose staging folder (`<replica id>.<…>` in DATA_DIR/builds/.staging) has the slow upload's first file. */
async function uploaderToStaging(): Promise<string> {
  const staging = path.join(dataDir, 'builds', '.staging');
  for (let i = 0; i < 600; i++) {
    const owner = fs.existsSync(staging) ? fs.readdirSync(staging).find((d) => fs.existsSync(path.join(staging, d, 'kill-marker.html'))) : undefined;
    if (owner) return owner.split('.')[0]!;
    await sleep(25);
  }
  throw new Error('the slow upload never reached a staging folder');
}

/**
 * STORAGE=s3, where nothing of an upload is on a shared disk: the replica holding the upload's claim (its pending
 * builds row), once the upload's first file is in the bucket, or, should objects be put only at the end, once 40
 * more parts of it were sent after the claim was taken (the replica is then in the middle of it either way).
 */
async function uploaderToBucket(pr: number, sha: string, firstFile: string, partsSent: () => number): Promise<string> {
  const rows = stored as StoredRows;
  let owner: string | undefined;
  for (let i = 0; i < 600 && !owner; i++) {
    owner = await rows.claimOwner(pr, sha);
    if (!owner) await sleep(25);
  }
  if (!owner) throw new Error('the slow upload never held a claim');
  const repositoryId = await rows.repositoryId();
  const firstObject = crypto.createHash('sha256').update(firstFile).digest('hex');
  const claimedAt = partsSent();
  for (let i = 0; i < 800 && partsSent() < claimedAt + 40; i++) {
    if (await rows.bucket.head(repositoryId, firstObject)) {
      killStory.push(`the slow upload's first file was in the bucket before the kill`);
      return owner;
    }
    await sleep(25);
  }
  killStory.push(`the slow upload's first file was not in the bucket ${partsSent() - claimedAt} parts after its claim`);
  return owner;
}

// --- the world changing -----------------------------------------------------------------------------------------

const shaOf = (pr: number, n: number) => crypto.createHash('sha1').update(`sim ${SEED} pr ${pr} commit ${n}`).digest('hex');
const trustedLabelled = (pr: number) => fake.pull(REPO_ID, pr).labels.includes(LABEL);
const authorOf = (pr: number) => ({ id: 5000 + pr, login: `dev${pr}` });
const teamMembers = () => fake.teams.get(`${OWNER.login}/${TEAM}`)!;

function membershipEvent(action: 'added' | 'removed', pr: number) {
  return {
    action,
    scope: 'team',
    member: authorOf(pr),
    team: { id: 77, slug: TEAM, name: TEAM },
    organization: { id: OWNER.id, login: OWNER.login },
    installation: { id: INSTALLATION_ID },
    sender: MAINTAINER,
  };
}

type Send = () => Promise<void>;

/**
 * One pull request's life: opened, built, then 4-6 changes (label, unlabel, push + build, close, reopen, the
 * author joining or leaving the trusted team), each delivered normally, twice, or late (after a later one).
 */
async function prScript(pr: number): Promise<void> {
  const rnd = mulberry32(SEED * 1000 + pr);
  const author = authorOf(pr);
  let commits = [shaOf(pr, 0)];
  fake.addPull(REPO_ID, { number: pr, user: author, commits, labels: pr % 3 === 0 ? [LABEL] : [] });
  if (pr % 6 === 0) teamMembers().push(author.login);
  await deliver('pull_request', fake.pullRequestEvent(REPO_ID, pr, 'opened'), pr);
  if (pr === KILL_PR) await uploadKilledMidway(pr, commits[0]!);
  else await uploadCommit(pr, commits[0]!, pr % 4 === 0 ? 3 : 1);

  const late: Send[] = [];
  const steps = 4 + Math.floor(rnd() * 3);
  for (let step = 0; step < steps; step++) {
    // Maintainers and CI take their time: a PR changes every second or two.
    await sleep(rnd() * STEP_PAUSE_MS);
    const pull = fake.pull(REPO_ID, pr);
    let event = 'pull_request';
    let payload: Record<string, any>;
    let build: string | undefined;
    if (pull.state === 'closed') {
      fake.change(REPO_ID, pr, { state: 'open' });
      payload = fake.pullRequestEvent(REPO_ID, pr, 'reopened');
    } else {
      const choice = pick(rnd, [
        ['label', 3],
        ['push', 3],
        ['close', 1.2],
        ['team', pr % 5 === 0 ? 1.5 : 0],
      ]);
      if (choice === 'label') {
        const labelled = trustedLabelled(pr);
        fake.change(REPO_ID, pr, { labels: labelled ? pull.labels.filter((l) => l !== LABEL) : [...pull.labels, LABEL] });
        payload = fake.pullRequestEvent(REPO_ID, pr, labelled ? 'unlabeled' : 'labeled', { label: { name: LABEL } });
      } else if (choice === 'push') {
        const before = commits.at(-1);
        commits = [...commits, shaOf(pr, commits.length)];
        fake.change(REPO_ID, pr, { commits });
        payload = fake.pullRequestEvent(REPO_ID, pr, 'synchronize', { before, after: commits.at(-1) });
        build = commits.at(-1);
      } else if (choice === 'close') {
        fake.change(REPO_ID, pr, { state: 'closed' });
        payload = fake.pullRequestEvent(REPO_ID, pr, 'closed');
      } else {
        const members = teamMembers();
        const member = members.includes(author.login);
        if (member) members.splice(members.indexOf(author.login), 1);
        else members.push(author.login);
        event = 'membership';
        payload = membershipEvent(member ? 'removed' : 'added', pr);
      }
    }
    const id = crypto.randomUUID();
    const send: Send = () => deliver(event, payload, pr, id);
    const mode = pick(rnd, [
      ['once', 6],
      ['twice', 2],
      ['late', 2],
    ]);
    if (mode === 'late') late.push(send);
    else {
      await (mode === 'twice' ? (rnd() < 0.5 ? Promise.all([send(), send()]) : send().then(send)) : send());
      // A late delivery arrives after a later one: out of order.
      while (late.length && rnd() < 0.6) await late.shift()!();
    }
    if (build) await uploadCommit(pr, build, rnd() < 0.25 ? 2 : 1);
  }
  while (late.length) await late.pop()!();
}

// --- the end state ----------------------------------------------------------------------------------------------

/** What GitHub's final facts decide: public when open and (labelled or the author in the team); closed PRs never. */
function expectedVisibility(pr: number): 'public' | 'hidden' | 'closed' {
  const pull = fake.pull(REPO_ID, pr);
  if (pull.state === 'closed') return 'closed';
  return pull.labels.includes(LABEL) || teamMembers().includes(pull.user.login) ? 'public' : 'hidden';
}

async function queueDepth(): Promise<number | undefined> {
  for (const port of cluster.ports) {
    try {
      const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      const m = /^preview_gate_queue_jobs (\d+)/m.exec(text);
      if (m) return Number(m[1]);
    } catch {
      // that replica is not answering: ask the next
    }
  }
  return undefined;
}

/** Waits until the shared queue stays empty (every decision and feedback done) for three looks in a row. */
async function quiescent(timeoutMs = 300_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  let empty = 0;
  while (empty < 3) {
    if (Date.now() > until) throw new Error(`the queue did not drain within ${timeoutMs / 1000} s`);
    empty = (await queueDepth()) === 0 ? empty + 1 : 0;
    await sleep(500);
  }
}

// The S3 configuration without its engines is skipped, its name saying why (never passed without running).
const simulation = S3_MISSING ? test.skip : test;
simulation(`3 replicas behind nginx${S3 ? ', builds on S3' : ''}: every invariant holds after 30 PRs of deliveries, uploads and a SIGKILL${S3_MISSING ? ` (skipped: ${S3_MISSING})` : ''}`, async () => {
  const started = Date.now();
  const order = Array.from({ length: PRS }, (_, i) => i + 1);
  let next = 0;
  await Promise.all(
    Array.from({ length: CONCURRENT_PRS }, async () => {
      while (next < order.length) await prScript(order[next++]!);
    }),
  );
  const traffic = Date.now() - started;
  await quiescent();
  const settled = Date.now();

  const checks: Check[] = [];
  const prs = order;
  // What is stored, read once (the checks below are plain functions of it).
  const visibilityOf = new Map<number, Awaited<ReturnType<Stored['visibility']>>>();
  for (const pr of prs) visibilityOf.set(pr, await stored.visibility(pr));
  const storedVisibility = (pr: number) => visibilityOf.get(pr)!;
  const buildsOf = new Map<string, { count: number; index: string }>();
  for (const u of uploads) {
    const key = `${u.pr}/${u.sha}`;
    if (!buildsOf.has(key)) buildsOf.set(key, { count: await stored.buildCount(u.pr, u.sha), index: await stored.indexHtml(u.pr, u.sha) });
  }

  // 1. Visibility from GitHub's final facts.
  checks.push({
    invariant: "visibility = decision from GitHub's final facts",
    count: prs.length,
    violations: prs.flatMap((pr) => {
      const want = expectedVisibility(pr);
      const have = storedVisibility(pr);
      const ok = want === 'closed' ? have === 'hidden' || have === 'gone' : have === want;
      return ok ? [] : [`PR ${pr}: GitHub says ${want} (labels ${JSON.stringify(fake.pull(REPO_ID, pr).labels)}), stored ${have}`];
    }),
  });

  // 2. No two runs of one PR's work overlapped, in all replicas together.
  const killedAt = (node: number, incarnation: number) => cluster.killedAt(node, incarnation);
  const prWork = intervals(cluster.logs, 'pr work started', 'pr work finished', (l) => String(l.key), (l) => String(l.key), killedAt);
  // No lines at all would pass vacuously: they are debug lines of src/queue.ts, src/previews/context.ts, src/replica.ts.
  const unlogged = (runs: unknown[], what: string) => (runs.length ? [] : [`no ${what} lines in the replicas' logs (LOG_LEVEL=debug)`]);
  checks.push({ invariant: "no two runs of one PR's work overlapped (PR lock)", count: prWork.length, violations: [...unlogged(prWork, "'pr work started'"), ...overlaps(prWork)] });
  const jobRuns = intervals(cluster.logs, 'job started', 'job finished', (l) => String(l.key), (l) => String(l.id), killedAt);
  checks.push({ invariant: 'no two queue jobs of one key overlapped', count: jobRuns.length, violations: [...unlogged(jobRuns, "'job started'"), ...overlaps(jobRuns)] });

  // 3. No request lost: every delivery answered 2xx at last; every upload answered 201/202/409 and its build stored.
  checks.push({
    invariant: 'every delivery answered 2xx (re-sent when not)',
    count: deliveries.length,
    violations: deliveries.filter((d) => !d.answers.some((s) => s >= 200 && s < 300)).map((d) => `${d.event}.${d.action} PR ${d.pr}: answers ${d.answers.join(',')}`),
  });
  // A 500 is a replica's own failure (the kill's answers come from nginx, 502/503): an answer GitHub never
  // redelivers and a CI job fails on.
  const answered = cluster.logs.filter((l) => l.msg === 'request');
  checks.push({
    invariant: 'no request answered 500 by a replica',
    count: answered.length,
    violations: answered
      .filter((l) => Number(l.status) >= 500 && Number(l.status) !== 503)
      .map((l) => {
        const why = cluster.logs.find((e) => e.level >= 50 && e.node === l.node && Math.abs(e.time - l.time) < 1000 && (e.requestId === l.requestId || e.name === 'event'));
        const err = (why?.err as { message?: string } | undefined)?.message ?? '?';
        return `replica ${l.node}.${l.incarnation} ${iso(l.time)} ${String(l.route)} ${String(l.status)}: ${err}`;
      }),
  });
  checks.push({
    invariant: 'every upload answered 201/202/409 has its build stored',
    count: uploads.length,
    violations: uploads.flatMap((u) => {
      const last = u.answers.at(-1);
      if (![201, 202, 409].includes(last ?? 0)) return [`PR ${u.pr} ${u.sha.slice(0, 7)}: answers ${u.answers.join(',')}${u.cliOutput ? ` (the CLI said: ${u.cliOutput})` : ''}`];
      return buildsOf.get(`${u.pr}/${u.sha}`)!.index.includes(u.marker) ? [] : [`PR ${u.pr} ${u.sha.slice(0, 7)}: answered ${u.answers.join(',')} but no build with its index.html is stored`];
    }),
  });

  // 4. One build per SHA; of concurrent uploads of one SHA one stored it, the others got 409.
  const groups = new Map<string, Upload[]>();
  for (const u of uploads) groups.set(u.group, [...(groups.get(u.group) ?? []), u]);
  checks.push({
    invariant: 'each SHA exactly one build (one 2xx, the rest 409)',
    count: groups.size,
    violations: [...groups].flatMap(([group, list]) => {
      const [pr, sha] = [list[0]!.pr, list[0]!.sha];
      const stored = buildsOf.get(`${pr}/${sha}`)!.count;
      const finals = list.map((u) => u.answers.at(-1));
      const twoxx = finals.filter((s) => s === 201 || s === 202).length;
      const problems: string[] = [];
      if (stored !== 1) problems.push(`${group}: ${stored} builds stored`);
      if (twoxx !== 1 || finals.some((s) => s !== 201 && s !== 202 && s !== 409)) problems.push(`${group}: final answers ${finals.join(',')}`);
      return problems;
    }),
  });

  // 5. One sweep per interval in all replicas together.
  const sweeps = intervals(cluster.logs.filter((l) => l.schedule === 'sweep'), 'schedule started', 'schedule finished', () => 'sweep', () => 'sweep', killedAt);
  const sweepProblems = singletonRuns(sweeps, SWEEP_MS);
  const elapsed = Date.now() - started;
  // At most one per interval: runs of all replicas together cannot outnumber the intervals that passed.
  if (sweeps.length > Math.ceil(elapsed / SWEEP_MS) + 1) sweepProblems.push(`${sweeps.length} sweeps in ${elapsed} ms (interval ${SWEEP_MS} ms)`);
  if (sweeps.length < 2) sweepProblems.push(`only ${sweeps.length} sweep(s) ran in ${elapsed} ms`);
  checks.push({ invariant: 'one sweep per interval in all replicas', count: sweeps.length, violations: sweepProblems });

  // 6. One comment per PR, each edit saying something new (one write per coalesced feedback).
  const writes: CommentWrite[] = fake.writes.flatMap((w): CommentWrite[] => {
    const posted = /\/issues\/(\d+)\/comments$/.exec(w.path);
    if (w.method === 'POST' && posted) return [{ pr: Number(posted[1]), method: 'POST', body: w.body.body, at: w.at }];
    const edited = /\/issues\/comments\/(\d+)$/.exec(w.path);
    if (w.method === 'PATCH' && edited) return [{ pr: fake.commentIssues.get(Number(edited[1]))?.number ?? -1, method: 'PATCH', body: w.body.body, at: w.at }];
    return [];
  });
  const comments = commentWrites(writes);
  // Each run of a (coalesced) feedback job writes the comment once: every run that finished wrote it (or found
  // the body already there: no edit is sent that changes nothing), and none wrote it twice (a run cut by the
  // SIGKILL, or retried after a GitHub error, may have written it or not).
  const feedbackOf = (pr: number) => jobRuns.filter((r) => r.job === 'feedback' && r.key.endsWith(`#${pr}`));
  const unchangedOf = (pr: number) => cluster.logs.filter((l) => l.msg === 'preview comment unchanged: not edited' && l.pr === pr).length;
  checks.push({
    invariant: 'one comment write per coalesced feedback run',
    count: jobRuns.filter((r) => r.job === 'feedback').length,
    violations: prs.flatMap((pr) => {
      const runs = feedbackOf(pr);
      const done = runs.filter((r) => r.outcome === 'done').length;
      const written = comments.perPr.get(pr)?.writes ?? 0;
      const unchanged = unchangedOf(pr);
      return written + unchanged >= done && written + unchanged <= runs.length ? [] : [`PR ${pr}: ${runs.length} feedback runs (${done} done), ${written} comment writes, ${unchanged} unchanged`];
    }),
  });
  checks.push({ invariant: 'one comment per PR', count: comments.perPr.size, violations: comments.posts });
  checks.push({ invariant: 'every comment edit changes the comment', count: writes.length, violations: comments.repeated });

  // 7. STORAGE=s3: no disk shared, every object a row names in the bucket, none left without a row after GC. Before
  // asking nginx below: its files must still be served after the collection, and by then no answer of Node that
  // nginx keeps (4-5 s) is older than the last flip.
  const gc = S3 ? await bucketChecks(checks, settled) : undefined;

  // 8. A hidden (or closed) PR's files are 404 through nginx for anonymous clients; a public PR's are served.
  const hiddenAsked: string[] = [];
  const publicAsked: string[] = [];
  let hiddenCount = 0;
  let publicCount = 0;
  for (const pr of prs) {
    const have = storedVisibility(pr);
    for (const sha of new Set(uploads.filter((u) => u.pr === pr).map((u) => u.sha))) {
      const host = `pr${pr}-${sha.slice(0, 7)}--${SITE}.${PREVIEW_DOMAIN}`;
      const marker = `pr${pr}-${sha.slice(0, 7)}`;
      // What the build's files hold (siteOf): a page naming the marker, a script whose bytes are known exactly.
      const exactly: Record<string, string> = { '/assets/app.js': `console.log(${JSON.stringify(marker)});`, '/assets/common.css': COMMON_CSS };
      const served = (file: string, body: Buffer) => (exactly[file] !== undefined ? body.toString() === exactly[file] : body.toString().includes(`<h1>${marker}</h1>`));
      for (const file of ['/', '/index.html', '/assets/app.js', '/assets/common.css']) {
        const answer = await request(Number(publicHost.split(':')[1]), host, file);
        if (have === 'public') {
          publicCount++;
          if (answer.status !== 200) publicAsked.push(`${host}${file}: ${answer.status}`);
          else if (!served(file, answer.body)) publicAsked.push(`${host}${file}: 200 with other bytes (${JSON.stringify(answer.body.toString().slice(0, 80))})`);
        } else {
          hiddenCount++;
          if (answer.status !== 404) hiddenAsked.push(`${host}${file}: ${answer.status}`);
        }
      }
    }
  }
  checks.push({ invariant: "a hidden PR's files 404 through nginx (anonymous)", count: hiddenCount, violations: hiddenAsked });
  checks.push({ invariant: "a public PR's files 200 through nginx, its bytes", count: publicCount, violations: publicAsked });

  const feedbackDone = cluster.logs.filter((l) => l.msg === 'job finished' && l.job === 'feedback' && l.outcome === 'done').length;
  const out = [
    '',
    `replica simulation: seed ${SEED}, ${REPLICAS} replicas, ${prs.length} PRs, store ${process.env.DATABASE_URL ? 'PostgreSQL' : 'SQLite (one DATA_DIR)'}, builds ${S3 ? 'in the bucket (STORAGE=s3)' : 'in DATA_DIR/builds'}`,
    table(checks),
    '',
    `deliveries: ${deliveries.length} (${figures.deliveriesSent} sent, ${figures.deliveriesResent} re-sent after a non-2xx answer)`,
    `uploads: ${uploads.length} in ${groups.size} SHAs (${figures.cliUploads} by the CLI; ${figures.uploadRequests} sent, ${figures.uploadsResent} re-sent as the CLI retries); answers ${JSON.stringify(countBy(uploads.map((u) => u.answers.at(-1))))}`,
    `kills: ${figures.kills} (restarts ${figures.restarts}); sweeps: ${sweeps.length}; PR operations: ${prWork.length}; queue runs: ${jobRuns.length} (feedback done ${feedbackDone}); comment writes: ${writes.length}`,
    `requests answered per replica: ${JSON.stringify(countBy(answered.map((l) => `${l.node}.${l.incarnation}`)))}`,
    ...killStory.map((k) => `kill: ${k}`),
    ...(gc ? [`garbage collection: ${gc}`] : []),
    `duration: traffic ${(traffic / 1000).toFixed(1)} s, until the queue drained ${((settled - started) / 1000).toFixed(1)} s, total ${((Date.now() - started) / 1000).toFixed(1)} s`,
    ...checks.flatMap((c) => c.violations.slice(0, 10).map((v) => `  ${c.invariant}: ${v}`)),
    '',
  ];
  process.stdout.write(out.join('\n'));
  const failed = checks.filter((c) => c.violations.length);
  if (failed.length) {
    const file = path.join(os.tmpdir(), `preview-gate-sim-${SEED}.jsonl`);
    fs.writeFileSync(file, cluster.logs.map((l) => JSON.stringify(l)).join('\n'));
    process.stdout.write(`the replicas' log lines are in ${file}\n${cluster.otherOutput.slice(-20).join('\n')}\n`);
  }
  expect(failed.map((c) => c.invariant)).toEqual([]);
});

/**
 * The bucket's invariants: DATA_DIR/builds holds no file; every build_files object is in the bucket with its size;
 * then, once the grace period has passed for every object put, one garbage collection (`preview-gate cleanup`, as
 * an operator runs it between the server's own runs), after which no object in the bucket lacks its `objects` row
 * and every object a build_files or objects row names is there. Returns what the collection did, for the summary.
 */
async function bucketChecks(checks: Check[], settled: number): Promise<string> {
  const rows = stored as StoredRows;
  // An upload's local scratch is its replica's builds/.staging (one DATA_DIR here for all three): with nothing in
  // flight, none of it may be left either, and nothing else may ever be there.
  const buildsDir = path.join(dataDir, 'builds');
  const onDisk = filesUnder(buildsDir).map((f) => path.relative(buildsDir, f));
  checks.push({
    invariant: 'STORAGE=s3: no file under DATA_DIR/builds',
    count: onDisk.length,
    violations: onDisk.map((f) => (f.startsWith('.staging/') ? `${f}: an upload's scratch left behind` : `${f}: a build's file on the disk`)),
  });

  const referenced = await rows.referencedObjects();
  const before = [...(await rows.bucketObjects()).values()];
  // The planted orphan is what the check after GC must not find: found before it, or that check proves nothing.
  const orphanSeen = unrecordedObjects(before, await rows.objectRows()).some((v) => v.startsWith(`${orphanKey} `));
  checks.push({ invariant: 'every build_files object in the bucket, its size', count: referenced.length, violations: [...noRows(referenced), ...missingObjects(referenced, before)] });

  // The grace period counts from an object's put; every put was before the queue drained.
  await sleep(Math.max(0, settled + GC_GRACE_SECONDS * 1000 - Date.now()) + 1000);
  // CLEANUP_AFTER_HOURS=0: the closed PRs' builds go too, so the collection has objects just left unreferenced to
  // remove, beside ones still shared with open PRs' builds (COMMON_CSS) to keep.
  const cleanup = await runCli(['cleanup'], { CLEANUP_AFTER_HOURS: '0' });
  const after = [...(await rows.bucketObjects()).values()];
  const recorded = await rows.objectRows();
  const referencedAfter = await rows.referencedObjects();
  checks.push({
    invariant: 'after GC: no object in the bucket without its row',
    count: after.length,
    violations: [
      ...(orphanSeen ? [] : [`the object put without rows (${orphanKey}) was not seen without its row before GC`]),
      ...(cleanup.code === 0 ? [] : [`preview-gate cleanup exited ${cleanup.code}: ${cleanup.output.trim().slice(0, 300)}`]),
      ...unrecordedObjects(after, recorded),
    ],
  });
  checks.push({
    invariant: 'after GC: no object nor row no build references',
    count: after.length + recorded.length,
    violations: [...unreferencedObjects(after, referencedAfter, 'in the bucket'), ...unreferencedObjects(recorded, referencedAfter, 'an objects row')],
  });
  checks.push({
    invariant: 'after GC: every object a row names in the bucket',
    count: recorded.length + referencedAfter.length,
    violations: [...noRows(referencedAfter), ...missingObjects([...referencedAfter, ...recorded], after)],
  });
  const said = (what: RegExp) => what.exec(cleanup.output)?.[1] ?? '?';
  return (
    `${before.length} objects in the bucket before, ${after.length} after; cleanup removed the builds of ${said(/builds of (\d+) closed/)} closed PR(s) (${said(/; (\d+) skipped/)} skipped) and ` +
    `${said(/Removed (\d+) stored file/)} object(s); ${recorded.length} objects rows, ${referencedAfter.length} objects named by build_files`
  );
}

/** No build_files rows at all would pass vacuously. */
function noRows(found: unknown[]): string[] {
  return found.length ? [] : ['no build_files rows at all'];
}

/** `preview-gate <args>` with the replicas' configuration, as an operator runs it beside them. */
async function runCli(args: string[], extra: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; output: string }> {
  const child = spawn('node', ['bin/preview-gate.js', ...args], { env: { ...env, ...extra }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d));
  child.stderr.on('data', (d: Buffer) => (output += d));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  return { code, output };
}

// --- small things -------------------------------------------------------------------------------------------------

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A small seeded generator: the same SIM_SEED gives the same choices. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function pick<T extends string>(rnd: () => number, weighted: [T, number][]): T {
  const total = weighted.reduce((s, [, w]) => s + w, 0);
  let r = rnd() * total;
  for (const [value, w] of weighted) if ((r -= w) < 0) return value;
  return weighted.at(-1)![0];
}

function countBy(values: unknown[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const v of values) out[String(v)] = (out[String(v)] ?? 0) + 1;
  return out;
}
