/**
 * The SDK's public surface is what docs/architecture.md lists ("The SDK's public API"): the names src/ziti/index.ts
 * exports, their kinds, and every member a user can reach on its classes and interfaces. Both are read with the
 * TypeScript compiler (test/harness/api-surface.ts), so neither can change without the other.
 */
import { readFileSync } from "node:fs";
import ts from "typescript";
import { describe, expect, it } from "vitest";
import { declarationsSurface, moduleSurface, type Surface } from "../harness/api-surface.js";

function compilerOptions(): ts.CompilerOptions {
  const parsed = ts.getParsedCommandLineOfConfigFile(
    "tsconfig.json",
    {},
    {
      ...ts.sys,
      onUnRecoverableConfigFileDiagnostic: (d) => {
        throw new Error(ts.flattenDiagnosticMessageText(d.messageText, "\n"));
      },
    },
  );
  if (!parsed) throw new Error("tsconfig.json: cannot be read");
  return parsed.options;
}

/** The ts block of docs/architecture.md's "The SDK's public API" section. */
function documentedBlock(): string {
  const doc = readFileSync("docs/architecture.md", "utf8");
  const section = doc.split(/^## /m).find((s) => s.startsWith("The SDK's public API"));
  if (!section) throw new Error('docs/architecture.md has no "The SDK\'s public API" section');
  const block = /```ts\n([\s\S]*?)```/.exec(section)?.[1];
  if (!block) throw new Error("the section has no ts block");
  return block;
}

function table(s: Surface): Record<string, string> {
  return Object.fromEntries([...s.kinds].sort(([a], [b]) => a.localeCompare(b)));
}

describe("the SDK's public API", () => {
  const code = moduleSurface("src/ziti/index.ts", compilerOptions());
  const docs = declarationsSurface(documentedBlock());

  it("exports exactly the names docs/architecture.md lists, each as the kind it says", () => {
    expect(code.kinds.size).toBeGreaterThan(0);
    expect(table(code)).toEqual(table(docs));
  });

  it("each exported class and interface has exactly the public members the docs list", () => {
    const mismatched: Record<string, { code: string[]; docs: string[] }> = {};
    for (const [name, members] of code.members) {
      const listed = docs.members.get(name) ?? [];
      if (members.join() !== listed.join()) mismatched[name] = { code: members, docs: listed };
    }
    expect(mismatched).toEqual({});
  });

  it("reaches none of the internals it used to leak", () => {
    const context = code.members.get("ZitiContext") ?? [];
    for (const leak of ["controller", "identity", "channel", "bindSession", "dropSession", "verifyCaller", "dials"]) {
      expect(context).not.toContain(leak);
    }
    const conn = code.members.get("ZitiConnection") ?? [];
    for (const leak of ["handle", "useXgress", "channelClosed", "expectFinal", "channel"])
      expect(conn).not.toContain(leak);
    expect(code.members.get("ZitiListener")).not.toContain("renew");
    expect(code.kinds.has("ControllerClient")).toBe(false);
  });
});
