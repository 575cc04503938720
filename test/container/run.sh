#!/usr/bin/env bash
# The container test (npm run test:container): the image built from this checkout and run with compose.yaml
# beside nginx, GitHub answered by a stand-in service. compose up → /health through nginx → a signed upload
# through nginx → the preview served → the app restarted → data still there; plus what an operator would trip
# on: the image's user and leftovers, the database's mode, what nginx can see, a root-owned bind mount.
set -euo pipefail
cd "$(dirname "$0")/../.."

step() { printf '\n== container test (%s): %s\n' "$(date +%T)" "$*"; }
fail() { echo "container test FAILED: $*" >&2; exit 1; }

# Podman and local base images (no registry is reachable here): ../shared/scripts/container-base.sh makes them.
if ! command -v podman >/dev/null 2>&1 || ! podman image exists docker.io/library/node:24-bookworm-slim 2>/dev/null; then
  base=""
  for candidate in "${CONTAINER_BASE_SCRIPT:-}" ../shared/scripts/container-base.sh ../../shared/scripts/container-base.sh /work/shared/scripts/container-base.sh; do
    if [ -n "$candidate" ] && [ -f "$candidate" ]; then base=$candidate; break; fi
  done
  [ -n "$base" ] || fail "podman with local base images is needed: run container-base.sh (set CONTAINER_BASE_SCRIPT to its path)"
  step "making the container engine and base images ($base)"
  NODE_VERSION=${NODE_VERSION:-24.21.0} NPM_VERSION=${NPM_VERSION:-11.19.1} bash "$base"
fi
export BUILDAH_FORMAT=docker

step "building the image"
podman build -q -t preview-gate . >/dev/null

