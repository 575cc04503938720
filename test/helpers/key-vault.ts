import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { AzureKeyOptions } from '../../src/secrets/azure.js';

const TOKEN = 'test-access-token';

/**
 * A local Azure Key Vault: HTTPS (self-signed certificate made with openssl), the 401 Bearer challenge, and the
 * three calls the real @azure/keyvault-keys client makes — GET a key version, POST wrapkey, POST unwrapkey —
 * doing real RSA-OAEP-256 with RSA keys it generated. `mode` makes it refuse (403) or fail (503).
 */
export async function startFakeKeyVault(versions: string[] = ['v1']) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fake-vault-'));
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1',
    '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem'),
  ], { stdio: 'ignore' });
  const cert = fs.readFileSync(path.join(dir, 'cert.pem'));
  const tlsKey = fs.readFileSync(path.join(dir, 'key.pem'));
  fs.rmSync(dir, { recursive: true, force: true });

  const keys = new Map(versions.map((v) => [v, crypto.generateKeyPairSync('rsa', { modulusLength: 2048 })]));
  const state = {
    mode: 'ok' as 'ok' | 'forbidden' | 'down',
    /** Wraps still allowed before the vault starts failing (undefined: no limit). */
    wrapsLeft: undefined as number | undefined,
    calls: [] as { op: string; version: string; alg?: string; authorized: boolean }[],
  };

  const server = https.createServer({ cert, key: tlsKey }, async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const send = (status: number, body: object, headers: Record<string, string> = {}) =>
      res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(body));
    const match = /^\/keys\/([^/]+)\/([^/?]+)(?:\/(wrapkey|unwrapkey))?\?/.exec(req.url ?? '');
    const authorized = req.headers.authorization === `Bearer ${TOKEN}`;
    if (!authorized) {
      return send(401, { error: { code: 'Unauthorized', message: 'AKV10000: Request is missing a Bearer or PoP token.' } }, {
        'www-authenticate': 'Bearer authorization="https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000", resource="https://vault.azure.net"',
      });
    }
    const op = match?.[3] ?? (req.method === 'GET' ? 'get' : 'unknown');
    const version = match?.[2] ?? '';
    const body = chunks.length ? JSON.parse(Buffer.concat(chunks).toString()) : {};
    state.calls.push({ op, version, alg: body.alg, authorized });
    if (state.mode === 'down') return send(503, { error: { code: 'ServiceUnavailable', message: 'The vault is unavailable.' } });
    if (state.mode === 'forbidden') {
      return send(403, { error: { code: 'Forbidden', message: 'Caller is not authorized to perform action on resource.' } });
    }
    const pair = keys.get(version);
    if (!match || !pair) return send(404, { error: { code: 'KeyNotFound', message: 'A key with (name/id) was not found.' } });
    const kid = `${vault.url}/keys/${match[1]}/${version}`;
    if (op === 'get') {
      const jwk = pair.publicKey.export({ format: 'jwk' });
      return send(200, {
        key: { kid, kty: 'RSA', key_ops: ['wrapKey', 'unwrapKey'], n: jwk.n, e: jwk.e },
        attributes: { enabled: true, created: 1700000000, updated: 1700000000, recoveryLevel: 'Recoverable' },
      });
    }
    if (body.alg !== 'RSA-OAEP-256') return send(400, { error: { code: 'BadParameter', message: 'Unsupported algorithm.' } });
    const value = Buffer.from(body.value, 'base64url');
    const oaep = { padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' };
    if (op === 'wrapkey') {
      if (state.wrapsLeft !== undefined && state.wrapsLeft-- <= 0) {
        return send(503, { error: { code: 'ServiceUnavailable', message: 'The vault is unavailable.' } });
      }
      return send(200, { kid, value: crypto.publicEncrypt({ key: pair.publicKey, ...oaep }, value).toString('base64url') });
    }
    try {
      return send(200, { kid, value: crypto.privateDecrypt({ key: pair.privateKey, ...oaep }, value).toString('base64url') });
    } catch {
      return send(400, { error: { code: 'BadParameter', message: 'Decryption failed.' } });
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const vault = {
    url: `https://127.0.0.1:${(server.address() as AddressInfo).port}`,
    keyId: (version = versions[0]!) => `${vault.url}/keys/preview-gate/${version}`,
    state,
    /** The options the real SDK client needs to talk to this vault: trust its certificate, a test credential. */
    options: {
      credential: { getToken: async () => ({ token: TOKEN, expiresOnTimestamp: Date.now() + 3600_000 }) },
      clientOptions: { tlsOptions: { ca: cert.toString() }, disableChallengeResourceVerification: true },
      timeoutMs: 5000,
    } satisfies AzureKeyOptions,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
  return vault;
}
