#!/usr/bin/env node
// `npm start` runs this first: dist/ is rebuilt only when a source is newer than the last build (npm ci builds
// once through `prepare`), so a restart is back in about a second instead of recompiling TypeScript each time.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const STAMP = 'dist/.build-stamp';
const SOURCES = ['src', 'nginx', 'package.json', 'tsconfig.json', 'tsconfig.build.json'];

function newestMtime(entry) {
  const stat = fs.statSync(entry, { throwIfNoEntry: false });
  if (!stat) return 0;
  if (!stat.isDirectory()) return stat.mtimeMs;
  return Math.max(0, ...fs.readdirSync(entry).map((name) => newestMtime(path.join(entry, name))));
}

const built = fs.statSync(STAMP, { throwIfNoEntry: false })?.mtimeMs ?? 0;
if (Math.max(...SOURCES.map(newestMtime)) > built) {
  console.error('preview-gate: sources changed since the last build; building…');
  const result = spawnSync('npm', ['run', '--silent', 'build'], { stdio: 'inherit' });
  if (result.status !== 0) process.exit(result.status ?? 1);
}
