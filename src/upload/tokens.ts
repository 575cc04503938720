import { decodeJwt, decodeProtectedHeader, errors, jwtVerify } from 'jose';
import { forbidden, HttpError, unauthorized } from '../errors.js';

export const TRAVIS_ISSUER = 'Travis CI, GmbH';

/** `Authorization: Token <jwt>` or `Bearer <jwt>` → the JWT; 401 when missing or malformed. */
export function tokenFromHeader(header: string | undefined): string {
  if (!header) throw unauthorized('The Authorization header is missing; send "Authorization: Token <jwt>".');
  const match = /^(?:Token|Bearer) +([A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*)$/.exec(header.trim());
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
  if (String(payload['pull-request']) !== String(expected.pr)) {
    throw forbidden(`The token is for pull request ${String(payload['pull-request'])}, not #${expected.pr}.`);
  }
}

function tokenError(err: unknown): HttpError {
  if (err instanceof errors.JWTExpired) return forbidden('The token has expired.');
  if (err instanceof errors.JWTClaimValidationFailed) {
    return forbidden(`The token's "${err.claim}" claim is missing or not valid.`);
  }
  if (err instanceof errors.JOSEAlgNotAllowed) return forbidden('The token must be signed with HS256.');
  if (err instanceof errors.JWSSignatureVerificationFailed) {
    return forbidden("The token's signature does not match the repository's upload secret.");
  }
  return forbidden('The token is not a valid JWT.');
}
