/**
 * The invariants of SPEC "Scale-out", computed from what the simulation recorded: the replicas' log lines, the
 * answers the clients got, the stand-in's writes and the builds on disk. Pure functions: each returns a count of
 * what was checked and the violations found, with enough detail to find them in the logs.
 */
import type { LogLine } from './cluster.js';

export interface Check {
  invariant: string;
  /** How many things were checked (runs, PRs, uploads...). */
  count: number;
  violations: string[];
}

interface Interval {
  key: string;
  /** The start line's `job` field (queue runs) and the end line's `outcome` (done, retry, dropped). */
  job?: string;
  outcome?: string;
  start: number;
  end: number;
  who: string;
  /** The replica ended without writing the end line (killed): the interval ends at the kill. */
  cut: boolean;
}

/**
 * Pairs `startMsg` / `endMsg` lines into intervals per (process incarnation, `idOf`): a line without its end was
 * written by a replica killed before it; its interval ends when the replica was killed (or at `now`).
 */
export function intervals(
  logs: LogLine[],
  startMsg: string,
  endMsg: string,
  keyOf: (l: LogLine) => string,
  idOf: (l: LogLine) => string,
  killedAt: (node: number, incarnation: number) => number | undefined,
  now = Date.now(),
): Interval[] {
  const open = new Map<string, LogLine[]>();
  const done: Interval[] = [];
  for (const line of [...logs].sort((a, b) => a.time - b.time)) {
    if (line.msg !== startMsg && line.msg !== endMsg) continue;
    const id = `${line.node}.${line.incarnation}|${idOf(line)}`;
    const list = open.get(id) ?? [];
    if (line.msg === startMsg) {
      list.push(line);
      open.set(id, list);
      continue;
    }
    const started = list.shift();
    if (started) {
      done.push({ key: keyOf(started), job: started.job as string | undefined, outcome: line.outcome as string | undefined, start: started.time, end: line.time, who: `${line.node}.${line.incarnation}`, cut: false });
    }
  }
  for (const list of open.values()) {
    for (const started of list) {
      const end = killedAt(started.node, started.incarnation) ?? now;
      done.push({ key: keyOf(started), job: started.job as string | undefined, start: started.time, end, who: `${started.node}.${started.incarnation}`, cut: true });
    }
  }
  return done;
}

/** Pairs of intervals of one key that overlap (strictly: an end and the next start in the same millisecond do not). */
export function overlaps(runs: Interval[]): string[] {
  const byKey = new Map<string, Interval[]>();
  for (const r of runs) byKey.set(r.key, [...(byKey.get(r.key) ?? []), r]);
  const found: string[] = [];
  for (const [key, list] of byKey) {
    list.sort((a, b) => a.start - b.start);
    for (let i = 0; i < list.length; i++) {
      for (let j = i + 1; j < list.length && list[j]!.start < list[i]!.end; j++) {
        const [a, b] = [list[i]!, list[j]!];
        found.push(`${key}: replica ${a.who} ${iso(a.start)}–${iso(a.end)}${a.cut ? ' (killed)' : ''} overlaps replica ${b.who} ${iso(b.start)}–${iso(b.end)}`);
      }
    }
  }
  return found;
}

/** Runs of a singleton schedule: none overlapping, and each started at least `everyMs` after the previous one ended. */
export function singletonRuns(runs: Interval[], everyMs: number, toleranceMs = 50): string[] {
  const sorted = [...runs].sort((a, b) => a.start - b.start);
  const found: string[] = [];
  for (let i = 1; i < sorted.length; i++) {
    const [before, after] = [sorted[i - 1]!, sorted[i]!];
    if (after.start < before.end) found.push(`run on ${after.who} at ${iso(after.start)} overlaps run on ${before.who} ${iso(before.start)}–${iso(before.end)}`);
    else if (after.start - before.end < everyMs - toleranceMs) {
      found.push(`run on ${after.who} at ${iso(after.start)} only ${after.start - before.end} ms after the run on ${before.who} ended (interval ${everyMs} ms)`);
    }
  }
  return found;
}