work=$(mktemp -d)
project="pgtest$$"
free_port() { node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"; }
export HTTP_PORT=$(free_port) HTTPS_PORT=$(free_port) APP_PORT=$(free_port)
export COMMIT=$(printf 'c%.0s' $(seq 40)) SECOND_COMMIT=$(printf 'd%.0s' $(seq 40))
export PREVIEW_GATE_ENV_FILE="$work/env"
compose() { podman-compose -p "$project" -f compose.yaml -f test/container/compose.test.yaml "$@"; }
cleanup() {
  compose down -v >/dev/null 2>&1 || true
  rm -rf "$work"
  rm -f nginx/rendered.conf
}
trap cleanup EXIT

key=$(node -e "process.stdout.write(require('crypto').generateKeyPairSync('rsa',{modulusLength:2048}).privateKey.export({type:'pkcs1',format:'pem'}).replace(/\n/g,'\\\\n'))")
cat > "$PREVIEW_GATE_ENV_FILE" <<ENV
PUBLIC_URL=http://uploads.test
PREVIEW_DOMAIN=previews.test
APP_ID=1
PRIVATE_KEY=$key
WEBHOOK_SECRET=container-test
ENV

step "image: non-root, Node 24, no build leftovers"
[ "$(podman run --rm --no-healthcheck preview-gate id -u)" = 1000 ] || fail "the image does not run as uid 1000"
podman run --rm --no-healthcheck preview-gate node -v | grep -q '^v24\.' || fail "the image is not Node 24"
leftover=$(podman run --rm --no-healthcheck preview-gate du -sm node_modules/better-sqlite3 | cut -f1)
[ "$leftover" -le 5 ] || fail "better-sqlite3 takes $leftover MB in the image (build leftovers)"
podman run --rm --no-healthcheck preview-gate sh -c 'test ! -e .env && test ! -e .git && test ! -e test' || fail "the build context leaked files into the image"

step "the image's better-sqlite3 survives V8 freeing 200,000 statements (Node 24.19+, nodejs/node#65446)"
survived() { grep -q '^survived$' <<<"$1"; }
out=$(podman run --rm --no-healthcheck -v "$PWD/test/container/statement-churn.cjs:/app/statement-churn.cjs:ro" preview-gate node statement-churn.cjs 2>&1) || true
survived "$out" || fail "the image's SQLite addon aborted: $(tail -3 <<<"$out")"

step "an operator's npm ci of this checkout on Node 24 (toolchain stage): the addon is rebuilt when it would abort"
podman build -q --target toolchain -t preview-gate-toolchain . >/dev/null
mkdir -p "$work/checkout"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$work/checkout"
out=$(podman run --rm --user 0 -v "$work/checkout:/app" -w /app preview-gate-toolchain \
  sh -c 'npm ci --no-audit --no-fund 2>&1 | grep "preview-gate:"; node bin/sqlite-addon.mjs check && node test/container/statement-churn.cjs' 2>&1) || true
echo "$out"
survived "$out" || fail "after npm ci on Node 24 the SQLite addon aborted or was refused: $(tail -3 <<<"$out")"

step "a root-owned bind mount for /data: one line saying what to do"
mkdir -p "$work/rootowned"
if out=$(podman run --rm --no-healthcheck --env-file "$PREVIEW_GATE_ENV_FILE" -v "$work/rootowned:/data" preview-gate 2>&1); then fail "started on an unwritable /data"; fi
echo "$out" | grep -q 'chown -R 1000:1000' || fail "no chown advice for an unwritable /data: $out"
[ "$(echo "$out" | wc -l)" -eq 1 ] || fail "more than one line for an unwritable /data: $out"

step "rendering nginx's configuration with the image"
podman run --rm --no-healthcheck --env-file "$PREVIEW_GATE_ENV_FILE" preview-gate node bin/preview-gate.js nginx --upstream app:3000 --listen 80 > nginx/rendered.conf
grep -q 'server app:3000;' nginx/rendered.conf || fail "the rendered configuration does not name app:3000"

step "compose up"
compose up -d >/dev/null 2>&1
health() { curl -sf -H 'Host: uploads.test' "http://127.0.0.1:$HTTP_PORT/health" >/dev/null; }
for _ in $(seq 120); do health && break; sleep 0.5; done
health || { compose logs >&2 || true; fail "/health did not answer through nginx"; }

step "a signed upload through nginx, then the preview through nginx"
secret=$(head -c 32 /dev/urandom | base64 | tr -d '/+=' | head -c 40)
printf '%s' "$secret" | podman exec -i "${project}_app_1" node bin/preview-gate.js secret set bench-org/docs upload-key >/dev/null
upload() { # <commit> <marker>
  mkdir -p "$work/site-$1" && printf '<h1>%s</h1>' "$2" > "$work/site-$1/index.html"
  tar -czf "$work/site-$1.tgz" -C "$work/site-$1" .
  curl -s -o "$work/answer" -w '%{http_code}' -H 'Host: uploads.test' -H "Authorization: Token $(node test/container/token.mjs "$secret" bench-org/docs 1)" \
    --data-binary "@$work/site-$1.tgz" "http://127.0.0.1:$HTTP_PORT/create-build/1/$1"
}
status=$(upload "$COMMIT" 'from a container')
[ "$status" = 201 ] || { compose logs app 2>&1 | tail -20 >&2 || true; fail "upload answered $status: $(cat "$work/answer")"; }
grep -q "\"url\":\"http://pr1-${COMMIT:0:7}--docs.previews.test/\"" "$work/answer" || fail "unexpected answer $(cat "$work/answer")"
preview() { curl -sf -H "Host: pr1-${1:0:7}--docs.previews.test" "http://127.0.0.1:$HTTP_PORT/"; }
[ "$(preview "$COMMIT")" = '<h1>from a container</h1>' ] || fail "the preview was not served"

step "what lands on disk, and what nginx can see"
# builds/ is a volume of its own: the content-addressed objects live inside it (hard links cannot cross mounts).
podman exec "${project}_app_1" sh -c 'test -n "$(find /data/builds/.objects -type f)"' || fail "no content-addressed object in /data/builds/.objects"
[ "$(podman exec "${project}_app_1" stat -c '%a %u' /data/preview-gate.sqlite)" = '600 1000' ] || fail "the SQLite file is not 0600 for uid 1000"
podman exec "${project}_nginx_1" sh -c 'test ! -e /data/master.key && test ! -e /data/preview-gate.sqlite' || fail "nginx can see the key or the database"

step "containers recreated (compose down, up; volumes kept): the data is still there and the secret still decrypts"
compose down >/dev/null 2>&1
compose up -d >/dev/null 2>&1
for _ in $(seq 120); do health && break; sleep 0.5; done
health || fail "/health did not come back after the restart"
[ "$(preview "$COMMIT")" = '<h1>from a container</h1>' ] || fail "the preview is gone after the restart"
status=$(upload "$SECOND_COMMIT" 'after the restart')
[ "$status" = 201 ] || fail "upload after the restart answered $status: $(cat "$work/answer")"
[ "$(preview "$SECOND_COMMIT")" = '<h1>after the restart</h1>' ] || fail "the second preview was not served"

step "passed"
