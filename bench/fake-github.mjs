// A local stand-in for the GitHub REST API (GHE-style /api/v3 paths), enough for uploads to succeed.
import http from 'node:http';

export async function startFakeGitHub({ labels = ['safe for preview'], host = '127.0.0.1', port = 0 } = {}) {
  const commits = new Map(); // pr → [sha]
  const prLabels = new Map(); // pr → [label], default `labels`
  let delayMs = 0; // every answer this late: api.github.com from a cloud VM answers in about 100 ms
  const server = http.createServer((req, res) => (delayMs ? setTimeout(() => answer(req, res), delayMs) : answer(req, res)));
  function answer(req, res) {
    const url = new URL(req.url, 'http://x');
    const p = url.pathname.replace(/^\/api\/v3/, '');
    const json = (status, body) => {
      res.writeHead(status, { 'content-type': 'application/json; charset=utf-8' });
      res.end(JSON.stringify(body));
    };
    req.resume();
    let m;
    if ((m = /^\/repos\/([^/]+)\/[^/]+\/installation$/.exec(p))) return json(200, { id: 1, account: { login: m[1], id: 1 } });
    if (/^\/app\/installations\/1\/access_tokens$/.test(p)) return json(201, { token: 'ghs_bench', expires_at: new Date(Date.now() + 3600e3).toISOString() });
    if (/\/contents\//.test(p)) return json(404, { message: 'Not Found' });
    if ((m = /^\/repos\/[^/]+\/[^/]+\/pulls\/(\d+)\/commits$/.exec(p))) return json(200, (commits.get(Number(m[1])) ?? []).map((sha) => ({ sha })));
    if ((m = /^\/repos\/[^/]+\/[^/]+\/pulls\/(\d+)$/.exec(p))) {
      return json(200, { number: Number(m[1]), state: 'open', user: { id: 7, login: 'bench' }, labels: (prLabels.get(Number(m[1])) ?? labels).map((name) => ({ name })), head: { sha: '0'.repeat(40) } });
    }
    if (req.method === 'GET' && /\/comments$/.test(p)) return json(200, []);
    if (req.method === 'POST' || req.method === 'PATCH') return json(201, { id: 1 });
    json(404, { message: `fake GitHub has no ${req.method} ${p}` });
  }
  await new Promise((r) => server.listen(port, host, r));
  return {
    host: `127.0.0.1:${server.address().port}`,
    addCommit: (pr, sha) => commits.set(pr, [...(commits.get(pr) ?? []), sha]),
    setLabels: (pr, names) => prLabels.set(pr, names),
    setDelay: (ms) => (delayMs = ms),
    close: () => new Promise((r) => server.close(r)),
  };
}
