import fs from 'node:fs';

/** Whether this process runs in a container: docker writes /.dockerenv, podman /run/.containerenv. */
export function inContainer(): boolean {
  return fs.existsSync('/.dockerenv') || fs.existsSync('/run/.containerenv');
}
