/**
 * `npm run chart:schema`: writes deploy/helm/scrapez/values.schema.json from the values schema
 * (scripts/chart/values-schema.ts), formatted as prettier formats it (the lint step checks every JSON file).
 * `npm run chart:schema -- --check` writes nothing and exits 1 if the committed file differs.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import prettier from "prettier";
import { valuesJsonSchema } from "./values-schema.js";

/** The repository root: this file is scripts/chart/ in the tree, or dist/scripts/chart/ compiled. */
const root = (() => {
  const here = dirname(fileURLToPath(import.meta.url));
  return join(here, here.includes(`${join("dist", "scripts")}`) ? "../../.." : "../..");
})();

export const SCHEMA_FILE = join(root, "deploy/helm/scrapez/values.schema.json");

/** The file's text as the generator writes it. */
export async function schemaText(): Promise<string> {
  const options = (await prettier.resolveConfig(SCHEMA_FILE)) ?? {};
  return prettier.format(JSON.stringify(valuesJsonSchema()), { ...options, filepath: SCHEMA_FILE });
}

async function main(): Promise<void> {
  const text = await schemaText();
  if (process.argv.includes("--check")) {
    let committed = "";
    try {
      committed = readFileSync(SCHEMA_FILE, "utf8");
    } catch {
      // missing: stale
    }
    if (committed !== text) {
      process.stderr.write(`${SCHEMA_FILE} is stale: run npm run chart:schema\n`);
      process.exit(1);
    }
    process.stdout.write(`${SCHEMA_FILE} is up to date\n`);
    return;
  }
  writeFileSync(SCHEMA_FILE, text);
  process.stdout.write(`wrote ${SCHEMA_FILE}\n`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
