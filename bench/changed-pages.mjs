// How long the changed-pages list of one build takes (issue 27: < 50 ms for a 3,000-file build): two stored builds
// of one PR, FILES files each (3,000 by default, a third of them HTML), 1% of the files differing (changed, added,
// removed) and 10 stylesheets changed, compared from their stored file lists (build_contents) the way the PR comment and the dashboard do:
// reading both rows, decoding them, comparing, looking up what the unchanged pages load, making the links. Median of RUNS (15) after one uncounted.
// Also: the time to encode a build's list (and its pages' loads) at upload. Usage: npm run build && node bench/changed-pages.mjs
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openSqlite } from '../dist/src/db/sqlite.js';
import { changesOfBuilds, encodeContents, recordContents } from '../dist/src/previews/changed-pages.js';

const FILES = Number(process.env.FILES ?? 3000);
const RUNS = Number(process.env.RUNS ?? 15);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-changed-'));
const db = openSqlite(path.join(tmp, 'bench.sqlite'));
const sqlite = db.sqliteClient();
const config = { previewScheme: 'https', previewDomain: 'previews.example.org' };

const hash = () => crypto.randomBytes(32).toString('hex');
const ext = (i) => ['html', 'css', 'js'][i % 3];
const first = new Map();
for (let i = 0; i < FILES; i++) first.set(`docs/section-${i % 40}/page-${i}/index.${ext(i)}`, hash());
// 1% differ: a third changed, a third added, a third removed.
const second = new Map(first);
const paths = [...first.keys()];
const differing = Math.round(FILES / 100);
for (let k = 0; k < differing; k++) {
  const p = paths[k * 97 % paths.length];
  if (k % 3 === 0) second.set(p, hash());
  else if (k % 3 === 1) second.set(`docs/new/page-${k}.html`, hash());
  else second.delete(p);
}
// And 10 stylesheets changed, which unchanged pages load.
for (let k = 0; k < 10; k++) second.set(paths[(k * 300 + 1) % paths.length], hash());

sqlite.prepare("insert into accounts (id, login, wrapped_dek, dek_key_id) values (1, 'octo-org', x'00', 'k')").run();
sqlite.prepare("insert into repositories (id, account_id, full_name, site) values (1, 1, 'octo-org/docs', 'docs')").run();
sqlite.prepare("insert into pull_requests (id, repository_id, number, state) values (1, 1, 7, 'open')").run();
// Each HTML content's loaded files, as read at upload: 5 stylesheets and scripts of the build, root-relative, so
// that the pages loading a changed file are listed too (kept per build at upload: build_contents.loads).
const assetPaths = paths.filter((p) => !p.endsWith('.html'));
const references = new Map();
for (const contents of [first, second]) {
  [...contents].forEach(([p, h], i) => {
    if (p.endsWith('.html')) references.set(h, Array.from({ length: 5 }, (_, k) => `/${assetPaths[(i * 7 + k * 131) % assetPaths.length]}`));
  });
}
const builds = [];
for (const [id, sha7, contents] of [[1, 'aaaaaaa', first], [2, 'bbbbbbb', second]]) {
  sqlite.prepare("insert into builds (id, pull_request_id, sha, sha7, status, content_addressed) values (?, 1, ?, ?, 'ready', 1)").run(id, sha7.repeat(6).slice(0, 40), sha7);
  await recordContents(db.orm, id, encodeContents(contents, references));
  builds.push({ id, sha7, status: 'ready', pullRequestId: 1 });
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const time = async (fn) => {
  const start = performance.now();
  const out = await fn();
  return [performance.now() - start, out];
};
let result;
const compare = [];
const encode = [];
for (let i = 0; i <= RUNS; i++) {
  const [ms, out] = await time(() => changesOfBuilds(db.orm, config, 'docs', 7, builds));
  const [encodeMs] = await time(() => encodeContents(second, references));
  if (i === 0) continue;
  compare.push(ms);
  encode.push(encodeMs);
  result = out;
}
const changes = result.get(2);
const listed = (c) => c.added.length + c.changed.length + c.removed.length;
const row = sqlite.prepare('select length(paths) + length(hashes) + coalesce(length(loads), 0) n from build_contents where build_id = 2').get();
console.log(`${FILES} files per build, ${differing} differing: ${listed(changes.pages)} pages and ${listed(changes.assets)} other files listed, ${changes.loadsChanged.length} unchanged pages loading changed files`);
console.log(`compare two builds (read + decode + compare + links): median ${median(compare).toFixed(1)} ms of ${RUNS} (max ${Math.max(...compare).toFixed(1)} ms)`);
console.log(`encode one build's list at upload: median ${median(encode).toFixed(1)} ms; stored row ${(row.n / 1024).toFixed(0)} KiB`);
await db.close();
fs.rmSync(tmp, { recursive: true, force: true });
