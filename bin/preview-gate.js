#!/usr/bin/env node
// The package's command. The TypeScript is compiled to dist/ by `npm ci` / `npm install` (the prepare script).
import 'dotenv/config';

const args = process.argv.slice(2);
const io = { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr, env: process.env };
// `upload` runs in CI for every commit: it loads only its own module, not the server's (0.15 s instead of 0.7 s).
const uploadOnly = args[0] === 'upload' && !args.some((a) => a === '--help' || a === '-h' || a === 'help');
const code = uploadOnly
  ? await (await import('../dist/src/upload-client.js')).runUpload(args.slice(1), io)
  : await (await import('../dist/src/cli.js')).runCli(args, io);
process.exitCode = code;
