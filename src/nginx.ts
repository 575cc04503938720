import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEFAULT_CDN_MAX_AGE_SECONDS, type Config } from './config.js';

export interface NginxOptions {
  previewDomain: string;
  buildsDir: string;
  /** host:port of the Node process. */
  upstream: string;
  /** Host name of the upload/webhook host (PUBLIC_URL's). */
  publicHost: string;
  /** PUBLIC_URL, for the hidden-preview banner's link to the dashboard; default: `https://<publicHost>` with TLS, else `http://`. */
  publicUrl?: string;
  maxUploadBytes: number;
  /** What plain-HTTP servers listen on (`80`, `127.0.0.1:8080`). With TLS, only the redirect listens there. */
  listen: string;
  tls?: { certificate: string; key: string; listen?: string };
  uploadsPerMinute?: number;
  /** How long a shared cache (a CDN in front) may keep a per-commit file (CDN_MAX_AGE_SECONDS); default 60. */
  cdnMaxAgeSeconds?: number;
}

/** The folder holding the template and its snippets, wherever the code runs from (src/ or dist/src/). */
export function nginxDir(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!fs.existsSync(path.join(dir, 'nginx', 'preview-gate.conf.template'))) {
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error('nginx/preview-gate.conf.template not found');
    dir = parent;
  }
  return path.join(dir, 'nginx');
}

export function nginxOptionsFrom(config: Config, overrides: Partial<NginxOptions> = {}): NginxOptions {
  return {
    previewDomain: config.previewDomain,
    buildsDir: config.buildsDir,
    upstream: `127.0.0.1:${config.port}`,
    publicHost: new URL(config.publicUrl).hostname,
    publicUrl: config.publicUrl,
    maxUploadBytes: config.maxUploadBytes,
    cdnMaxAgeSeconds: config.cdnMaxAgeSeconds,
    listen: '80',
    ...overrides,
  };
}

/** An address nginx can keep for good: an IP literal or localhost. Any other name may move (a container's). */
function isFixedHost(upstream: string): boolean {
  const host = upstream.replace(/:[0-9]+$/, '');
  return host === 'localhost' || net.isIP(host.replace(/^\[|\]$/g, '')) !== 0;
}

/**
 * A fixed address: an upstream group with kept-alive connections. A name (compose's `app:3000`): nginx would resolve
 * it once at start and answer 502 for good once a restarted or recreated container got a new address, so the
 * address goes through a variable instead, which nginx resolves again (with the `resolver` it is given: compose's
 * nginx writes one from its /etc/resolv.conf at start, nginx/start-with-resolver.sh).
 */
function upstreamValues(upstream: string): { UPSTREAM_BLOCK: string; NODE: string } {
  if (isFixedHost(upstream)) {
    return { UPSTREAM_BLOCK: `upstream preview_gate_node {\n    server ${upstream};\n    keepalive 16;\n}`, NODE: 'preview_gate_node' };
  }
  return {
    UPSTREAM_BLOCK:
      `# The Node process, looked up again at each request (needs a \`resolver\` in the http context, see README "Deploying").\n` +
      `map $host $preview_gate_node {\n    default ${upstream};\n}`,
    NODE: '$preview_gate_node',
  };
}

/** Fills in nginx/preview-gate.conf.template: the server blocks to include in nginx's http context. */
export function renderNginx(o: NginxOptions): string {
  const dir = nginxDir();
  const template = fs.readFileSync(path.join(dir, 'preview-gate.conf.template'), 'utf8');
  const tlsListen = o.tls?.listen ?? '443';
  const values: Record<string, string> = {
    ...upstreamValues(o.upstream),
    PUBLIC_HOST: o.publicHost,
    MAX_UPLOAD_BYTES: String(o.maxUploadBytes),
    UPLOADS_PER_MINUTE: String(o.uploadsPerMinute ?? 60),
    BUILDS_DIR: o.buildsDir,
    DOMAIN_REGEX: o.previewDomain.replace(/\./g, '\\.'),
    SNIPPET: path.join(dir, 'preview-site.conf'),
    TYPES: path.join(dir, 'preview-types.conf'),
    HEADERS: path.join(dir, 'preview-headers.conf'),
    CDN_HEADERS: path.join(dir, 'preview-cdn.conf'),
    CDN_MAX_AGE: String(o.cdnMaxAgeSeconds ?? DEFAULT_CDN_MAX_AGE_SECONDS),
    LISTEN_DEFAULT: o.tls ? `listen ${tlsListen} ssl default_server;` : `listen ${o.listen} default_server;`,
    LISTEN_MAIN: o.tls ? `listen ${tlsListen} ssl;` : `listen ${o.listen};`,
    LISTEN_PREVIEW: o.tls ? `listen ${tlsListen} ssl;` : `listen ${o.listen};`,
    TLS_CERTS: o.tls ? `ssl_certificate ${o.tls.certificate};\n    ssl_certificate_key ${o.tls.key};` : '',
    DASHBOARD_URL: dashboardUrl(o),
    TLS_REDIRECT: o.tls
      ? `server {\n    listen ${o.listen} default_server;\n    server_name _;\n    return 301 https://$host$request_uri;\n}`
      : '',
  };
  const fill = (text: string) =>
    text.replace(/\{\{([A-Z_]+)\}\}/g, (_, name: string) => {
      const value = values[name];
      if (value === undefined) throw new Error(`nginx template: unknown placeholder {{${name}}}`);
      return value;
    });
  // Inlined, not included: its own placeholders are filled like the template's.
  values.HIDDEN_RULES = fill(fs.readFileSync(path.join(dir, 'preview-hidden.conf'), 'utf8')).replace(/\n(?=.)/g, '\n    ');
  return fill(template);
}

/**
 * The dashboard's address as the banner links it, inside a single-quoted nginx string and a double-quoted HTML
 * attribute: a character that would end either (or start an nginx variable) is refused rather than escaped.
 */
function dashboardUrl(o: NginxOptions): string {
  const url = new URL(o.publicUrl ?? `${o.tls ? 'https' : 'http'}://${o.publicHost}`);
  const href = `${url.origin}${url.pathname.replace(/\/$/, '')}/`;
  if (/['"$\\<>{};\s]/.test(href)) throw new Error(`PUBLIC_URL ${href} cannot be written into the nginx configuration`);
  return href;
}
