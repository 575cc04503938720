// A Travis-style upload token for the container test: node test/container/token.mjs <secret> <owner/repo> <pr>
import { SignJWT } from 'jose';

const [secret, slug, pr] = process.argv.slice(2);
const token = await new SignJWT({ slug, 'pull-request': Number(pr) })
  .setProtectedHeader({ alg: 'HS256' })
  .setIssuer('Travis CI, GmbH')
  .setExpirationTime('10m')
  .sign(Buffer.from(secret));
process.stdout.write(token);
