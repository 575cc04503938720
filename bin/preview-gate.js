#!/usr/bin/env node
// The package's command. The TypeScript is compiled to dist/ by `npm ci` / `npm install` (the prepare script).
import 'dotenv/config';
import { runCli } from '../dist/src/cli.js';

const code = await runCli(process.argv.slice(2), {
  stdin: process.stdin,
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
});
process.exitCode = code;
