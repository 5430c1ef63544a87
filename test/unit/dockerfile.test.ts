/**
 * What the Dockerfile, .dockerignore and the lock file promise as files: the base users get, how the tree is
 * installed, what stays out of the build context. test/integration/image.test.ts builds the image with the Docker
 * engine and checks the result (its configuration, tree, labels and runs).
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";

const repo = join(import.meta.dirname, "../..");
const text = readFileSync(join(repo, "Dockerfile"), "utf8");
/** The Dockerfile's instructions, comments dropped and continuation lines joined. */
const instructions = text
  .split("\n")
  .filter((l) => !/^\s*#/.test(l))
  .join("\n")
  .replace(/\\\n/g, " ")
  .split("\n")
  .map((l) => l.trim())
  .filter(Boolean);

describe("the Dockerfile", () => {
  it("builds both stages on node:20-alpine unless a test substitutes the base through NODE_IMAGE", () => {
    expect(instructions[0]).toBe("ARG NODE_IMAGE=node:20-alpine");
    const froms = instructions.filter((i) => i.startsWith("FROM "));
    expect(froms).toEqual(["FROM ${NODE_IMAGE} AS build", "FROM ${NODE_IMAGE}"]);
  });

  it("installs with npm ci only (the lock, exactly) and never copies tests, identities or dot files", () => {
    const runs = instructions.filter((i) => i.startsWith("RUN "));
    expect(runs.some((r) => /\bnpm ci\b/.test(r))).toBe(true);
    for (const r of runs) expect(r).not.toMatch(/\bnpm (install|i)\b|--no-save/);
    const sources = instructions
      .filter((i) => i.startsWith("COPY "))
      .flatMap((i) => i.split(/\s+/).slice(1, -1))
      .filter((w) => !w.startsWith("--"));
    expect(sources.length).toBeGreaterThan(0);
    for (const src of sources) expect(src).not.toMatch(/^(\.\/)?(test|identities|\.)/);
  });

  it("sets NODE_OPTIONS to cap V8's young generation, and node honours it from there", () => {
    const opts = /NODE_OPTIONS=(\S+)/.exec(instructions.filter((i) => i.startsWith("ENV ")).join(" "))?.[1];
    expect(opts).toBe("--max-semi-space-size=1");
    // Allocate a stream of short-lived objects: the young generation grows to its cap (2 x 16 MiB by default).
    const probe =
      'let k=[];for(let i=0;i<2e6;i++){k.push({i,s:"x"+i});if(k.length>2e4)k=[]}' +
      'process.stdout.write(String(require("v8").getHeapSpaceStatistics().find(s=>s.space_name==="new_space").space_size))';
    const newSpace = (env: NodeJS.ProcessEnv) =>
      Number(execFileSync(process.execPath, ["-e", probe], { env: { PATH: process.env.PATH, ...env } }).toString());
    expect(newSpace({ NODE_OPTIONS: opts })).toBeLessThanOrEqual(2 * 1024 * 1024);
    expect(newSpace({})).toBeGreaterThan(8 * 1024 * 1024);
  });
});

describe(".dockerignore", () => {
  it("keeps identities, local state, build output and the compose demo's secrets out of the build context", () => {
    const entries = readFileSync(join(repo, ".dockerignore"), "utf8")
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith("#"));
    for (const p of [
      "identities",
      "node_modules",
      ".git",
      ".cache",
      "dist",
      "config/compose",
      "bench/results",
      "*.log",
    ])
      expect(entries, p).toContain(p);
    // The tests and docs are left out too: the image tests key their build on the context's content.
    for (const p of ["test", "docs"]) expect(entries, p).toContain(p);
    // What the Dockerfile copies must stay in the context.
    for (const p of ["src", "config", "package-lock.json", "tsconfig.build.json"]) expect(entries).not.toContain(p);
  });
});

describe("package-lock.json", () => {
  it("records every platform's optional packages, so `npm ci` accepts it on any platform (Alpine's musl too)", () => {
    // npm 11 writing the lock from an existing node_modules keeps only this machine's optional packages
    // (npm/cli#4828); `npm ci` then refuses the lock everywhere. Regenerate with `npm install --package-lock-only`.
    const lock = JSON.parse(readFileSync(join(repo, "package-lock.json"), "utf8")) as {
      packages: Record<string, { optionalDependencies?: Record<string, string> }>;
    };
    const missing: string[] = [];
    for (const [path, p] of Object.entries(lock.packages)) {
      for (const dep of Object.keys(p.optionalDependencies ?? {})) {
        const nested = `${path ? `${path}/` : ""}node_modules/${dep}`;
        if (!lock.packages[nested] && !lock.packages[`node_modules/${dep}`]) missing.push(`${path} -> ${dep}`);
      }
    }
    expect(missing).toEqual([]);
  });
});
