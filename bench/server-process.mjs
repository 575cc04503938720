// The real server as a child process (`node --max-semi-space-size=4 --initial-old-space-size=64 dist/src/main.js`), for
// the bench scripts and the process tests.
import { spawn } from 'node:child_process';

/**
 * Starts the server with `env` and resolves once GET /health on `port` answers; `nodeArgs` go before the script.
 * @param {NodeJS.ProcessEnv} env
 * @param {number | string} port
 * @param {{ nodeArgs?: string[], stdio?: import('node:child_process').StdioOptions }} [options]
 * @returns {Promise<import('node:child_process').ChildProcess>}
 */
export async function startServerProcess(env, port, { nodeArgs = [], stdio = ['ignore', 'inherit', 'inherit'] } = {}) {
  // The heap's sizes as `npm start` and the image set them (README, performance).
  const child = spawn('node', ['--max-semi-space-size=4', '--initial-old-space-size=64', ...nodeArgs, 'dist/src/main.js'], {
    env: { MALLOC_ARENA_MAX: '2', ...env }, // as `npm start` and the image set it (an env of the caller's wins)
    stdio,
  });
  // Up to 60 s: a start takes ~2 s on a quiet 2-core machine, but 10 s were not enough on a loaded CI box.
  let exited = false;
  child.once('exit', () => (exited = true));
  for (const until = Date.now() + 60_000; Date.now() < until && !exited; ) {
    try {
      if ((await fetch(`http://127.0.0.1:${port}/health`)).ok) return child;
    } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
  child.kill('SIGKILL');
  throw new Error(exited ? `the server exited (code ${child.exitCode}) before answering /health` : 'the server did not answer /health within 60 s');
}

/** Sends SIGTERM and resolves with the exit code once the process has ended. */
export function stopServerProcess(child) {
  const exited = new Promise((r) => child.once('exit', (code) => r(code)));
  child.kill('SIGTERM');
  return exited;
}
