/** The replica simulation's checkers find what they are meant to find (run by `npm test`: pure and fast). */
import type { LogLine } from './cluster.js';
import { commentWrites, intervals, missingObjects, overlaps, singletonRuns, unrecordedObjects, unreferencedObjects } from './invariants.js';

const line = (node: number, time: number, msg: string, fields: Record<string, unknown> = {}): LogLine => ({ node, incarnation: 0, time, level: 20, msg, ...fields });
const prWork = (logs: LogLine[], killedAt: (n: number, i: number) => number | undefined = () => undefined) =>
  intervals(logs, 'pr work started', 'pr work finished', (l) => String(l.key), (l) => String(l.key), killedAt, 10_000);

test("two replicas holding one PR at once are an overlap; one after the other (even in the same millisecond) is not", () => {
  const handedOver = [line(0, 100, 'pr work started', { key: 'pr:1#1' }), line(0, 150, 'pr work finished', { key: 'pr:1#1' }), line(1, 150, 'pr work started', { key: 'pr:1#1' }), line(1, 170, 'pr work finished', { key: 'pr:1#1' })];
  expect(overlaps(prWork(handedOver))).toEqual([]);
  const together = [...handedOver, line(2, 160, 'pr work started', { key: 'pr:1#1' }), line(2, 165, 'pr work finished', { key: 'pr:1#1' }), line(2, 160, 'pr work started', { key: 'pr:1#2' }), line(2, 161, 'pr work finished', { key: 'pr:1#2' })];
  expect(overlaps(prWork(together))).toEqual([expect.stringMatching(/^pr:1#1: replica 1\.0 .* overlaps replica 2\.0/)]);
});

test('a run whose replica was killed before its end line lasts until the kill', () => {
  const logs = [line(0, 100, 'pr work started', { key: 'pr:1#1' }), line(1, 300, 'pr work started', { key: 'pr:1#1' }), line(1, 310, 'pr work finished', { key: 'pr:1#1' })];
  expect(overlaps(prWork(logs, () => 250))).toEqual([]);
  expect(overlaps(prWork(logs, () => 305))).toHaveLength(1);
  expect(overlaps(prWork(logs))).toHaveLength(1); // never killed, never ended: still running at the end
});

test('a singleton schedule: runs that overlap or come sooner than the interval after the previous end are found', () => {
  const run = (start: number, end: number, who = '0.0') => ({ key: 'sweep', start, end, who, cut: false });
  expect(singletonRuns([run(0, 100), run(1100, 1200, '1.0'), run(2300, 2400, '2.0')], 1000)).toEqual([]);
  expect(singletonRuns([run(0, 100), run(50, 120, '1.0')], 1000)).toEqual([expect.stringContaining('overlaps')]);
  expect(singletonRuns([run(0, 100), run(600, 700, '1.0')], 1000)).toEqual([expect.stringContaining('only 500 ms after')]);
});

test('comments: a second comment on a PR and an edit that repeats the body are found', () => {
  const found = commentWrites([
    { pr: 1, method: 'POST', body: 'a', at: 1 },
    { pr: 1, method: 'PATCH', body: 'b', at: 2 },
    { pr: 1, method: 'PATCH', body: 'a', at: 3 },
    { pr: 2, method: 'POST', body: 'a', at: 4 },
    { pr: 2, method: 'PATCH', body: 'a', at: 5 },
    { pr: 2, method: 'POST', body: 'c', at: 6 },
  ]);
  expect(found.posts).toEqual(['PR 2: 2 comments posted']);
  expect(found.repeated).toEqual([expect.stringMatching(/^PR 2: write 2 \(PATCH/)]);
  expect(found.perPr.get(1)).toEqual({ writes: 3, distinct: 2 });
});

test('objects: a referenced object missing from the bucket or of another size is found, and so is an object without a row', () => {
  const a = { repositoryId: 1, sha256: 'a'.repeat(64), size: 10 };
  const b = { repositoryId: 1, sha256: 'b'.repeat(64), size: 20 };
  const c = { repositoryId: 2, sha256: 'a'.repeat(64), size: 10 };
  expect(missingObjects([a, b], [a, b, c])).toEqual([]);
  expect(missingObjects([{ ...a, example: 'build 3 index.html' }, b, c], [a, { ...b, size: 19 }])).toEqual([
    `objects/1/${'b'.repeat(64)}: 19 bytes in the bucket, 20 recorded`,
    `objects/2/${'a'.repeat(64)}: not in the bucket`,
  ]);
  expect(unrecordedObjects([a, b], [a, b, c])).toEqual([]);
  expect(unrecordedObjects([a, b, c], [a, b])).toEqual([`objects/2/${'a'.repeat(64)} (10 bytes): in the bucket without an objects row`]);
  expect(unreferencedObjects([a, b], [b, a], 'a row')).toEqual([]);
  expect(unreferencedObjects([a, b], [b], 'a row')).toEqual([`objects/1/${'a'.repeat(64)} (10 bytes): a row, no build references it`]);
});
