# preview-gate: the Node process (Probot app + upload route). nginx runs beside it (compose.yaml).
# Build: docker build -t preview-gate .   Run: see compose.yaml and README "Deploying".
# Node 24 is the active LTS; the code also runs on Node 20 and 22.

FROM node:24-bookworm-slim AS toolchain
# The tools to compile better-sqlite3's native addon (below). The container test also installs the checkout
# here with `npm ci`, as an operator on Node 24 would.
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*

FROM toolchain AS build
WORKDIR /app
COPY package.json package-lock.json ./
COPY bin/sqlite-addon.mjs ./bin/
# better-sqlite3 12 compiled against Node 24.19+'s headers aborts the server when V8 frees a statement (seen here:
# at start or after the first 3,000-file upload); bin/sqlite-addon.mjs says why, compiles it from source against a
# copy of the headers with the pre-24.19 ObjectWrap, and fails the build if the addon still calls the hook removal.
RUN npm ci --ignore-scripts && node bin/sqlite-addon.mjs rebuild
COPY tsconfig.json tsconfig.build.json drizzle.config.ts app.yml ./
COPY src ./src
COPY bin ./bin
COPY nginx ./nginx
RUN npm run build && npm prune --omit=dev
# Only the addon itself is needed at run time: the compiler's objects and the SQLite sources are ~27 MB.
RUN cd node_modules/better-sqlite3 \
 && mv build/Release/better_sqlite3.node /tmp/ && rm -rf build deps src \
 && mkdir -p build/Release && mv /tmp/better_sqlite3.node build/Release/

FROM node:24-bookworm-slim
# Two malloc arenas instead of one per thread: on Node 24 a 1 GB upload peaked at 153 MB RSS with glibc's default,
# 139-140 MB with this, and no upload was slower (README, performance).
ENV NODE_ENV=production DATA_DIR=/data PORT=3000 HOST=0.0.0.0 MALLOC_ARENA_MAX=2
WORKDIR /app
COPY --from=build /app/package.json /app/app.yml ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/bin ./bin
COPY --from=build /app/nginx ./nginx
# The process writes only under /data (database, master key, builds, the setup flow's app.env).
# A bind mount must belong to uid 1000 (chown -R 1000:1000 <dir>); the server says so when it cannot write.
RUN mkdir -p /data/builds && chown -R node:node /data
USER node
VOLUME /data
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s CMD ["node", "bin/healthcheck.js"]
# A 4 MB young generation and a 64 MB first old generation: with V8's defaults an upload of many small files could
# fall into a run of full collections, one every ~50 ms, that cost a third more CPU (README, performance).
CMD ["node", "--max-semi-space-size=4", "--initial-old-space-size=64", "dist/src/main.js"]
