import { PassThrough } from 'node:stream';
import nock from 'nock';
import { runCli } from '../src/cli.js';
import { users } from '../src/db/tables.js';
import { commitsOf, githubFor, type FakePr } from './helpers/github.js';
import { serverPerTest, sha, type TestServer, dataEnv } from './helpers/server.js';
import { siteTarball } from './helpers/tarballs.js';
import { feedback, installationToken, pullRequestEvent, sendWebhook, settingsFile } from './helpers/webhooks.js';

let server: TestServer;

serverPerTest((s) => (server = s));

async function upload(pr: FakePr, commit: string, marker: string) {
  githubFor(pr);
  commitsOf(pr);
  const res = await server.upload(pr.number, commit, siteTarball(marker));
  await server.previews.settled();
  return res;
}

async function usage(args: string[] = []) {
  const out: string[] = [];
  const stdout = new PassThrough().on('data', (c) => out.push(String(c)));
  const code = await runCli(['usage', ...args], { stdin: new PassThrough(), stdout, stderr: new PassThrough(), env: dataEnv(server) });
  return { code, stdout: out.join('') };
}

test('usage counts per account what is stored now and what was uploaded this month, also after cleanup', async () => {
  feedback();
  const alice = { id: 4242, login: 'alice' };
  const bob = { id: 4343, login: 'bob' };
  expect((await upload({ number: 90, author: alice, commits: [sha('a1')] }, sha('a1'), 'one')).status).toBe(202);
  expect((await upload({ number: 90, author: alice, commits: [sha('a1'), sha('a2')] }, sha('a2'), 'two')).status).toBe(202);
  expect((await upload({ number: 91, author: bob, commits: [sha('b1')] }, sha('b1'), 'three')).status).toBe(202);

  const { code, stdout } = await usage(['--json']);
  expect(code).toBe(0);
  const month = new Date().toISOString().slice(0, 7);
  const report = JSON.parse(stdout);
  expect(report).toEqual({
    month,
    accounts: [
      {
        account: 'octo-org',
        githubId: null,
        repositories: 1,
        builds: 3,
        bytesLogical: siteTarballBytes('one') + siteTarballBytes('two') + siteTarballBytes('three'),
        // The three builds share one 404.html: it is stored once.
        bytesStored: siteTarballBytes('one') + siteTarballBytes('two') + siteTarballBytes('three') - 2 * NOT_FOUND_BYTES,
        uploadsThisMonth: 3,
        bytesUploadedThisMonth: expect.any(Number),
        authorsThisMonth: 2,
      },
    ],
  });
  expect(report.accounts[0].bytesUploadedThisMonth).toBe(report.accounts[0].bytesLogical);
  // Authors are users keyed by GitHub's numeric id, not by login.
  expect(await server.core.db.orm.select({ provider: users.provider, providerId: users.providerId }).from(users)).toEqual(
    expect.arrayContaining([
      { provider: 'github', providerId: '4242' },
      { provider: 'github', providerId: '4343' },
    ]),
  );

  // PR 90 closes and its builds are cleaned up: stored bytes drop, this month's uploads stay billed.
  installationToken();
  settingsFile();
  await sendWebhook(server.url, 'pull_request', pullRequestEvent('closed', { number: 90, state: 'closed', author: alice, head: sha('a2') }));
  await server.previews.settled();
  githubFor({ number: 90, state: 'closed', author: alice, commits: [sha('a2')] });
  // The files only PR 90's builds used are removed with them; the shared 404.html stays for PR 91's build.
  const freedBytes = siteTarballBytes('one') + siteTarballBytes('two') - 2 * NOT_FOUND_BYTES;
  expect(await server.previews.cleanup(new Date(Date.now() + 49 * 3600_000))).toEqual({
    removedPrs: 1,
    skipped: 0,
    why: [],
    freed: { objects: 4, bytes: freedBytes },
  });
  const after = JSON.parse((await usage(['--json'])).stdout).accounts[0];
  expect(after).toMatchObject({ builds: 1, uploadsThisMonth: 3, authorsThisMonth: 2 });
  expect(after.bytesLogical).toBe(siteTarballBytes('three'));
  expect(after.bytesStored).toBe(siteTarballBytes('three'));

  const table = await usage();
  expect(table.stdout.split('\n')[0]).toMatch(new RegExp(`^account\\s+repositories\\s+builds\\s+logical\\s+stored\\s+uploads ${month}\\s+uploaded ${month}\\s+authors$`));
  expect(table.stdout.split('\n')[1]).toMatch(/^octo-org\s+1\s+1\s+\d+ B\s+\d+ B\s+3\s+\d+ B\s+2$/);
});

const NOT_FOUND_BYTES = Buffer.byteLength('<h1>not here</h1>');

/** Uncompressed bytes of the files of `siteTarball(marker)`. */
function siteTarballBytes(marker: string): number {
  return Buffer.byteLength(`<!doctype html><title>${marker}</title><h1>${marker}</h1>`) + Buffer.byteLength(`console.log(${JSON.stringify(marker)});`) + Buffer.byteLength('<h1>not here</h1>');
}
