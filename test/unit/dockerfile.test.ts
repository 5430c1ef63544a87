/**
 * The Dockerfile read statically (what the image promises in its config) and the lock file `npm ci` needs.
 * test/integration/image.test.ts runs the Dockerfile's steps and the resulting tree.
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { imageConfig, pairs, parseDockerfile, substitute, words } from "../harness/dockerfile.js";
import { dockerignore } from "../harness/image.js";

const repo = join(import.meta.dirname, "../..");
const text = readFileSync(join(repo, "Dockerfile"), "utf8");
const df = parseDockerfile(text);
const final = df.stages[df.stages.length - 1]!;
const pkg = JSON.parse(readFileSync(join(repo, "package.json"), "utf8")) as { version: string; license: string };

describe("the Dockerfile reader", () => {
  it("splits words, pairs and continuations as Docker does", () => {
    expect(words(`a "b c" 'd e' f\\ g`)).toEqual(["a", "b c", "d e", "f g"]);
    expect(pairs(`A=1 B="two words" C=`)).toEqual({ A: "1", B: "two words", C: "" });
    expect(substitute("v${X}-$Y-${Z}", { X: "1", Y: "2" })).toBe("v1-2-");
    const d = parseDockerfile(
      'ARG G=1\nFROM a AS b\n# c\nRUN x \\\n  # inside\n  && y\nCOPY --from=b /p ./\nCMD ["z"]\n',
    );
    expect(d.globalArgs).toEqual({ G: "1" });
    expect(d.stages[0]!.name).toBe("b");
    expect(d.stages[0]!.instructions.map((i) => [i.op, i.args])).toEqual([
      ["RUN", "x && y"],
      ["COPY", "/p ./"],
      ["CMD", '["z"]'],
    ]);
    expect(d.stages[0]!.instructions[1]!.flags).toEqual({ from: "b" });
    expect(() => parseDockerfile("RUN x\n")).toThrow(/before the first FROM/);
  });
});

describe("the image's promises, in its Dockerfile", () => {
  const c = imageConfig(final);

  it("runs as the numeric non-root user 10001:10001 (runAsNonRoot can verify a number, not a name)", () => {
    expect(c.user).toBe("10001:10001");
  });

  it("has scrapez as its entrypoint (on PATH), so an exec probe is [scrapez, probe, --ready, ...]", () => {
    expect(c.entrypoint).toEqual(["scrapez"]);
    expect(c.cmd).toEqual(["--help"]);
    const runs = final.instructions.filter((i) => i.op === "RUN").map((i) => i.args);
    expect(runs.join("\n")).toMatch(/ln -s \/app\/dist\/src\/cli\/main\.js \/usr\/local\/bin\/scrapez/);
    expect(c.workdir).toBe("/app");
  });

  it("points TMPDIR at /tmp, the one path it writes (mount an emptyDir or tmpfs there)", () => {
    expect(c.env).toMatchObject({ TMPDIR: "/tmp", NODE_ENV: "production" });
  });

  it("caps V8's young generation through NODE_OPTIONS, and node honours it from there", () => {
    expect(c.env.NODE_OPTIONS).toBe("--max-semi-space-size=4");
    // Allocate a stream of short-lived objects: the young generation grows to its cap (2 x 16 MiB by default).
    const probe =
      'let k=[];for(let i=0;i<2e6;i++){k.push({i,s:"x"+i});if(k.length>2e4)k=[]}' +
      'process.stdout.write(String(require("v8").getHeapSpaceStatistics().find(s=>s.space_name==="new_space").space_size))';
    const newSpace = (env: NodeJS.ProcessEnv) =>
      Number(execFileSync(process.execPath, ["-e", probe], { env: { PATH: process.env.PATH, ...env } }).toString());
    expect(newSpace({ NODE_OPTIONS: c.env.NODE_OPTIONS })).toBeLessThanOrEqual(8 * 1024 * 1024);
    expect(newSpace({})).toBeGreaterThan(8 * 1024 * 1024);
  });

  it("carries the OCI labels, the version defaulting to package.json's", () => {
    expect(c.labels).toMatchObject({
      "org.opencontainers.image.title": "scrapez",
      "org.opencontainers.image.licenses": pkg.license,
      "org.opencontainers.image.version": pkg.version,
    });
    for (const k of ["description", "source", "revision", "created"])
      expect(c.labels[`org.opencontainers.image.${k}`]).toBeTruthy();
    const built = imageConfig(final, { VERSION: "9.9.9", REVISION: "abc", CREATED: "2030-01-01T00:00:00Z" });
    expect(built.labels["org.opencontainers.image.revision"]).toBe("abc");
    expect(built.labels["org.opencontainers.image.version"]).toBe("9.9.9");
  });

  it("installs with npm ci only (the lock, exactly) and never copies tests or identities into the image", () => {
    const runs = df.stages.flatMap((s) => s.instructions.filter((i) => i.op === "RUN").map((i) => i.args));
    expect(runs.some((r) => /\bnpm ci\b/.test(r))).toBe(true);
    for (const r of runs) expect(r).not.toMatch(/\bnpm (install|i)\b|--no-save/);
    const copied = df.stages.flatMap((s) => s.instructions.filter((i) => i.op === "COPY").map((i) => words(i.args)));
    for (const w of copied) for (const src of w.slice(0, -1)) expect(src).not.toMatch(/^(\.\/)?(test|identities|\.)/);
    for (const s of df.stages) expect(s.from).toMatch(/^node:20-alpine$/);
  });

  it(".dockerignore keeps identities, local state and the compose demo secrets out of the build context", () => {
    const ignored = dockerignore(readFileSync(join(repo, ".dockerignore"), "utf8"));
    for (const p of [
      "identities/a.json",
      "identities/README.md",
      "node_modules/x",
      ".git/HEAD",
      ".cache/ziti",
      "dist/src/a.js",
      "config/compose/proxy-token",
      "bench/results/x.json",
      "x.log",
    ])
      expect(ignored(p), p).toBe(true);
    for (const p of ["src/cli/main.ts", "config/bind.yaml", "package-lock.json", "tsconfig.build.json"])
      expect(ignored(p), p).toBe(false);
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