export interface CommentWrite {
  pr: number;
  method: 'POST' | 'PATCH';
  body: string;
  at: number;
}

/**
 * Per PR: one comment (one POST), and every write (POST or PATCH) says something new: a write whose body is the
 * one the comment already shows is an edit no coalesced feedback needed.
 */
export function commentWrites(writes: CommentWrite[]): { posts: string[]; repeated: string[]; perPr: Map<number, { writes: number; distinct: number }> } {
  const perPr = new Map<number, { writes: number; distinct: number; last?: string; bodies: Set<string>; posts: number }>();
  const repeated: string[] = [];
  for (const w of writes) {
    const s = perPr.get(w.pr) ?? { writes: 0, distinct: 0, bodies: new Set<string>(), posts: 0 };
    perPr.set(w.pr, s);
    s.writes++;
    if (w.method === 'POST') s.posts++;
    if (s.last === w.body) repeated.push(`PR ${w.pr}: write ${s.writes} (${w.method} at ${iso(w.at)}) repeats the body the comment already had`);
    s.last = w.body;
    s.bodies.add(w.body);
    s.distinct = s.bodies.size;
  }
  const posts = [...perPr].filter(([, s]) => s.posts > 1).map(([pr, s]) => `PR ${pr}: ${s.posts} comments posted`);
  return { posts, repeated, perPr: new Map([...perPr].map(([pr, s]) => [pr, { writes: s.writes, distinct: s.distinct }])) };
}

export function iso(ms: number): string {
  return new Date(ms).toISOString().slice(11, 23);
}

/** The table printed at the end: invariant, count, ok. */
export function table(checks: Check[]): string {
  const width = Math.max(...checks.map((c) => c.invariant.length), 'invariant'.length);
  const rows = checks.map((c) => `| ${c.invariant.padEnd(width)} | ${String(c.count).padStart(6)} | ${c.violations.length ? `NO (${c.violations.length})` : 'ok'} |`);
  return [`| ${'invariant'.padEnd(width)} |  count | ok |`, `|${'-'.repeat(width + 2)}|--------|----|`, ...rows].join('\n');
}

/** An object as the bucket lists it or a row records it: `objects/<repositoryId>/<sha256>`, `size` bytes. */
export interface ObjectRef {
  repositoryId: number;
  sha256: string;
  size: number;
  /** Who refers to it (a build and path), for the violation's text. */
  example?: string;
}

const keyOf = (o: ObjectRef) => `objects/${o.repositoryId}/${o.sha256}`;

/** Each referenced object is in the bucket with the size its row records. */
export function missingObjects(referenced: ObjectRef[], bucket: ObjectRef[]): string[] {
  const listed = new Map(bucket.map((o) => [keyOf(o), o.size]));
  return referenced.flatMap((r) => {
    const size = listed.get(keyOf(r));
    const who = r.example ? ` (${r.example})` : '';
    if (size === undefined) return [`${keyOf(r)}${who}: not in the bucket`];
    return size === r.size ? [] : [`${keyOf(r)}${who}: ${size} bytes in the bucket, ${r.size} recorded`];
  });
}

/** Objects in the bucket without an `objects` row: what garbage collection must have deleted. */
export function unrecordedObjects(bucket: ObjectRef[], rows: ObjectRef[]): string[] {
  const recorded = new Set(rows.map(keyOf));
  return bucket.filter((o) => !recorded.has(keyOf(o))).map((o) => `${keyOf(o)} (${o.size} bytes): in the bucket without an objects row`);
}

/** Objects (in the bucket, or rows) that no build_files row references: once the grace period passed, GC's to remove. */
export function unreferencedObjects(found: ObjectRef[], referenced: ObjectRef[], where: string): string[] {
  const used = new Set(referenced.map(keyOf));
  return found.filter((o) => !used.has(keyOf(o))).map((o) => `${keyOf(o)} (${o.size} bytes): ${where}, no build references it`);
}
