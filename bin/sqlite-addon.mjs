#!/usr/bin/env node
// better-sqlite3 12 (kept because it supports Node 20) derives its database and statements from node::ObjectWrap.
// Since Node 24.19 that header-only class adds an environment cleanup hook in its constructor and removes it in
// its destructor, which aborts the process ("Assertion failed: (env) != nullptr") when V8 frees a statement outside
// JavaScript (nodejs/node#65446). An addon compiled against those headers killed this server at start or after its
// first large upload. Node 20's headers have no such hook, and Node ≥ 26.4 keeps a registry that makes it safe
// (nodejs/node#65262); better-sqlite3 13 (Node-API) avoids it but needs Node ≥ 22.
//
//   node bin/sqlite-addon.mjs check     exit 1 with one sentence when the installed addon would abort this Node
//   node bin/sqlite-addon.mjs ensure    npm's `prepare`: rebuild it when `check` fails; only a warning when that
//                                       cannot be done (`preview-gate upload` in CI never loads SQLite)
//   node bin/sqlite-addon.mjs rebuild   from source against a copy of this Node's headers whose ObjectWrap does what
//                                       it did before 24.19 (no hook), then `check` (the image's build runs this)
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const HOOK_REMOVAL = 'RemoveEnvironmentCleanupHook';

/** The compiled addon of the better-sqlite3 that this code loads. */
export function addonFile() {
  const packageDir = path.dirname(createRequire(import.meta.url).resolve('better-sqlite3/package.json'));
  return path.join(packageDir, 'build', 'Release', 'better_sqlite3.node');
}

/**
 * Why the addon would abort this process, or undefined when it would not: it calls the hook removal (compiled
 * against Node ≥ 24.19's headers) and runs on a Node without the hook registry (any release before 26.4.0).
 */
export function sqliteAddonProblem(nodeVersion = process.versions.node, file = addonFile()) {
  const [major, minor] = nodeVersion.split('.').map(Number);
  const hasRegistry = major > 26 || (major === 26 && minor >= 4);
  if (hasRegistry || !fs.existsSync(file) || !fs.readFileSync(file).includes(HOOK_REMOVAL)) return undefined;
  return (
    `better-sqlite3's addon (${file}) was compiled against Node 24.19+'s headers, whose ObjectWrap makes Node ` +
    `${nodeVersion} abort when V8 frees a statement (nodejs/node#65446); rebuild it with ` +
    '`node bin/sqlite-addon.mjs rebuild` (needs python3, make, g++ and Node\'s headers).'
  );
}

/** A copy of this Node's headers with the pre-24.19 ObjectWrap: its constructor and destructor touch no hook. */
function patchedHeaders() {
  const prefixes = [process.env.npm_config_nodedir, path.resolve(path.dirname(process.execPath), '..')].filter(Boolean);
  const prefix = prefixes.find((p) => fs.existsSync(path.join(p, 'include', 'node', 'node_object_wrap.h')));
  if (!prefix) throw new Error(`Node's headers are not in ${prefixes.map((p) => path.join(p, 'include', 'node')).join(' or ')}; install them (Debian: libnode-dev) or set npm_config_nodedir.`);
  const copy = fs.mkdtempSync(path.join(os.tmpdir(), 'node-headers-'));
  fs.cpSync(path.join(prefix, 'include', 'node'), path.join(copy, 'include', 'node'), { recursive: true });
  const header = path.join(copy, 'include', 'node', 'node_object_wrap.h');
  const patched = fs.readFileSync(header, 'utf8').replace(/^ *(Add|Remove)CleanupHook\(\);\n/gm, '');
  fs.writeFileSync(header, patched);
  return copy;
}

function rebuild() {
  const addon = addonFile();
  // <root>/node_modules/better-sqlite3/build/Release/better_sqlite3.node: npm rebuilds from <root>.
  const root = path.resolve(path.dirname(addon), '..', '..', '..', '..');
  const headers = patchedHeaders();
  try {
    // From source even where a prebuilt binary could be downloaded: those are built against upstream's headers.
    const env = { ...process.env, npm_config_nodedir: headers, npm_config_build_from_source: 'true' };
    const result = spawnSync('npm', ['rebuild', 'better-sqlite3'], { cwd: root, env, stdio: 'inherit' });
    if (result.status !== 0) throw new Error(`npm rebuild better-sqlite3 failed (exit ${result.status ?? result.signal}).`);
  } finally {
    fs.rmSync(headers, { recursive: true, force: true });
  }
  if (!fs.existsSync(addon)) throw new Error(`the build left no ${addon}.`);
  if (sqliteAddonProblem(process.versions.node, addon)) throw new Error(`the rebuilt addon still calls ${HOOK_REMOVAL}.`);
}

function main(command) {
  const say = (line) => console.error(`preview-gate: ${line}`);
  if (command === 'check') {
    const problem = sqliteAddonProblem();
    if (problem) say(problem);
    return problem ? 1 : 0;
  }
  if (command === 'rebuild' || command === 'ensure') {
    if (command === 'ensure' && !sqliteAddonProblem()) return 0;
    if (command === 'ensure') say(`better-sqlite3's addon would abort Node ${process.versions.node} (nodejs/node#65446); rebuilding it against patched headers…`);
    try {
      rebuild();
      say('better-sqlite3 rebuilt; it does not call the hook removal.');
      return 0;
    } catch (err) {
      say(`could not rebuild better-sqlite3: ${err.message}`);
      if (command === 'ensure') say('the server will refuse to start on this Node until it is rebuilt; `preview-gate upload` works as it is.');
      return command === 'ensure' ? 0 : 1;
    }
  }
  say('usage: node bin/sqlite-addon.mjs check|ensure|rebuild');
  return 2;
}

if (process.argv[1] && import.meta.url === pathToFileURL(fs.realpathSync(process.argv[1])).href) process.exitCode = main(process.argv[2]);
