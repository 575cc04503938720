import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Config } from './config.js';

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
  /** STORAGE=s3: previews come from this bucket, through Node's answer (nginx/preview-servers-s3.conf). */
  s3?: { endpoint: string; bucket: string; /** CA bundle nginx checks an https endpoint against. */ trustedCertificates?: string };
}

/** The folder holding the template and its two snippets, wherever the code runs from (src/ or dist/src/). */
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
    listen: '80',
    ...(config.storage === 's3' && config.s3 ? { s3: { endpoint: bucketEndpoint(config.s3), bucket: config.s3.bucket } } : {}),
    ...overrides,
  };
}

/** The endpoint the bucket is reached at: S3_ENDPOINT, or AWS S3 of the region (path-style, as the client uses it). */
export function bucketEndpoint(settings: { endpoint?: string; region: string }): string {
  return settings.endpoint ?? `https://s3.${settings.region}.amazonaws.com`;
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
  const group = upstreamGroup('preview_gate_node', upstream, 'The Node process');
  return { UPSTREAM_BLOCK: group.block, NODE: group.name };
}

/** An upstream group for a fixed address; for a name, a variable nginx resolves again at each request. */
function upstreamGroup(name: string, upstream: string, what: string): { block: string; name: string } {
  if (isFixedHost(upstream)) return { block: `upstream ${name} {\n    server ${upstream};\n    keepalive 16;\n}`, name };
  return {
    block:
      `# ${what}, looked up again at each request (needs a \`resolver\` in the http context, see README "Deploying").\n` +
      `map $host $${name} {\n    default ${upstream};\n}`,
    name: `$${name}`,
  };
}

/** Headers nginx never passes on from the bucket: its own, and any Cache-Control (nginx sets its own). */
const BUCKET_HEADERS_HIDDEN = [
  'Cache-Control',
  'Expires',
  'Set-Cookie',
  'Content-Disposition',
  'x-amz-request-id',
  'x-amz-id-2',
  'x-amz-version-id',
  'x-amz-delete-marker',
  'x-amz-storage-class',
  'x-amz-server-side-encryption',
  'x-amz-expiration',
  'x-amz-restore',
  'x-amz-replication-status',
  'x-amz-mp-parts-count',
  'x-amz-tagging-count',
  'x-amz-website-redirect-location',
  'x-amz-checksum-crc32',
  'x-amz-checksum-sha256',
  'x-rgw-object-type',
];

/**
 * STORAGE=s3: the bucket's upstream and how a signed object GET is sent to it. Only the headers nginx names go to
 * the bucket (a visitor's cookies and credentials never do); the Host is the endpoint's, as signed.
 */
function bucketValues(s3: NonNullable<NginxOptions['s3']>): Record<string, string> {
  const endpoint = new URL(s3.endpoint);
  const https = endpoint.protocol === 'https:';
  const port = endpoint.port || (https ? '443' : '80');
  const group = upstreamGroup('preview_gate_bucket', `${endpoint.hostname}:${port}`, 'The bucket\'s endpoint');
  const fetch = [
    'proxy_method GET;',
    'proxy_pass_request_headers off;',
    'proxy_pass_request_body off;',
    `proxy_set_header Host "${endpoint.host}";`,
    'proxy_set_header If-None-Match $http_if_none_match;',
    'proxy_set_header If-Modified-Since $http_if_modified_since;',
    'proxy_http_version 1.1;',
    'proxy_set_header Connection "";',
    // The bucket's errors (403 expired or refused, 404 gone) never reach the visitor: no XML, no request ids.
    'proxy_intercept_errors on;',
    ...BUCKET_HEADERS_HIDDEN.map((h) => `proxy_hide_header ${h};`),
    ...(https
      ? ['proxy_ssl_server_name on;', `proxy_ssl_name ${endpoint.hostname};`, 'proxy_ssl_verify on;', `proxy_ssl_trusted_certificate ${s3.trustedCertificates ?? '/etc/ssl/certs/ca-certificates.crt'};`]
      : []),
  ];
  return {
    BUCKET_UPSTREAM: group.block,
    BUCKET_URL: `${https ? 'https' : 'http'}://${group.name}`,
    BUCKET_FETCH: fetch.join('\n        '),
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
    LISTEN_DEFAULT: o.tls ? `listen ${tlsListen} ssl default_server;` : `listen ${o.listen} default_server;`,
    LISTEN_MAIN: o.tls ? `listen ${tlsListen} ssl;` : `listen ${o.listen};`,
    LISTEN_PREVIEW: o.tls ? `listen ${tlsListen} ssl;` : `listen ${o.listen};`,
    TLS_CERTS: o.tls ? `ssl_certificate ${o.tls.certificate};\n    ssl_certificate_key ${o.tls.key};` : '',
    DASHBOARD_URL: dashboardUrl(o),
    TLS_REDIRECT: o.tls
      ? `server {\n    listen ${o.listen} default_server;\n    server_name _;\n    return 301 https://$host$request_uri;\n}`
      : '',
    VIEW_COOKIE: dashboardUrl(o).startsWith('https:') ? '__Host-preview-gate-view' : 'preview-gate-view',
    ...(o.s3 ? bucketValues(o.s3) : {}),
  };
  const fill = (text: string) =>
    text.replace(/\{\{([A-Z_]+)\}\}/g, (_, name: string) => {
      const value = values[name];
      if (value === undefined) throw new Error(`nginx template: unknown placeholder {{${name}}}`);
      return value;
    });
  const read = (name: string) => fs.readFileSync(path.join(dir, name), 'utf8');
  // Inlined, not included: their own placeholders are filled like the template's.
  values.BANNER = fill(read('preview-banner.html').replace(/\n$/, ''));
  values.HIDDEN_RULES = fill(read('preview-hidden.conf')).replace(/\n(?=.)/g, '\n    ');
  values.PREVIEW_SERVERS = fill(read(o.s3 ? 'preview-servers-s3.conf' : 'preview-servers-filesystem.conf')).replace(/\n$/, '');
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
