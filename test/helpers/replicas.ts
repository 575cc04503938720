/**
 * Replicas in one test process: several test servers on one DATA_DIR and one database (each with its own replica
 * id and database connection), and an upload held open half-way, for the scale-out tests (replicas.test.ts,
 * replica-resume.test.ts).
 */
import fs from 'node:fs';
import path from 'node:path';
import nock from 'nock';
import { githubThroughNock } from './github.js';
import { crash, dropTmpDatabase, startTestServer, type TestServer } from './server.js';

export interface ReplicaTiming {
  leaseMs?: number;
  sweepEveryMs?: number;
  scheduleCheckMs?: number;
}

/**
 * The replicas each test of the file starts, stopped after it (their DATA_DIR and database removed); GitHub
 * reachable only through nock, its feedback endpoints (statuses, deployments, comments) always answered.
 * `timing` is used by every start that gives none of its own.
 */
export function replicasPerTest(timing?: ReplicaTiming) {
  const group = replicaGroup(timing);
  beforeEach(githubThroughNock);
  afterEach(async () => {
    nock.cleanAll();
    await group.stopAll();
  });
  return group;
}

function replicaGroup(timing?: ReplicaTiming) {
  let running: TestServer[] = [];
  let first: string | undefined;
  const forget = (server: TestServer) => void (running = running.filter((s) => s !== server));
  return {
    /** The first replica makes a DATA_DIR (with the upload secret); `tmp` (the first one's) starts another on it. */
    async start(tmp?: string, own: ReplicaTiming | undefined = timing): Promise<TestServer> {
      const server = await startTestServer(tmp ? { DATA_DIR: path.join(tmp, 'data') } : {}, tmp, { seedSecret: !tmp, timing: own });
      first ??= server.tmp;
      running.push(server);
      return server;
    },
    /** Ends a replica as SIGKILL would: no clean stop; its rows stay as they were. */
    async crash(server: TestServer): Promise<void> {
      await crash(server);
      forget(server);
    },
    /** A clean stop of one replica (its clean-stop marker is written). */
    async stop(server: TestServer): Promise<void> {
      forget(server);
      await server.stop();
    },
    async stopAll(): Promise<void> {
      for (const server of running.reverse()) await server.stop().catch(() => undefined);
      running = [];
      if (first) {
        await dropTmpDatabase(first);
        fs.rmSync(first, { recursive: true, force: true });
      }
      first = undefined;
    },
  };
}

/** An upload whose body is sent in two halves: the first at once, the rest when `finish()` is called. */
export async function uploadInTwoHalves(server: TestServer, pr: number, commit: string, body: Buffer) {
  const token = await server.token({ 'pull-request': pr });
  let finish!: () => void;
  const stream = new ReadableStream<Uint8Array>({
    async start(controller) {
      controller.enqueue(new Uint8Array(body.subarray(0, body.length >> 1)));
      await new Promise<void>((resolve) => (finish = resolve));
      controller.enqueue(new Uint8Array(body.subarray(body.length >> 1)));
      controller.close();
    },
  });
  const answered = fetch(`${server.url}/create-build/${pr}/${commit}`, {
    method: 'POST',
    headers: { authorization: `Token ${token}`, 'content-type': 'application/gzip' },
    body: stream,
    duplex: 'half',
  } as RequestInit);
  return { answered, finish: () => finish() };
}
