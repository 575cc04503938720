/**
 * The replicas of the simulation: real server processes (`node dist/src/main.js`, configured by environment as an
 * operator would), every line they log kept with the replica and incarnation that wrote it, and real nginx in
 * front of them with an `upstream` of all of them (round robin).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import readline from 'node:readline';
import { renderNginx } from '../../src/nginx.js';
import { startNginx, type RunningNginx } from '../helpers/nginx.js';

export interface LogLine {
  /** Which replica process (0, 1, 2) and which start of it (0 first, 1 after a restart); `replica` is its own id. */
  node: number;
  incarnation: number;
  time: number;
  level: number;
  msg: string;
  [field: string]: unknown;
}

interface Incarnation {
  child: ChildProcess;
  /** The replica id it registered (from its start-up line). */
  id?: string;
  startedAt: number;
  /** When it was SIGKILLed (its open intervals end there). */
  killedAt?: number;
  exited: Promise<number | null>;
}

export class Cluster {
  readonly logs: LogLine[] = [];
  /** What the processes wrote that is not a JSON log line (stderr, crashes). */
  readonly otherOutput: string[] = [];
  readonly incarnations: Incarnation[][] = [];

  constructor(
    private readonly env: NodeJS.ProcessEnv,
    readonly ports: number[],
  ) {
    for (let i = 0; i < ports.length; i++) this.incarnations.push([]);
  }

  /** Starts replica `index` (again) and resolves once its /health answers. */
  async start(index: number): Promise<void> {
    const incarnation = this.incarnations[index]!.length;
    // The heap settings of `npm start` and the image.
    const child = spawn('node', ['--max-semi-space-size=4', '--initial-old-space-size=64', 'dist/src/main.js'], {
      env: { MALLOC_ARENA_MAX: '2', ...this.env, PORT: String(this.ports[index]) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const entry: Incarnation = { child, startedAt: Date.now(), exited };
    this.incarnations[index]!.push(entry);
    readline.createInterface({ input: child.stdout! }).on('line', (line) => {
      let parsed: Omit<LogLine, 'node' | 'incarnation'>;
      try {
        parsed = JSON.parse(line);
      } catch {
        this.otherOutput.push(`[replica ${index}.${incarnation}] ${line}`);
        return;
      }
      this.logs.push({ ...parsed, node: index, incarnation } as LogLine);
      if (typeof parsed.replica === 'string' && String(parsed.msg).startsWith('preview-gate is listening')) entry.id = parsed.replica;
    });
    readline.createInterface({ input: child.stderr! }).on('line', (line) => this.otherOutput.push(`[replica ${index}.${incarnation} stderr] ${line}`));
    const until = Date.now() + 60_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`replica ${index} exited at start:\n${this.otherOutput.slice(-20).join('\n')}`);
      if ((await healthStatus(this.ports[index]!)) === 200 && entry.id) return;
      if (Date.now() > until) throw new Error(`replica ${index} did not answer /health within 60 s`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** The replica (index) whose id is `id`, in any incarnation. */
  indexOf(id: string): number | undefined {
    const found = this.incarnations.findIndex((list) => list.some((inc) => inc.id === id));
    return found < 0 ? undefined : found;
  }

  current(index: number): Incarnation {
    return this.incarnations[index]!.at(-1)!;
  }

  /** SIGKILL: no clean stop, no drain, sockets cut. */
  async kill(index: number): Promise<void> {
    const inc = this.current(index);
    inc.killedAt = Date.now();
    inc.child.kill('SIGKILL');
    await inc.exited;
  }

  /** SIGTERM to every replica still running, as an orchestrator stops them. */
  async stopAll(): Promise<void> {
    await Promise.all(
      this.incarnations.map(async (list) => {
        const inc = list.at(-1);
        if (!inc || inc.child.exitCode !== null || inc.child.signalCode !== null) return;
        inc.child.kill('SIGTERM');
        const timer = setTimeout(() => inc.child.kill('SIGKILL'), 20_000);
        await inc.exited;
        clearTimeout(timer);
      }),
    );
  }

  /** When the incarnation that wrote a line was killed, if it was. */
  killedAt(node: number, incarnation: number): number | undefined {
    return this.incarnations[node]?.[incarnation]?.killedAt;
  }
}

function healthStatus(port: number): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/health', agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', () => resolve(0));
    req.setTimeout(5000, () => req.destroy());
  });
}

/**
 * Real nginx from the rendered template, its upstream group holding every replica (nginx's default: round robin,
 * a replica that refuses connections skipped for 10 s), as an operator edits `upstream preview_gate_node`.
 * With `s3`, the template's S3 mode (`preview-gate nginx` with STORAGE=s3): previews fetched from the bucket.
 */
export async function startNginxFor(
  dir: string,
  options: { ports: number[]; listenPort: number; previewDomain: string; buildsDir: string; publicHost: string; publicUrl: string; maxUploadBytes: number; s3?: { endpoint: string; bucket: string } },
): Promise<RunningNginx> {
  fs.mkdirSync(dir, { recursive: true });
  const [first, ...others] = options.ports;
  const rendered = renderNginx({
    previewDomain: options.previewDomain,
    buildsDir: options.buildsDir,
    upstream: `127.0.0.1:${first}`,
    publicHost: options.publicHost,
    publicUrl: options.publicUrl,
    maxUploadBytes: options.maxUploadBytes,
    listen: `127.0.0.1:${options.listenPort}`,
    ...(options.s3 ? { s3: options.s3 } : {}),
  });
  const single = `server 127.0.0.1:${first};`;
  if (!rendered.includes(single)) throw new Error('the rendered nginx configuration has no upstream group to add replicas to');
  const config = rendered.replace(single, [first, ...others].map((p) => `server 127.0.0.1:${p};`).join('\n    '));
  fs.writeFileSync(path.join(dir, 'upstream.conf'), config);
  return startNginx(dir, {} as never, { config, port: options.listenPort });
}
