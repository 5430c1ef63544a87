# scrapez on Alpine (musl): the SDK is pure TypeScript + WebAssembly, so no native addon has to match the libc.
FROM node:20-alpine AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm install --no-save --no-audit --no-fund --ignore-scripts
COPY tsconfig.json ./
COPY src ./src
COPY test ./test
COPY scripts ./scripts
COPY bench ./bench
COPY vitest.config.ts ./
RUN npx tsc -p tsconfig.json

FROM node:20-alpine
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm install --omit=dev --no-save --no-audit --no-fund --ignore-scripts && npm cache clean --force
COPY --from=build /app/dist/src ./dist/src
COPY config ./config
# Identities are mounted at run time (never baked into the image); files are read-only for the process.
USER node
ENTRYPOINT ["node", "/app/dist/src/cli/main.js"]
CMD ["--help"]
