import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { renderNginx, type NginxOptions } from '../../src/nginx.js';

export const NGINX = ['/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/bin/nginx'].find((p) => fs.existsSync(p));

export interface RunningNginx {
  port: number;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

/** Real nginx from the rendered template, with its own prefix, pid, logs and temp dirs under `dir`. */
export async function startNginx(
  dir: string,
  options: Omit<NginxOptions, 'listen'>,
  /** Server blocks rendered elsewhere (`preview-gate nginx --listen 127.0.0.1:<port>`), listening on `port`. */
  rendered?: { config: string; port: number },
): Promise<RunningNginx> {
  const port = rendered?.port ?? (await freePort());
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'preview-gate.conf'), rendered?.config ?? renderNginx({ ...options, listen: `127.0.0.1:${port}` }));
  const mime = fs.existsSync('/etc/nginx/mime.types') ? 'include /etc/nginx/mime.types;' : '';
  return launchNginx(dir, port, { http: `${mime}\n  default_type application/octet-stream;\n  include ${dir}/preview-gate.conf;` });
}

/** Debian's libnginx-mod-http-cache-purge (2.3): PURGE of one exact cache key, no wildcards, no surrogate keys. */
export const CACHE_PURGE_MODULE = ['/usr/lib/nginx/modules/ngx_http_cache_purge_module.so'].find((p) => fs.existsSync(p));

/**
 * A CDN in front of the preview nginx: a second nginx that caches what it proxies (proxy_cache, as the origin's
 * Cache-Control allows: s-maxage first) and empties one exact key on PURGE (from loopback; 404 when not cached). Each route listens on
 * its own port in front of its own origin, with keys `<port> <host><path>`: each port is a CDN of its own.
 * `X-Cache` says HIT, MISS or EXPIRED.
 */
export async function startCdnNginx(dir: string, routes: { port: number; origin: number }[]): Promise<RunningNginx> {
  if (!CACHE_PURGE_MODULE) throw new Error('libnginx-mod-http-cache-purge is not installed: run `apt-get install -y libnginx-mod-http-cache-purge` (.ci/run does).');
  const servers = routes.map(
    ({ port, origin }) => `server {
    listen 127.0.0.1:${port};
    location / {
      error_page 418 = @purge;
      if ($request_method = PURGE) {
        return 418;
      }
      proxy_pass http://127.0.0.1:${origin};
      proxy_set_header Host $host;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache cdn;
      proxy_cache_key "$server_port $host$request_uri";
      add_header X-Cache $upstream_cache_status always;
    }
    # The module's other syntax, in the caching location (\`proxy_cache_purge PURGE from …\`), crashes its
    # workers (SIGSEGV) with Debian's nginx 1.22: the zone and key are named here instead.
    location @purge {
      allow 127.0.0.1;
      deny all;
      proxy_cache_purge cdn "$server_port $host$request_uri";
    }
  }`,
  );
  fs.mkdirSync(path.join(dir, 'cache'), { recursive: true });
  return launchNginx(dir, routes[0]!.port, {
    main: `load_module ${CACHE_PURGE_MODULE};`,
    http: `proxy_cache_path ${dir}/cache levels=1 keys_zone=cdn:1m max_size=16m inactive=1h use_temp_path=off;\n  ${servers.join('\n  ')}`,
  });
}

/** nginx with its own prefix, pid, logs and temp dirs under `dir`, `http` inside its http block; waits for `port`. */
async function launchNginx(dir: string, port: number, conf: { main?: string; http: string }): Promise<RunningNginx> {
  if (!NGINX) throw new Error('nginx is not installed: run `apt-get install -y nginx` (.ci/run does) — the end-to-end test needs it.');
  fs.mkdirSync(path.join(dir, 'logs'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'temp'), { recursive: true });
  const runAs = process.getuid?.() === 0 ? 'user root;' : '';
  fs.writeFileSync(
    path.join(dir, 'nginx.conf'),
    `${conf.main ?? ''}
${runAs}
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/logs/error.log warn;
events { worker_connections 2048; }
http {
  access_log off;
  client_body_temp_path ${dir}/temp/body;
  proxy_temp_path ${dir}/temp/proxy;
  fastcgi_temp_path ${dir}/temp/fastcgi;
  uwsgi_temp_path ${dir}/temp/uwsgi;
  scgi_temp_path ${dir}/temp/scgi;
  ${conf.http}
}
`,
  );
  const check = spawnSync(NGINX, ['-t', '-p', dir, '-c', path.join(dir, 'nginx.conf')], { encoding: 'utf8' });
  if (check.status !== 0) throw new Error(`nginx -t failed:\n${check.stderr}`);
  const proc: ChildProcess = spawn(NGINX, ['-p', dir, '-c', path.join(dir, 'nginx.conf'), '-g', 'daemon off;'], { stdio: 'inherit' });
  for (let i = 0; i < 100; i++) {
    if (await canConnect(port)) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    port,
    stop: () =>
      new Promise<void>((resolve) => {
        proc.once('exit', () => resolve());
        proc.kill('SIGQUIT');
      }),
  };
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

export interface HttpAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** A request with any Host header (fetch cannot set one). */
export function request(port: number, host: string, urlPath: string, init: { method?: string; headers?: Record<string, string>; body?: Buffer } = {}): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, path: urlPath, method: init.method ?? 'GET', headers: { host, ...init.headers }, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
      },
    );
    req.on('error', reject);
    req.end(init.body);
  });
}

/**
 * A GET written by hand, as HTTP/1.0: with no Host header at all when `host` is undefined (http.request always
 * sends one), and with the path exactly as given (`//metrics` is not read as a URL with a host).
 */
export function rawGet(port: number, urlPath: string, host?: string): Promise<{ status: number; head: string; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.write(`GET ${urlPath} HTTP/1.0\r\n${host === undefined ? '' : `Host: ${host}\r\n`}\r\n`));
    let text = '';
    socket.on('data', (d: Buffer) => (text += d.toString()));
    socket.on('end', () => {
      const [head = '', body = ''] = text.split('\r\n\r\n');
      resolve({ status: Number(head.split(' ')[1]), head, body });
    });
    socket.on('error', reject);
  });
}
