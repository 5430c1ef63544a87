# scrapez: one image for every command (bind, proxy, probe, enroll, generate, status, identity).
#
#   docker build -t scrapez:0.1.0 --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) \
#     --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ) --build-arg SOURCE=<repository URL> .
#   docker run --rm --read-only --tmpfs /tmp --user 10001:10001 --cap-drop ALL --security-opt no-new-privileges \
#     --network container:node-exporter -v $PWD/identities:/identities:ro -v $PWD/config:/config:ro scrapez:0.1.0 \
#     bind --config /config/bind.yaml   (docs/container.md; test/integration/image.test.ts runs both commands)
#
# - `scrapez` is on PATH (/usr/local/bin/scrapez), so exec probes are [scrapez, probe, --ready, --config, ...].
# - Runs as the numeric user 10001:10001 (runAsNonRoot can check a number, not a name). Every file of the image
#   belongs to root and is read-only for that user.
# - Works with a read-only root filesystem: the only path it writes is $TMPDIR (/tmp), for scrapez bind's status
#   file. Mount a writable emptyDir or tmpfs there. Identities and configs are mounted, never baked in.
# - SIGTERM (docker stop, Kubernetes) drains scrapes in flight for up to drainSeconds (default 10) and exits 0;
#   node is PID 1 and handles the signals itself.
# - Alpine (musl) works because the SDK is pure TypeScript + WebAssembly: no native addon has to match the libc.
# - NODE_IMAGE is the base of both stages: node:20-alpine. test/integration/image.test.ts builds this file with a
#   local Debian 12 + Node 20 image instead (no registry is reachable there); docs/container.md says what differs.

ARG NODE_IMAGE=node:20-alpine
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
# package-lock.json records every platform's optional packages, so `npm ci` installs exactly the locked tree here.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY config ./config
COPY src ./src
# Compile only src/, then drop the devDependencies. `npm prune` leaves the emptied folders behind (node_modules/@types,
# @eslint, ...: 17 of them); the find removes every empty folder. Then /out holds exactly the runtime stage's new
# files (/app with package.json, config, node_modules and dist/src; the /usr/local/bin/scrapez link), so one
# COPY --from adds them as one layer: on the vfs storage driver every step of a stage costs a copy of its whole file
# system (8-20 s each), so the runtime stage re-runs nothing else when src changes (its metadata comes first).
RUN npx tsc -p tsconfig.build.json && npm prune --omit=dev --ignore-scripts --no-audit --no-fund \
    && find node_modules -type d -empty -delete \
    && rm -r src tsconfig.json tsconfig.build.json package-lock.json \
    && chmod 0755 dist/src/cli/main.js \
    && mkdir -p /out/usr/local/bin && ln -s /app/dist/src/cli/main.js /out/usr/local/bin/scrapez \
    && cd / && mv /app /out/app

FROM ${NODE_IMAGE}
# A young generation of at most 2 x 1 MiB instead of V8's 2 x 16 MiB. Less memory (a bind with 1,000 services holds
# ~20 MiB less after binding), and less CPU under load: V8 counts the memory under Buffers (every data payload) towards
# the old generation's limit until the next full collection, and a small young generation frees the short-lived
# ones in its frequent minor collections before they start full ones (docs/performance.md#memory).
ENV NODE_ENV=production \
    TMPDIR=/tmp \
    NODE_OPTIONS=--max-semi-space-size=1
WORKDIR /app
USER 10001:10001
ENTRYPOINT ["scrapez"]
CMD ["--help"]
# Build metadata. Everything from here to the end but the COPY is the same for every build of one release, and
# cached; a changed source is one new layer (the COPY), and another REVISION or CREATED re-runs only these steps and
# that COPY, whose content, and so its layer, is unchanged.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown
ARG BRANCH=unknown
# scrapez_build_info's revision and branch labels (src/cli/build-info.ts): the image has no .git to read them from.
ENV SCRAPEZ_BUILD_REVISION=${REVISION} \
    SCRAPEZ_BUILD_BRANCH=${BRANCH}
LABEL org.opencontainers.image.title="scrapez" \
      org.opencontainers.image.description="Let an unmodified Prometheus scrape exporters over an OpenZiti overlay, with no listening ports at the targets" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
# Last: its files are owned by root (COPY ignores USER), read-only for 10001.
COPY --from=build /out /
