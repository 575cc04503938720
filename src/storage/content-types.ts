import fs from 'node:fs';
import path from 'node:path';
import { nginxDir } from '../nginx.js';

const DEFAULT_TYPE = 'application/octet-stream';

let byExtension: Map<string, string> | undefined;

/**
 * nginx/preview-types.conf as a map (extension → type): the one list of content types, so a build stored in a
 * bucket is served with exactly the type nginx gives the same path from a folder.
 */
function typesOfNginx(): Map<string, string> {
  if (byExtension) return byExtension;
  const text = fs.readFileSync(path.join(nginxDir(), 'preview-types.conf'), 'utf8').replace(/#.*$/gm, '');
  const block = /types\s*\{([^}]*)\}/.exec(text)?.[1] ?? '';
  byExtension = new Map();
  for (const line of block.split(';')) {
    const [type, ...extensions] = line.trim().split(/\s+/);
    if (!type) continue;
    for (const extension of extensions) byExtension.set(extension.toLowerCase(), type);
  }
  return byExtension;
}

/** The content type nginx's `types` give a path (matched case-insensitively, as nginx does); octet-stream otherwise. */
export function contentTypeOf(filePath: string): string {
  const name = path.posix.basename(filePath);
  const dot = name.lastIndexOf('.');
  if (dot < 0) return DEFAULT_TYPE;
  return typesOfNginx().get(name.slice(dot + 1).toLowerCase()) ?? DEFAULT_TYPE;
}
