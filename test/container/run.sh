#!/usr/bin/env bash
# The container test (npm run test:container): README "Deploying"'s compose commands, read from the README's
# blocks marked <!-- deploy:NAME --> and run as written in a copy of this checkout, with a GitHub stand-in service.
# .env from .env.example → certificates → build, nginx rendered with the image, compose up → the setup link →
# the credentials the setup flow writes → restart app → /health, a signed upload and its preview through nginx
# (TLS) → the upgrade (a rebuilt image, only the app recreated) → nginx still answers → containers recreated,
# data kept → the move to the postgres profile (deploy:postgres-move: migrate-to-postgres, rows and builds carried
# over, an upload on PostgreSQL, restart app, deploy:postgres-backup's pg_dump) → a first start on an empty pgdata.
# Plus what an operator would trip on: the image's user and leftovers, the database's mode, what nginx
# can see, a root-owned bind mount, a relative DATA_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
started=$(date +%s)

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
# The README's build as podman does it by default (OCI format, which drops the image's HEALTHCHECK): compose.yaml's
# own healthcheck must cover it.
unset BUILDAH_FORMAT

work=$(mktemp -d)
checkout="$work/checkout"
project="pgtest$$"
free_port() { node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"; }
export HTTP_PORT=$(free_port) HTTPS_PORT=$(free_port) APP_PORT=$(free_port)
export COMMIT=$(printf 'c%.0s' $(seq 40)) SECOND_COMMIT=$(printf 'd%.0s' $(seq 40)) THIRD_COMMIT=$(printf 'e%.0s' $(seq 40)) FOURTH_COMMIT=$(printf 'f%.0s' $(seq 40))
export project checkout
compose() { (cd "$checkout" && docker compose "$@"); }
cleanup() {
  if [ -n "${postgres_build:-}" ]; then wait "$postgres_build" 2>/dev/null || true; fi
  compose down -v >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# The README's commands say `docker`; the docker engine does not run here, so `docker compose` is podman-compose
# (with this test's project name and its GitHub stand-in) and `docker` is podman. `git pull` stands for a new
# release: a changed file that lands in the image.
docker() {
  if [ "$1" = compose ]; then
    shift
    local sub=$1
    if [ "$sub" = exec ]; then compose_exec "${@:2}"; return; fi
    if { [ "$sub" = build ] || [ "$sub" = up ]; } && ! names_a_service "${@:2}"; then set -- "$@" $(active_services); fi
    podman-compose -p "$project" -f compose.yaml -f test/container/compose.test.yaml "$@"
  else podman "$@"; fi
}
git() {
  if [ "$1" = pull ]; then echo "// a new release" >> bin/healthcheck.js; else command git "$@"; fi
}
# podman-compose 1.0.3 (Debian 12's) ignores `profiles:`: it would build and start the postgres service on every
# `up`. docker compose builds and starts a service that has profiles only when COMPOSE_PROFILES (the shell, else
# .env) names one of them: for `build` and `up` without a service named, the stand-in names the services docker
# compose would. (Profiles written inline, `profiles: [a, b]`, as compose.yaml does.)
# podman-compose 1.0.3 writes its own lines (its podman command, with the service's environment) to stdout, where
# `docker compose exec -T postgres pg_dump … > file` writes the dump: `exec` [-T] <service> <command…> is podman's.
compose_exec() {
  [ "$1" = -T ] && shift
  podman exec -i "${project}_$1_1" "${@:2}"
}
names_a_service() { local arg; for arg; do [[ $arg == -* ]] || return 0; done; return 1; }
active_services() {
  local profiles=${COMPOSE_PROFILES-$(sed -n 's/^COMPOSE_PROFILES=//p' "$checkout/.env" | tail -1)}
  cat "$checkout/compose.yaml" "$checkout/test/container/compose.test.yaml" | awk -v active=",$profiles," '
    /^services:/ { in_services = 1; next }
    /^[^ #]/ { in_services = 0 }
    in_services && /^  [A-Za-z0-9_.-]+:/ { name = $1; sub(/:$/, "", name); if (!(name in seen)) { seen[name] = 1; names[++n] = name }; next }
    in_services && /^    profiles:/ {
      list = $0; gsub(/^ *profiles: *\[|\].*$| /, "", list); count = split(list, wanted, ",")
      on = 0; for (i = 1; i <= count; i++) if (index(active, "," wanted[i] ",")) on = 1
      if (!on) off[name] = 1
    }
    END { for (i = 1; i <= n; i++) if (!(names[i] in off)) print names[i] }'
}
export -f docker git compose_exec names_a_service active_services

# The fenced block after <!-- deploy:NAME --> in README.md.
readme_block() {
  awk -v marker="<!-- deploy:$1 -->" '
    $0 == marker { found = 1; next }
    found == 1 && /^```sh$/ { found = 2; next }
    found == 2 && /^```$/ { exit }
    found == 2 { print }' README.md
}
run_block() { # <name> [sed expression applied to the block]
  local block
  block=$(readme_block "$1" | sed -e "${2:-}")
  [ -n "$block" ] || fail "README.md has no <!-- deploy:$1 --> block"
  sed 's/^/    $ /' <<<"$block"
  (cd "$checkout" && bash -euo pipefail -c "$block") >>"$work/commands.log" 2>&1 \
    || { tail -20 "$work/commands.log" >&2; fail "README block deploy:$1 failed"; }
}

step "a copy of this checkout (tracked and new files), as an operator's clone"
mkdir -p "$checkout"
command git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do [ -e "$f" ] && [ "$f" != node_modules ] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf - | tar -xf - -C "$checkout"
# The postgres profile's image is built now, beside the app's (its apt install is mostly waiting on downloads), as
# compose would build it: deploy:postgres-move's `up -d postgres` then finds it.
podman build -q -t preview-gate-postgres "$checkout/postgres" > "$work/postgres-build.log" 2>&1 &
postgres_build=$!

step "README deploy:env, then .env edited as an operator would (own domains, the GitHub stand-in)"
run_block env
set_env() { sed -i "/^#\? *$1=/d" "$checkout/.env"; printf '%s=%s\n' "$1" "$2" >> "$checkout/.env"; }
set_env PUBLIC_URL https://uploads.test
set_env PREVIEW_DOMAIN previews.test
set_env GHE_HOST github:8080
set_env GHE_PROTOCOL http
set_env GITHUB_THROTTLE false
set_env RECONCILE_INTERVAL_MINUTES 0

step "README deploy:certs (a self-signed certificate, for the test's domains)"
run_block certs 's/uploads\.example\.com/uploads.test/g; s/previews\.example\.net/previews.test/g'

step "README deploy:compose: build, nginx rendered with the image, up"
run_block compose
rendered="$checkout/nginx/rendered.conf"
head -1 "$rendered" | grep -q '^# preview-gate: nginx server blocks' || fail "nginx/rendered.conf does not start with the configuration: $(head -3 "$rendered")"
grep -q 'ssl_certificate /etc/nginx/certs/fullchain.pem;' "$rendered" || fail "the rendered configuration has no TLS"
grep -q 'proxy_pass http://$preview_gate_node;' "$rendered" || fail "the rendered configuration does not look the app up again"
grep -q 'root /data/builds/' "$rendered" || fail "the rendered configuration does not serve /data/builds"

https() { # <host> <path> [curl options...]: through nginx's TLS port
  local host=$1 path=$2; shift 2
  curl -sk --max-time 20 --resolve "$host:$HTTPS_PORT:127.0.0.1" "$@" "https://$host:$HTTPS_PORT$path"
}
# (a request nginx sends to an address the app no longer has waits for the connect timeout: not 60 s each here)
health() { https uploads.test /health -f -o /dev/null --max-time 5; }
wait_for_health() { # <what>
  for _ in $(seq 120); do health && return 0; sleep 0.5; done
  compose logs >&2 || true
  fail "/health did not answer through nginx $1"
}
wait_for_health "after compose up"
app_address() { podman inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "${project}_app_1"; }

step "the setup flow in a container: the log gives the token link, and only it opens the pages from the host"
logs=$(compose logs app 2>&1)
link=$(grep -o 'https://uploads.test/probot?setup_token=[A-Za-z0-9_-]*' <<<"$logs" | head -1)
[ -n "$link" ] || fail "no setup link in the app's log: $logs"
! grep -q 'on this machine' <<<"$logs" || fail "the log says to open the setup pages on this machine, which answer 403 from the host"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$APP_PORT/probot")" = 403 ] || fail "/probot without the token answered from the host"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$APP_PORT/probot?${link#*\?}")" = 200 ] || fail "the setup link does not open from the host"
[ "$(https uploads.test "/probot?${link#*\?}" -o /dev/null -w '%{http_code}')" = 200 ] || fail "the setup link does not open through nginx"

step "the app's health check (compose.yaml's: the image was built in OCI format)"
podman healthcheck run "${project}_app_1" >/dev/null || fail "the app container has no working health check"

step "the credentials the setup flow writes to /data/app.env, then README deploy:after-setup"
key=$(node -e "process.stdout.write(JSON.stringify(require('crypto').generateKeyPairSync('rsa',{modulusLength:2048}).privateKey.export({type:'pkcs1',format:'pem'})))")
printf 'APP_ID="1"\nPRIVATE_KEY=%s\nWEBHOOK_SECRET="container-test"\n' "$key" \
  | podman exec -i "${project}_app_1" sh -c 'umask 077 && cat > /data/app.env'
before=$(app_address)
run_block after-setup
wait_for_health "after restart app"
echo "    app address: $before before the restart, $(app_address) after"
https uploads.test /health | grep -q '"github":"configured"' || fail "the restarted app did not read /data/app.env: $(https uploads.test /health)"

step "a signed upload through nginx, then the preview through nginx"
secret=$(head -c 32 /dev/urandom | base64 | tr -d '/+=' | head -c 40)
printf '%s' "$secret" | podman exec -i "${project}_app_1" node bin/preview-gate.js secret set bench-org/docs upload-key >/dev/null
upload() { # <commit> <marker>
  mkdir -p "$work/site-$1" && printf '<h1>%s</h1>' "$2" > "$work/site-$1/index.html"
  tar -czf "$work/site-$1.tgz" -C "$work/site-$1" .
  https uploads.test "/create-build/1/$1" -o "$work/answer" -w '%{http_code}' \
    -H "Authorization: Token $(node test/container/token.mjs "$secret" bench-org/docs 1)" --data-binary "@$work/site-$1.tgz"
}
preview() { https "pr1-${1:0:7}--docs.previews.test" / -f; }
status=$(upload "$COMMIT" 'from a container')
[ "$status" = 201 ] || { compose logs app 2>&1 | tail -20 >&2 || true; fail "upload answered $status: $(cat "$work/answer")"; }
grep -q "\"url\":\"https://pr1-${COMMIT:0:7}--docs.previews.test/\"" "$work/answer" || fail "unexpected answer $(cat "$work/answer")"
[ "$(preview "$COMMIT")" = '<h1>from a container</h1>' ] || fail "the preview was not served"

step "what lands on disk, and what nginx can see"
# builds/ is a volume of its own: the content-addressed objects live inside it (hard links cannot cross mounts).
podman exec "${project}_app_1" sh -c 'test -n "$(find /data/builds/.objects -type f)"' || fail "no content-addressed object in /data/builds/.objects"
[ "$(podman exec "${project}_app_1" stat -c '%a %u' /data/preview-gate.sqlite)" = '600 1000' ] || fail "the SQLite file is not 0600 for uid 1000"
podman exec "${project}_nginx_1" sh -c 'test ! -e /data/master.key && test ! -e /data/preview-gate.sqlite' || fail "nginx can see the key or the database"

step "README deploy:upgrade: a rebuilt image, only the app recreated, nginx answering throughout"
app_before=$(podman inspect -f '{{.Id}} {{.Image}}' "${project}_app_1")
nginx_before=$(podman inspect -f '{{.Id}}' "${project}_nginx_1")
before=$(app_address)
run_block upgrade
app_after=$(podman inspect -f '{{.Id}} {{.Image}}' "${project}_app_1")
[ "${app_after% *}" != "${app_before% *}" ] || fail "the upgrade did not recreate the app container"
[ "${app_after#* }" != "${app_before#* }" ] || fail "the upgrade did not run a new image"
[ "$(podman inspect -f '{{.Id}}' "${project}_nginx_1")" = "$nginx_before" ] || fail "the upgrade recreated nginx too"
podman exec "${project}_app_1" test -s /data/backup-before-upgrade.sqlite || fail "no backup before the upgrade"
wait_for_health "after the upgrade"
echo "    app address: $before before the upgrade, $(app_address) after"
[ "$(preview "$COMMIT")" = '<h1>from a container</h1>' ] || fail "the preview is gone after the upgrade"
status=$(upload "$SECOND_COMMIT" 'after the upgrade')
[ "$status" = 201 ] || fail "upload after the upgrade answered $status: $(cat "$work/answer")"
[ "$(preview "$SECOND_COMMIT")" = '<h1>after the upgrade</h1>' ] || fail "the second preview was not served"

step "containers recreated (compose down, up; volumes kept): the data is still there and the secret still decrypts"
compose down >/dev/null 2>&1
compose up -d >/dev/null 2>&1
wait_for_health "after compose down and up"
[ "$(preview "$SECOND_COMMIT")" = '<h1>after the upgrade</h1>' ] || fail "the preview is gone after the containers were recreated"
status=$(upload "$COMMIT" 'again')
[ "$status" = 200 ] || [ "$status" = 201 ] || [ "$status" = 409 ] || fail "upload after recreating answered $status: $(cat "$work/answer")"

step "README deploy:postgres-move: the SQLite deployment moved to the postgres profile by migrate-to-postgres"
wait "$postgres_build" || { cat "$work/postgres-build.log" >&2; fail "the postgres image did not build"; }
postgres_build=
# A new deployment runs deploy:postgres-env after step 1: the same lines as in the move.
move=$(readme_block postgres-move)
while IFS= read -r line; do
  grep -qxF -- "$line" <<<"$move" || fail "README deploy:postgres-env's line is not in deploy:postgres-move: $line"
done < <(readme_block postgres-env)
run_block postgres-move
grep -q '^copied [0-9]* rows into PostgreSQL' "$work/commands.log" || fail "migrate-to-postgres did not say what it copied"
grep -q '^builds: 2 rows' "$work/commands.log" || fail "migrate-to-postgres did not copy the 2 builds: $(grep rows "$work/commands.log")"
wait_for_health "on PostgreSQL"
pg_query() { podman exec "${project}_postgres_1" psql -qtA -U postgres -d preview_gate -c "$1"; }
[ "$(pg_query 'select count(*) from builds')" = 2 ] || fail "the builds' rows are not in PostgreSQL"
podman exec "${project}_app_1" test -e /data/moved-to-postgres || fail "the SQLite file is not marked moved"
podman exec "${project}_app_1" sh -c 'test -n "$DATABASE_URL"' || fail "the app has no DATABASE_URL"
# Over the network only the app's role logs in, by password: not the superuser, not without one.
refused=$(podman exec "${project}_app_1" node -e "new (require('pg').Client)({ host: 'postgres', user: 'postgres', database: 'postgres' }).connect().then(() => console.log('connected'), (e) => console.log(e.message))")
grep -q 'no pg_hba.conf entry' <<<"$refused" || fail "the superuser was not refused over the network: $refused"
[ "$(preview "$SECOND_COMMIT")" = '<h1>after the upgrade</h1>' ] || fail "the preview is gone after the move to PostgreSQL"
status=$(upload "$SECOND_COMMIT" 'again')
[ "$status" = 409 ] || fail "an upload of a build made on SQLite answered $status on PostgreSQL (not 409): $(cat "$work/answer")"
status=$(upload "$THIRD_COMMIT" 'on PostgreSQL')
[ "$status" = 201 ] || fail "upload on PostgreSQL answered $status: $(cat "$work/answer")"
[ "$(preview "$THIRD_COMMIT")" = '<h1>on PostgreSQL</h1>' ] || fail "the build uploaded on PostgreSQL was not served"
[ "$(pg_query 'select count(*) from builds')" = 3 ] || fail "the upload on PostgreSQL is not a row in PostgreSQL"

step "README deploy:after-setup (restart app) and deploy:postgres-backup on PostgreSQL"
run_block after-setup
wait_for_health "after restart app on PostgreSQL"
[ "$(preview "$THIRD_COMMIT")" = '<h1>on PostgreSQL</h1>' ] || fail "the build is not served after restart app on PostgreSQL"
status=$(upload "$THIRD_COMMIT" 'again')
[ "$status" = 409 ] || fail "after restart app the build uploaded on PostgreSQL is not known (answered $status)"
run_block postgres-backup
dump=$(ls "$checkout"/preview-gate-*.dump)
listing=$(podman exec -i "${project}_postgres_1" pg_restore -l < "$dump") || fail "pg_restore cannot read the pg_dump file"
grep -q 'TABLE DATA public builds ' <<<"$listing" || fail "the pg_dump file has no builds table"

step "a first start of the profile on an empty pgdata: the app waits for PostgreSQL, migrates, takes an upload"
compose down >/dev/null 2>&1
podman volume rm "${project}_pgdata" >/dev/null || fail "no ${project}_pgdata volume"
compose up -d >/dev/null 2>&1
wait_for_health "on an empty PostgreSQL started with it"
grep -q 'made the cluster, the role and the database preview_gate' <<<"$(compose logs postgres 2>&1)" || fail "PostgreSQL did not start on an empty pgdata"
printf '%s' "$secret" | podman exec -i "${project}_app_1" node bin/preview-gate.js secret set bench-org/docs upload-key >/dev/null
status=$(upload "$FOURTH_COMMIT" 'first on an empty PostgreSQL')
[ "$status" = 201 ] || fail "upload on an empty PostgreSQL answered $status: $(cat "$work/answer")"
run_block after-setup
wait_for_health "after restart app on the new PostgreSQL"
[ "$(preview "$FOURTH_COMMIT")" = '<h1>first on an empty PostgreSQL</h1>' ] || fail "the build is not served after restart app on the new PostgreSQL"
[ "$(pg_query 'select count(*) from builds')" = 1 ] || fail "the new PostgreSQL does not hold the one build"

step "image: non-root, Node 24, no build leftovers"
[ "$(podman run --rm --no-healthcheck preview-gate id -u)" = 1000 ] || fail "the image does not run as uid 1000"
podman run --rm --no-healthcheck preview-gate node -v | grep -q '^v24\.' || fail "the image is not Node 24"
leftover=$(podman run --rm --no-healthcheck preview-gate du -sm node_modules/better-sqlite3 | cut -f1)
[ "$leftover" -le 5 ] || fail "better-sqlite3 takes $leftover MB in the image (build leftovers)"
podman run --rm --no-healthcheck preview-gate sh -c 'test ! -e .env && test ! -e .git && test ! -e test && test ! -e certs' || fail "the build context leaked files into the image"

step "the image's better-sqlite3 survives V8 freeing 200,000 statements (Node 24.19+, nodejs/node#65446)"
survived() { grep -q '^survived$' <<<"$1"; }
out=$(podman run --rm --no-healthcheck -v "$PWD/test/container/statement-churn.cjs:/app/statement-churn.cjs:ro" preview-gate node statement-churn.cjs 2>&1) || true
survived "$out" || fail "the image's SQLite addon aborted: $(tail -3 <<<"$out")"

step "an operator's npm ci of this checkout on Node 24 (toolchain stage): the addon is rebuilt when it would abort"
podman build -q --target toolchain -t preview-gate-toolchain . >/dev/null
mkdir -p "$work/npm-ci"
command git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$work/npm-ci"
out=$(podman run --rm --user 0 -v "$work/npm-ci:/app" -w /app preview-gate-toolchain \
  sh -c 'npm ci --no-audit --no-fund 2>&1 | grep "preview-gate:"; node bin/sqlite-addon.mjs check && node test/container/statement-churn.cjs' 2>&1) || true
echo "$out"
survived "$out" || fail "after npm ci on Node 24 the SQLite addon aborted or was refused: $(tail -3 <<<"$out")"

step "an unwritable /data: one line saying what to do"
mkdir -p "$work/rootowned"
# stderr only: the log (stdout) says the setup flow waits, before the server opens its data.
if out=$(podman run --rm --no-healthcheck --env-file "$checkout/.env" -v "$work/rootowned:/data" preview-gate 2>&1 >/dev/null); then fail "started on an unwritable /data"; fi
echo "$out" | grep -q 'chown -R 1000:1000' || fail "no chown advice for an unwritable /data: $out"
[ "$(echo "$out" | wc -l)" -eq 1 ] || fail "more than one line for an unwritable /data: $out"
# A relative DATA_DIR (the ./data of a .env written for npm start) is /app/data in the image: no bind mount to chown.
if out=$(podman run --rm --no-healthcheck --env-file "$checkout/.env" -e DATA_DIR=./data preview-gate 2>&1 >/dev/null); then fail "started with DATA_DIR=./data in /app"; fi
echo "$out" | grep -q 'DATA_DIR=./data is relative to the working directory /app: remove DATA_DIR' || fail "no accurate advice for DATA_DIR=./data: $out"
[ "$(echo "$out" | wc -l)" -eq 1 ] || fail "more than one line for DATA_DIR=./data: $out"

step "passed in $(( $(date +%s) - started )) s"
