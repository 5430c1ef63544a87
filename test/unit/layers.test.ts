import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";

/** Runs scripts/layers.mjs on a tree of tiny modules: { "ziti/a.ts": "import '../cli/b.js';" ... }. */
function layers(files: Record<string, string>): { code: number; out: string } {
  const root = mkdtempSync(join(tmpdir(), "scrapez-layers-"));
  dirs.push(root);
  for (const [f, text] of Object.entries(files)) {
    mkdirSync(dirname(join(root, f)), { recursive: true });
    writeFileSync(join(root, f), text);
  }
  try {
    const out = execFileSync(process.execPath, ["scripts/layers.mjs", root], { encoding: "utf8", stdio: "pipe" });
    return { code: 0, out };
  } catch (err) {
    const e = err as { status: number; stderr: string };
    return { code: e.status, out: e.stderr };
  }
}
const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe("scripts/layers.mjs: no import from a higher layer, and the SDK only through src/overlay", () => {
  it("passes a tree whose imports all go down, the applications reaching the SDK through overlay", () => {
    const r = layers({
      "cli/main.ts": 'import "../proxy/server.js"; import "../common/log.js"; import "../ziti/index.js";',
      "proxy/server.ts": 'import "../common/log.js"; import { open } from "../overlay/open.js";',
      "overlay/open.ts": 'import type { ZitiContext } from "../ziti/index.js"; export const open = 1;',
      "common/log.ts": "export const x = 1;",
      "ziti/index.ts": "export const y = 1;",
    });
    expect(r).toEqual({ code: 0, out: expect.stringContaining("5 modules") });
  });

  it.each([
    ["ziti/a.ts", 'import "../cli/b.js";', "cli/b.ts", "ziti/a.ts -> cli/b.js"],
    ["common/a.ts", 'import "../proxy/b.js";', "proxy/b.ts", "common/a.ts -> proxy/b.js"],
    ["common/a.ts", 'import "../ziti/b.js";', "ziti/b.ts", "common/a.ts -> ziti/b.js"],
    ["proxy/a.ts", 'import "../cli/b.js";', "cli/b.ts", "proxy/a.ts -> cli/b.js"],
    ["generate/a.ts", 'import "../proxy/b.js";', "proxy/b.ts", "generate/a.ts -> proxy/b.js"],
    ["bind/a.ts", 'import "../proxy/b.js";', "proxy/b.ts", "bind/a.ts -> proxy/b.js"],
    // Past the seam: an application importing the SDK directly, also for types only (gone from the compiled .js).
    ["proxy/a.ts", 'import { ErrorCodes } from "../ziti/errors.js";', "ziti/errors.ts", "proxy/a.ts -> ziti/errors.js"],
    ["bind/a.ts", 'import type { ZitiConn } from "../ziti/index.js";', "ziti/index.ts", "bind/a.ts -> ziti/index.js"],
    ["proxy/a.ts", 'import { type Identity } from "../ziti/index.js";', "ziti/index.ts", "proxy/a.ts -> ziti/index.js"],
    ["generate/a.ts", 'export * from "../ziti/index.js";', "ziti/index.ts", "generate/a.ts -> ziti/index.js"],
    ["bind/a.ts", 'const m = await import("../ziti/index.js");', "ziti/index.ts", "bind/a.ts -> ziti/index.js"],
  ])("fails on %s containing %s, and names the edge", (from, text, to, edge) => {
    const r = layers({ [from]: text, [to]: "export const z = 1;" });
    expect(r.code).toBe(1);
    expect(r.out).toContain(edge);
  });

  it("reads imports as TypeScript does: an import in a comment or a string is not one", () => {
    const r = layers({
      "proxy/a.ts": '// import "../ziti/index.js";\nexport const s = \'import "../cli/b.js"\';',
      "ziti/index.ts": "export const y = 1;",
      "cli/b.ts": "export const z = 1;",
    });
    expect(r.code).toBe(0);
  });

  it("fails when there is nothing to check", () => {
    const r = layers({});
    expect(r.code).toBe(1);
    expect(r.out).toContain("no TypeScript modules found");
  });
});
