// The container's health check (Dockerfile HEALTHCHECK, compose.yaml healthcheck): GET /health of this container's
// server at HOST/PORT; exit 0 when it answers 2xx.
const h = process.env.HOST;
const host = !h || h === '0.0.0.0' || h === '::' ? '127.0.0.1' : h.includes(':') ? `[${h}]` : h;
fetch(`http://${host}:${process.env.PORT || 3000}/health`, { signal: AbortSignal.timeout(4000) }).then(
  (res) => process.exit(res.ok ? 0 : 1),
  () => process.exit(1),
);
