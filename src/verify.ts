/**
 * `preview-gate verify <PUBLIC_URL>`: checks a live deployment from outside, the way a reviewer and GitHub
 * reach it — one line per check, exit 1 on any failure.
 */
import crypto from 'node:crypto';
import dns from 'node:dns/promises';
import http from 'node:http';
import https from 'node:https';

export interface VerifyOptions {
  publicUrl: string;
  previewDomain: string;
  webhookSecret?: string;
  /** `host:port` to connect to instead of what DNS says (like curl --resolve); the names stay in Host and SNI. */
  connect?: string;
}

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One request to `url`, optionally through `connect`; TLS is verified against the URL's own host name. */
function request(url: string, options: { method?: string; headers?: Record<string, string>; body?: string; connect?: string } = {}): Promise<Answer> {
  const target = new URL(url);
  const [connectHost, connectPort] = options.connect ? [options.connect.replace(/:\d+$/, ''), Number(/:(\d+)$/.exec(options.connect)?.[1])] : [target.hostname, Number(target.port) || undefined];
  const client = target.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = client.request(
      {
        host: connectHost,
        port: connectPort ?? (target.protocol === 'https:' ? 443 : 80),
        path: `${target.pathname}${target.search}`,
        method: options.method ?? 'GET',
        headers: { host: target.host, ...options.headers },
        servername: target.hostname,
        timeout: 10_000,
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c.length + body.length < 64 * 1024 ? c : ''));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
      },
    );
    req.on('timeout', () => req.destroy(new Error('no answer within 10 s')));
    req.on('error', reject);
    req.end(options.body);
  });
}

export async function verifyDeployment(options: VerifyOptions, say: (line: string) => void): Promise<boolean> {
  const base = options.publicUrl.replace(/\/+$/, '');
  const scheme = new URL(base).protocol;
  const probe = `pr1-0000000--verify-${crypto.randomBytes(3).toString('hex')}.${options.previewDomain}`;
  let ok = true;
  const check = async (name: string, run: () => Promise<string>) => {
    try {
      say(`ok    ${name}: ${await run()}`);
    } catch (err) {
      ok = false;
      say(`FAIL  ${name}: ${(err as Error).message}`);
    }
  };

  // Says who answered: nginx names itself in Server (without its version); Node sends no Server header.
  await check(`health at ${base}/health${options.connect ? ` (connected to ${options.connect})` : ''}`, async () => {
    const res = await request(`${base}/health`, { connect: options.connect });
    if (res.status !== 200) throw new Error(`GET ${base}/health answered ${res.status}`);
    const body = JSON.parse(res.body) as { status?: string; github?: string };
    const server = String(res.headers.server ?? '');
    const via = /^nginx\b/i.test(server) ? 'through nginx' : server ? `answered by "${server}", not nginx` : 'answered by Node directly, not through nginx';
    return `status ${body.status}, GitHub App ${body.github}, ${via}`;
  });

  await check(`wildcard DNS of *.${options.previewDomain}`, async () => {
    if (options.connect) return `not asked (--connect ${options.connect})`;
    const { address } = await dns.lookup(probe);
    return `${probe} → ${address}`;
  });

  await check(`a hidden or unknown preview is 404 and not cached${scheme === 'https:' ? ' (TLS verified)' : ''}`, async () => {
    const res = await request(`${scheme}//${probe}/`, { connect: options.connect });
    if (res.status !== 404) throw new Error(`${probe} answered ${res.status}, not 404`);
    const cache = String(res.headers['cache-control'] ?? '');
    if (!/no-store/.test(cache)) throw new Error(`the 404 carries Cache-Control "${cache}", not no-store: a CDN or browser would keep it`);
    return `404, Cache-Control: ${cache}`;
  });

  await check('webhook URL accepts a delivery signed with WEBHOOK_SECRET', async () => {
    if (!options.webhookSecret) throw new Error('WEBHOOK_SECRET is not set here, so a signed delivery cannot be made');
    const body = JSON.stringify({ zen: 'preview-gate verify', hook_id: 0 });
    const signature = `sha256=${crypto.createHmac('sha256', options.webhookSecret).update(body).digest('hex')}`;
    const res = await request(`${base}/api/github/webhooks`, {
      method: 'POST',
      body,
      connect: options.connect,
      headers: { 'content-type': 'application/json', 'x-github-event': 'ping', 'x-github-delivery': crypto.randomUUID(), 'x-hub-signature-256': signature },
    });
    if (res.status !== 200) throw new Error(`a signed ping answered ${res.status}: ${res.body.slice(0, 200)}`);
    return 'a signed ping answered 200';
  });

  await check('the upload host refuses GET', async () => {
    const res = await request(`${base}/create-build/1/${'0'.repeat(40)}`, { connect: options.connect });
    if (res.status !== 405) throw new Error(`GET /create-build/… answered ${res.status}, not 405`);
    if (/nginx\/\d/.test(String(res.headers.server ?? ''))) throw new Error(`the answer names the nginx version (${res.headers.server})`);
    return '405';
  });
  return ok;
}
