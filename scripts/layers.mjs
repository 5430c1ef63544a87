#!/usr/bin/env node
// The layer rule (issue 13), checked on the TypeScript sources in the lint step: a lower layer never imports from a
// higher one, and the applications reach the SDK only through the seam. Bottom to top:
//   ziti    the SDK: self-contained, imports nothing else from src/
//   common  the ground floor (logger, config loading and errors, naming, deadline, answers): imports nothing above
//   overlay the seam between the applications and the SDK
//   bind, proxy, generate   the applications: never import the SDK (src/ziti) directly, the CLI, or each other
//   cli     the top: wires everything together
// Every import counts: `import type` and type-only specifiers too (they are gone from the compiled .js, where a
// sideways type import would pass), `export ... from` and `import()`. TypeScript's own scanner (preProcessFile)
// reads them, so comments and strings that look like imports do not.
// Usage: node scripts/layers.mjs [root=src]. Prints every offending import and exits 1 if there is one.
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";
import ts from "typescript";

const root = resolve(process.argv[2] ?? "src");
/** For each layer, the layers it must not import from. */
const FORBIDDEN = {
  ziti: ["common", "overlay", "bind", "proxy", "generate", "cli"],
  common: ["ziti", "overlay", "bind", "proxy", "generate", "cli"],
  overlay: ["bind", "proxy", "generate", "cli"],
  bind: ["ziti", "proxy", "generate", "cli"],
  proxy: ["ziti", "bind", "generate", "cli"],
  generate: ["ziti", "bind", "proxy", "cli"],
};
const layerOf = (rel) => rel.split(sep)[0].replace(/\.[cm]?[jt]s$/, "");

function* sources(dir) {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) yield* sources(p);
    else if (/\.[cm]?ts$/.test(e.name) && !e.name.endsWith(".d.ts")) yield p;
  }
}

const bad = [];
let modules = 0;
let files = [];
try {
  files = [...sources(root)];
} catch {
  files = [];
}
for (const file of files) {
  modules++;
  const from = relative(root, file);
  const forbidden = FORBIDDEN[layerOf(from)] ?? [];
  const { importedFiles } = ts.preProcessFile(readFileSync(file, "utf8"), true, true);
  for (const { fileName } of importedFiles) {
    if (!fileName.startsWith(".")) continue; // packages and node: builtins
    const to = relative(root, resolve(dirname(file), fileName));
    if (to.startsWith("..")) continue;
    if (forbidden.includes(layerOf(to))) bad.push(`${from} -> ${to}`);
  }
}
if (modules === 0) {
  process.stderr.write(`layers: no TypeScript modules found under ${root}\n`);
  process.exit(1);
}
if (bad.length) {
  process.stderr.write(
    `layers: ${bad.length} import(s) from a higher layer or past src/overlay (see scripts/layers.mjs for the order):\n  ${bad.join("\n  ")}\n`,
  );
  process.exit(1);
}
process.stdout.write(`layers: ${modules} modules, every import goes down the layers\n`);
