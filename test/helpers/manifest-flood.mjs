// Sends digest-upload manifests as the CLI does (again after Retry-After while the server answers 503), from a
// process of its own: a test that measures the server's event loop must not have the senders on it (undici's copy
// of each 2 MB body and its GC ran on the server's thread when they shared the test's process).
// Usage: node manifest-flood.mjs '{"url": "...", "bodyFile": "...", "posts": [{"path": "/create-build/…/manifest", "token": "…"}]}'
// Prints the statuses, in the order of `posts`, as JSON.
import fs from 'node:fs';

const { url, bodyFile, posts } = JSON.parse(process.argv[2]);
const body = fs.readFileSync(bodyFile);

async function send({ path, token }) {
  for (;;) {
    const res = await fetch(url + path, {
      method: 'POST',
      headers: { authorization: `Token ${token}`, 'content-type': 'application/json', 'content-encoding': 'gzip' },
      body,
    });
    const text = await res.text();
    if (res.status !== 503) {
      if (res.status !== 200) process.stderr.write(`${path}: ${res.status} ${text.slice(0, 300)}\n`);
      return res.status;
    }
    await new Promise((resolve) => setTimeout(resolve, Number(res.headers.get('retry-after')) * 1000));
  }
}

process.stdout.write(JSON.stringify(await Promise.all(posts.map(send))));
