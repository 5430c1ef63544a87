#!/usr/bin/env node
// The layer rule (issue 13), checked on the compiled tree with madge in the lint step: a lower layer never imports
// from a higher one. Bottom to top:
//   ziti    the SDK: self-contained, imports nothing else from src/
//   common  the ground floor (logger, config loading and errors, naming, deadline, answers): imports nothing above
//   overlay the seam between the applications and the SDK
//   bind, proxy, generate   the applications: never import the CLI, and not each other
//   cli     the top: wires everything together
// Usage: node scripts/layers.mjs [root=dist/src]. Prints every offending import and exits 1 if there is one.
import madge from "madge";

const root = process.argv[2] ?? "dist/src";
/** For each layer, the layers it must not import from. */
const FORBIDDEN = {
  ziti: ["common", "overlay", "bind", "proxy", "generate", "cli"],
  common: ["ziti", "overlay", "bind", "proxy", "generate", "cli"],
  overlay: ["bind", "proxy", "generate", "cli"],
  bind: ["proxy", "generate", "cli"],
  proxy: ["bind", "generate", "cli"],
  generate: ["bind", "proxy", "cli"],
};
const layerOf = (file) => file.replace(/\\/g, "/").split("/")[0].replace(/\.js$/, "");

const graph = (await madge(root, { fileExtensions: ["js"] })).obj();
const bad = [];
for (const [from, deps] of Object.entries(graph)) {
  const forbidden = FORBIDDEN[layerOf(from)] ?? [];
  for (const to of deps) if (forbidden.includes(layerOf(to))) bad.push(`${from} -> ${to}`);
}
if (Object.keys(graph).length === 0) {
  process.stderr.write(`layers: no modules found under ${root} (build first: npx tsc -p tsconfig.json)\n`);
  process.exit(1);
}
if (bad.length) {
  process.stderr.write(
    `layers: ${bad.length} import(s) from a higher layer (see scripts/layers.mjs for the order):\n  ${bad.join("\n  ")}\n`,
  );
  process.exit(1);
}
process.stdout.write(`layers: ${Object.keys(graph).length} modules, every import goes down the layers\n`);
