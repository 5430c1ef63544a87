import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";

/** Runs scripts/layers.mjs on a tree of tiny modules: { "ziti/a.js": "import '../cli/b.js';" ... }. */
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

describe("scripts/layers.mjs: no import from a higher layer", () => {
  it("passes a tree whose imports all go down", () => {
    const r = layers({
      "cli/main.js": 'import "../proxy/server.js"; import "../common/log.js";',
      "proxy/server.js": 'import "../common/log.js"; import "../ziti/index.js";',
      "common/log.js": "export const x = 1;",
      "ziti/index.js": "export const y = 1;",
    });
    expect(r).toEqual({ code: 0, out: expect.stringContaining("4 modules") });
  });

  it.each([
    ["ziti/a.js", 'import "../cli/b.js";', "cli/b.js", "ziti/a.js -> cli/b.js"],
    ["common/a.js", 'import "../proxy/b.js";', "proxy/b.js", "common/a.js -> proxy/b.js"],
    ["common/a.js", 'import "../ziti/b.js";', "ziti/b.js", "common/a.js -> ziti/b.js"],
    ["proxy/a.js", 'import "../cli/b.js";', "cli/b.js", "proxy/a.js -> cli/b.js"],
    ["generate/a.js", 'import "../proxy/b.js";', "proxy/b.js", "generate/a.js -> proxy/b.js"],
    ["bind/a.js", 'import "../proxy/b.js";', "proxy/b.js", "bind/a.js -> proxy/b.js"],
  ])("fails on %s containing %s, and names the edge", (from, text, to, edge) => {
    const r = layers({ [from]: text, [to]: "export const z = 1;" });
    expect(r.code).toBe(1);
    expect(r.out).toContain(edge);
  });

  it("fails when there is nothing to check (not built)", () => {
    const r = layers({});
    expect(r.code).toBe(1);
    expect(r.out).toContain("no modules found");
  });
});
