import http from 'node:http';
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWTPayload } from 'jose';
import nock from 'nock';
import { commitsOf, githubFor, OWNER, REPO } from './helpers/github.js';
import { sha, startTestServer, type TestServer } from './helpers/server.js';
import { siteTarball } from './helpers/tarballs.js';

/** A local OIDC issuer: serves its JWKS like token.actions.githubusercontent.com does. */
let issuer: http.Server;
let issuerUrl: string;
let key: CryptoKey;
let strangerKey: CryptoKey;
let server: TestServer;
const AUDIENCE = 'https://previews-upload.test';
const SHA = sha('e5');

beforeAll(async () => {
  nock.disableNetConnect();
  nock.enableNetConnect('127.0.0.1');
  const pair = await generateKeyPair('RS256');
  key = pair.privateKey;
  strangerKey = (await generateKeyPair('RS256')).privateKey;
  const jwk = { ...(await exportJWK(pair.publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' };
  issuer = http.createServer((req, res) => {
    if (req.url === '/.well-known/jwks') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [jwk] }));
    } else res.writeHead(404).end();
  });
  await new Promise<void>((r) => issuer.listen(0, '127.0.0.1', r));
  issuerUrl = `http://127.0.0.1:${(issuer.address() as { port: number }).port}`;
  server = await startTestServer({ OIDC_ISSUER: issuerUrl, PUBLIC_URL: AUDIENCE });
});
afterAll(async () => {
  await server.close();
  await new Promise((r) => issuer.close(r));
});
afterEach(() => nock.cleanAll());

function oidcToken(claims: JWTPayload = {}, options: { signWith?: CryptoKey; expiresIn?: string | number } = {}) {
  return new SignJWT({
    repository: `${OWNER}/${REPO}`,
    repository_id: '7001',
    event_name: 'pull_request',
    ref: 'refs/pull/50/merge',
    ...claims,
  })
    .setProtectedHeader({ alg: 'RS256', kid: 'k1' })
    .setIssuer(String(claims.iss ?? issuerUrl))
    .setAudience(String(claims.aud ?? AUDIENCE))
    .setIssuedAt()
    .setExpirationTime(options.expiresIn ?? '5m')
    .sign(options.signWith ?? key);
}

async function refused(token: string, message: RegExp) {
  const before = server.buildsTree();
  const res = await server.upload(50, SHA, siteTarball(), { token });
  expect(res.status).toBe(403);
  expect((await res.json()).error).toMatch(message);
  expect(server.buildsTree()).toEqual(before);
}

test('a GitHub Actions OIDC token of a pull_request run uploads without any secret', async () => {
  const pr = { number: 50, commits: [SHA], labels: ['safe for preview'] };
  githubFor(pr);
  commitsOf(pr);
  const res = await server.upload(50, SHA, siteTarball('oidc'), { token: await oidcToken() });
  expect(res.status).toBe(201);
});

test('wrong issuer → 403', async () => refused(await oidcToken({ iss: 'https://evil.example' }), /"iss" claim/));
test('wrong audience → 403', async () => refused(await oidcToken({ aud: 'https://someone-else.example' }), /"aud" claim/));
test('expired → 403', async () => refused(await oidcToken({}, { expiresIn: Math.floor(Date.now() / 1000) - 60 }), /expired/));
test('signed by a key not in the JWKS → 403', async () => refused(await oidcToken({}, { signWith: strangerKey }), /signature/));
test('a pull_request_target run → 403', async () => refused(await oidcToken({ event_name: 'pull_request_target' }), /pull_request_target/));
test('the merge ref of another PR → 403', async () => refused(await oidcToken({ ref: 'refs/pull/51/merge' }), /refs\/pull\/51\/merge/));
test('a repository the app is not installed on → 403', async () => refused(await oidcToken({ repository: 'stranger/repo', repository_id: 424242 }), /not installed/));

test('OIDC_ISSUER written with a trailing slash accepts the same tokens', async () => {
  const slashed = await startTestServer({ OIDC_ISSUER: `${issuerUrl}/`, PUBLIC_URL: AUDIENCE });
  try {
    const pr = { number: 50, commits: [SHA], labels: ['safe for preview'] };
    githubFor(pr);
    commitsOf(pr);
    const res = await slashed.upload(50, SHA, siteTarball('slash'), { token: await oidcToken() });
    expect(res.status).toBe(201);
  } finally {
    await slashed.close();
  }
});

test("a token whose key set cannot be fetched (the issuer answers 500) → 503, so CI retries", async () => {
  const broken = http.createServer((_req, res) => res.writeHead(500).end('oops'));
  await new Promise<void>((r) => broken.listen(0, '127.0.0.1', r));
  const brokenUrl = `http://127.0.0.1:${(broken.address() as { port: number }).port}`;
  const other = await startTestServer({ OIDC_ISSUER: brokenUrl, PUBLIC_URL: AUDIENCE });
  try {
    const token = await oidcToken({ iss: brokenUrl });
    const res = await other.upload(50, SHA, siteTarball(), { token });
    expect(res.status).toBe(503);
    expect((await res.json()).error).toMatch(/key set could not be fetched/);
  } finally {
    await other.close();
    await new Promise((r) => broken.close(r));
  }
});
