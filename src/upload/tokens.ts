import { createRemoteJWKSet, decodeJwt, decodeProtectedHeader, errors, jwtVerify } from 'jose';
import { forbidden, HttpError, unauthorized, unavailable } from '../errors.js';

export const TRAVIS_ISSUER = 'Travis CI, GmbH';
const MAX_TRAVIS_TOKEN_SECONDS = 24 * 3600;

/** `Authorization: Token <jwt>` or `Bearer <jwt>` → the JWT; 401 when missing or malformed. */
export function tokenFromHeader(header: string | undefined): string {
  if (!header) throw unauthorized('The Authorization header is missing; send "Authorization: Token <jwt>".');
  // RFC 7235: the scheme is case-insensitive (`token`, `TOKEN`, `bearer` all count).
  const match = /^(?:Token|Bearer) +([A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*)$/i.exec(header.trim());
  if (!match) throw unauthorized('The Authorization header is malformed; send "Authorization: Token <jwt>".');
  return match[1]!;
}

/** The repository a Travis-style token claims to be for, read before verification to find its secret. */
export function claimedSlug(token: string): string {
  let slug: unknown;
  try {
    decodeProtectedHeader(token);
    slug = decodeJwt(token).slug;
  } catch {
    throw forbidden('The token is not a valid JWT.');
  }
  if (typeof slug !== 'string' || !/^[A-Za-z0-9_.-]+\/[A-Za-z0-9_.-]+$/.test(slug)) {
    throw forbidden('The token has no valid "slug" claim (owner/repo).');
  }
  return slug;
}

/**
 * Verifies a Travis-style upload token: HS256 only (alg none and algorithm confusion are refused), issued
 * by Travis, not expired, and for exactly this repository and pull request.
 */
export async function verifyTravisToken(token: string, secret: Uint8Array, expected: { slug: string; pr: number }): Promise<void> {
  let payload;
  try {
    ({ payload } = await jwtVerify(token, secret, {
      algorithms: ['HS256'],
      issuer: TRAVIS_ISSUER,
      requiredClaims: ['exp', 'slug', 'pull-request'],
    }));
  } catch (err) {
    throw tokenError(err);
  }
  if (String(payload.slug).toLowerCase() !== expected.slug.toLowerCase()) {
    throw forbidden(`The token is for ${String(payload.slug)}, not ${expected.slug}.`);
  }
  // Travis signs for 90 minutes; a token good for longer than a day is a leaked key's best friend.
  if (typeof payload.exp === 'number' && payload.exp - Date.now() / 1000 > MAX_TRAVIS_TOKEN_SECONDS) {
    throw forbidden('The token expires more than 24 hours from now; sign upload tokens for at most 24 hours.');
  }
  const claimedPr = payload['pull-request'];
  if ((typeof claimedPr !== 'number' && typeof claimedPr !== 'string') || String(claimedPr) !== String(expected.pr)) {
    throw forbidden(`The token is for pull request ${String(payload['pull-request'])}, not #${expected.pr}.`);
  }
}

function tokenError(err: unknown): HttpError {
  if (err instanceof errors.JWTExpired) return forbidden('The token has expired.');
  if (err instanceof errors.JWTClaimValidationFailed) {
    return forbidden(`The token's "${err.claim}" claim is missing or not valid.`);
  }
  if (err instanceof errors.JOSEAlgNotAllowed) return forbidden('The token is signed with an algorithm that is not allowed (HS256 for upload secrets, RS256 for OIDC).');
  if (err instanceof errors.JWSSignatureVerificationFailed) {
    return forbidden("The token's signature is not valid.");
  }
  return forbidden('The token is not a valid JWT.');
}

/** The token's algorithm, read before verification to pick the one verifier allowed for it. */
export function tokenAlgorithm(token: string): string {
  try {
    return String(decodeProtectedHeader(token).alg);
  } catch {
    throw forbidden('The token is not a valid JWT.');
  }
}

export interface OidcClaims {
  repository: string;
  repositoryId?: number;
  repositoryOwnerId?: number;
}

const jwksCache = new Map<string, ReturnType<typeof createRemoteJWKSet>>();

/** The issuer's key set, fetched on first use and cached (jose refreshes it on an unknown `kid`). */
function issuerKeys(issuer: string) {
  let keys = jwksCache.get(issuer);
  if (!keys) {
    keys = createRemoteJWKSet(new URL(`${issuer}/.well-known/jwks`), { timeoutDuration: 5000, cooldownDuration: 30_000 });
    jwksCache.set(issuer, keys);
  }
  return keys;
}

/**
 * Verifies a GitHub Actions OIDC token: RS256 only, signed by a key of the issuer's JWKS, for our audience,
 * from a `pull_request` run of the merge ref of exactly this PR. Returns the repository it was issued to.
 */
export async function verifyOidcToken(token: string, expected: { issuer: string; audience: string; pr: number }): Promise<OidcClaims> {
  let payload;
  try {
    const issuer = expected.issuer.replace(/\/+$/, '');
    ({ payload } = await jwtVerify(token, issuerKeys(issuer), {
      algorithms: ['RS256'],
      // Compared without a trailing slash on either side: OIDC_ISSUER may be written with one.
      issuer: [issuer, `${issuer}/`],
      audience: expected.audience,
      requiredClaims: ['exp', 'repository', 'event_name', 'ref'],
    }));
  } catch (err) {
    if (err instanceof errors.JWKSNoMatchingKey) throw forbidden("The token is not signed by a key of the issuer's key set.");
    if (isKeySetUnavailable(err)) throw unavailable("The OIDC issuer's key set could not be fetched; retry later.");
    throw tokenError(err);
  }
  if (payload.event_name !== 'pull_request') {
    throw forbidden(`The token is from a "${String(payload.event_name)}" run; only "pull_request" runs may upload.`);
  }
  if (payload.ref !== `refs/pull/${expected.pr}/merge`) {
    throw forbidden(`The token is for ${String(payload.ref)}, not refs/pull/${expected.pr}/merge.`);
  }
  const idClaim = (value: unknown) => (value === undefined ? undefined : Number(value));
  return { repository: String(payload.repository), repositoryId: idClaim(payload.repository_id), repositoryOwnerId: idClaim(payload.repository_owner_id) };
}

/** The issuer's key set could not be had (timeout, refused, non-200, not a key set): the client should retry. */
function isKeySetUnavailable(err: unknown): boolean {
  if (err instanceof errors.JWKSTimeout || err instanceof errors.JWKSInvalid) return true;
  if ((err as Error).name === 'TypeError') return true; // fetch failed
  return err instanceof errors.JOSEError && (err as { code?: string }).code === 'ERR_JOSE_GENERIC' && /JSON Web Key Set/i.test((err as Error).message);
}
