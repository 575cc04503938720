/**
 * What an operator watches: the metrics move with the work, /health says "degraded" when the sweeps keep
 * failing, and each request is one access-log line whose request id follows the work it causes.
 * Also: docs/operations.md's configuration table is the one the schema generates.
 */
import fs from 'node:fs';
import nock from 'nock';
import { renderConfigTable } from '../src/config-docs.js';
import { FakeGitHub } from './helpers/fake-github.js';
import { sha, startTestServer, type TestServer } from './helpers/server.js';
import { siteTarball } from './helpers/tarballs.js';

let fake: FakeGitHub;
let server: TestServer;
beforeAll(async () => {
  nock.enableNetConnect('127.0.0.1');
  fake = await new FakeGitHub().start();
  fake.addRepo({ id: 7001, owner: { id: 9001, login: 'octo-org' }, name: 'docs' });
  server = await startTestServer(fake.env);
});
afterAll(async () => {
  await server.close();
  await fake.close();
});

const metrics = async () => (await fetch(`${server.url}/metrics`)).text();
/** The value of one sample (`name{labels}`), 0 when absent. */
const sample = (text: string, name: string, labels: RegExp = /.*/) =>
  Number(text.split('\n').find((l) => l.startsWith(name) && labels.test(l))?.split(' ').at(-1) ?? 0);

test('an upload moves the request histogram (by route template), the upload phases and the GitHub latency; build info is there', async () => {
  fake.addPull(7001, { number: 1, user: { id: 5, login: 'c' }, commits: [sha('1')], labels: ['safe for preview'] });
  const before = await metrics();
  const res = await server.upload(1, sha('1'), siteTarball('one'));
  expect(res.status).toBe(201);
  const after = await metrics();
  const route = /route="\/create-build\/:pr\/:sha",status="201"/;
  expect(sample(after, 'preview_gate_http_request_duration_seconds_count', route)).toBe(sample(before, 'preview_gate_http_request_duration_seconds_count', route) + 1);
  expect(after).not.toMatch(/route="\/create-build\/1\//); // templates, never raw URLs
  expect(sample(after, 'preview_gate_upload_phase_seconds_count', /phase="store"/)).toBeGreaterThan(sample(before, 'preview_gate_upload_phase_seconds_count', /phase="store"/));
  expect(sample(after, 'preview_gate_upload_phase_seconds_count', /phase="authorize"/)).toBeGreaterThan(0);
  expect(after).toMatch(/preview_gate_github_request_duration_seconds_count\{method="GET",route="\/repos\/\{owner\}\/\{repo\}\/pulls\/\{pull_number\}",status="200"\} [1-9]/);
  const version = JSON.parse(fs.readFileSync('package.json', 'utf8')).version;
  expect(after).toContain(`preview_gate_build_info{version="${version}"} 1`);
});

test('X-Request-Id: kept when well formed, else generated; the access line has client, method, route, status, duration; the work logs carry the id', async () => {
  fake.addPull(7001, { number: 2, user: { id: 5, login: 'c' }, commits: [sha('2')], labels: ['safe for preview'] });
  const id = 'req-0123456789abcdef';
  const res = await server.upload(2, sha('2'), siteTarball('two'), { headers: { 'x-request-id': id } });
  expect([res.status, res.headers.get('x-request-id')]).toEqual([201, id]);
  const lines = server.logs.filter((l) => l.requestId === id);
  expect(lines.find((l) => l.msg === 'request')).toEqual(expect.objectContaining({ client: '127.0.0.1', method: 'POST', route: '/create-build/:pr/:sha', status: 201, durationMs: expect.any(Number) }));
  // The decision the upload caused is logged with the upload's id.
  expect(lines.some((l) => l.msg !== 'request')).toBe(true);

  const bad = await fetch(`${server.url}/health`, { headers: { 'x-request-id': 'has spaces and "quotes"' } });
  const generated = bad.headers.get('x-request-id')!;
  expect(generated).toMatch(/^[0-9a-f-]{36}$/);
  expect(server.logs.find((l) => l.requestId === generated && l.msg === 'request')).toEqual(expect.objectContaining({ route: '/health', status: 200 }));
});

test('/health is "degraded" (200, with details) after 3 failed sweeps, ok again after one succeeds; the failures and the last success are metrics', async () => {
  const health = async () => {
    const res = await fetch(`${server.url}/health`);
    return { status: res.status, body: (await res.json()) as Record<string, any> };
  };
  expect((await health()).body.status).toBe('ok');
  fake.fault = { kind: 'down', everything: true };
  for (let i = 0; i < 3; i++) await expect(server.sweep!.run()).rejects.toThrow();
  fake.fault = undefined;
  const degraded = await health();
  expect(degraded).toEqual({ status: 200, body: expect.objectContaining({ status: 'degraded', sweep: expect.objectContaining({ consecutiveFailures: 3, lastSuccess: null }) }) });
  const text = await metrics();
  expect(sample(text, 'preview_gate_sweep_failures_total')).toBe(3);
  expect(text).toMatch(/preview_gate_github_request_errors_total\{method="GET",route="\/app\/installations",status="502"\} [1-9]/);
  expect(sample(text, 'preview_gate_last_successful_sweep_timestamp_seconds')).toBe(0);

  await server.sweep!.run();
  expect((await health()).body.status).toBe('ok');
  expect(sample(await metrics(), 'preview_gate_last_successful_sweep_timestamp_seconds')).toBeGreaterThan(Date.now() / 1000 - 60);
  await server.previews.cleanup();
  expect(sample(await metrics(), 'preview_gate_last_successful_cleanup_timestamp_seconds')).toBeGreaterThan(Date.now() / 1000 - 60);
});

test("docs/operations.md's configuration table is the one the schema generates (npm run docs:config rewrites it)", () => {
  const doc = fs.readFileSync('docs/operations.md', 'utf8');
  const table = renderConfigTable();
  expect(table.split('\n').length).toBeGreaterThan(30);
  expect(doc).toContain(`<!-- config-table:start -->\n${table}\n<!-- config-table:end -->`);
});
