/**
 * The chart's values.schema.json (generated from scripts/chart/values-schema.ts by `npm run chart:schema`):
 * the committed file is exactly what the generator writes; values.yaml and the schema have the same keys; the
 * `config` sub-objects are bind.yaml's and proxy.yaml's own schemas minus what the chart sets; every example and ci/
 * value set is valid. What Helm does with the file (refusals, lint, package) is test/integration/chart-package.test.ts.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import YAML from "yaml";
import { z } from "zod";
import { SCHEMA_FILE, schemaText } from "../../scripts/chart/write-schema.js";
import { ChartValues, CONFIG_TITLES } from "../../scripts/chart/values-schema.js";
import { BindConfigFields } from "../../src/bind/config.js";
import { ProxyConfigSchema } from "../../src/proxy/config.js";
import { repoRoot } from "../harness/binaries.js";

const chartDir = join(repoRoot, "deploy/helm/scrapez");
const readYaml = (file: string): unknown => YAML.parse(readFileSync(file, "utf8"));
const values = readYaml(join(chartDir, "values.yaml"));

type Schema = {
  type?: string;
  title?: string;
  properties?: Record<string, Schema>;
  additionalProperties?: boolean | Schema;
  items?: Schema;
};
const committed = JSON.parse(readFileSync(SCHEMA_FILE, "utf8")) as Schema;
/** Keys Helm itself gives every chart (not in values.yaml): `global`, shared with subcharts. */
const HELM_KEYS = new Set(["global"]);
const CONFIGS = new Set<string>(Object.values(CONFIG_TITLES));

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * Compares a values tree with a schema node. Closed objects (the chart's sections) must have the same keys both
 * ways; a config file's schema (bind.yaml, proxy.yaml) must have every key the values give (it has many more:
 * optional settings values.yaml leaves out); open objects (pod spec shapes) take anything. List items are checked
 * one way (an item need not set every key).
 */
function compareKeys(
  value: unknown,
  schema: Schema,
  path: string,
  out: { notInSchema: string[]; notInValues: string[] },
  bothWays = true,
): void {
  if (Array.isArray(value)) {
    if (schema.items) value.forEach((v, i) => compareKeys(v, schema.items!, `${path}[${i}]`, out, false));
    return;
  }
  if (!isObject(value) || schema.additionalProperties !== false) return;
  const props = schema.properties ?? {};
  for (const [k, v] of Object.entries(value)) {
    const p = `${path}.${k}`.replace(/^\./, "");
    if (props[k]) compareKeys(v, props[k], p, out, bothWays && !CONFIGS.has(schema.title ?? ""));
    else out.notInSchema.push(p);
  }
  if (bothWays && !CONFIGS.has(schema.title ?? "")) {
    for (const k of Object.keys(props)) {
      if (!(k in value) && !(path === "" && HELM_KEYS.has(k))) out.notInValues.push(`${path}.${k}`.replace(/^\./, ""));
    }
  }
}

/** The schema node at a dotted path (through properties). */
function nodeAt(schema: Schema, path: string): Schema {
  return path.split(".").reduce((s, k) => {
    const next = s.properties?.[k];
    if (!next) throw new Error(`no ${path} in the schema (at ${k})`);
    return next;
  }, schema);
}

describe("values.schema.json", () => {
  it("is exactly what `npm run chart:schema` writes from scripts/chart/values-schema.ts", async () => {
    expect(readFileSync(SCHEMA_FILE, "utf8")).toBe(await schemaText());
  });

  it("has every key of values.yaml, and values.yaml every key of the schema's chart sections", () => {
    const out = { notInSchema: [] as string[], notInValues: [] as string[] };
    compareKeys(values, committed, "", out);
    expect(out, "add the value to both values.yaml and scripts/chart/values-schema.ts").toEqual({
      notInSchema: [],
      notInValues: [],
    });
    // The walk reached the sections (a schema that is open at the top would pass trivially).
    expect(committed.additionalProperties).toBe(false);
    expect(Object.keys(committed.properties ?? {})).toEqual(expect.arrayContaining(["sidecar", "proxy", "operator"]));
  });

  it("closes the chart's own sections and leaves the pod spec shapes open", () => {
    for (const p of ["sidecar", "sidecar.networkPolicy", "sidecar.bind", "proxy", "operator.proxy", "image"]) {
      expect(nodeAt(committed, p).additionalProperties, p).toBe(false);
    }
    for (const p of ["sidecar.affinity", "proxy.affinity", "podSecurityContext", "operator.prometheus.spec"]) {
      expect(nodeAt(committed, p), p).toMatchObject({ type: "object", additionalProperties: {} });
    }
    for (const p of ["sidecar.containers", "sidecar.volumes", "sidecar.tolerations", "proxy.networkPolicy.from"]) {
      expect(nodeAt(committed, p), p).toMatchObject({ type: "array", items: { additionalProperties: {} } });
    }
  });

  describe("the config sub-objects are the config files' own schemas", () => {
    const bindJson = z.toJSONSchema(BindConfigFields, { io: "input" }) as Schema;
    const proxyJson = z.toJSONSchema(ProxyConfigSchema, { io: "input" }) as Schema;

    it("sidecar.bind.config: bind.yaml's fields except identity and statusFile, which the chart sets", () => {
      const node = nodeAt(committed, "sidecar.bind.config");
      expect(node.title).toBe(CONFIG_TITLES.bind);
      expect(node.additionalProperties).toBe(false);
      const { identity, statusFile, targets, ...rest } = bindJson.properties!;
      expect(identity && statusFile).toBeTruthy();
      expect(Object.keys(node.properties!).sort()).toEqual(Object.keys({ ...rest, targets }).sort());
      for (const [k, v] of Object.entries(rest)) expect(node.properties![k], k).toEqual(v);
      // targets: the same items; only the minimum is left to the template (values.yaml's default is []).
      expect(node.properties!.targets!.items).toEqual(targets!.items);
      expect(targets).toMatchObject({ minItems: 1 });
      expect(node.properties!.targets).not.toHaveProperty("minItems");
    });

    it("proxy.config, sidecar.proxy.config, operator.proxy.config: proxy.yaml's except identities, auth, tls", () => {
      const { identities, auth, tls, ...rest } = proxyJson.properties!;
      expect(identities && auth && tls).toBeTruthy();
      for (const p of ["proxy.config", "sidecar.proxy.config", "operator.proxy.config"]) {
        const node = nodeAt(committed, p);
        expect(node.title, p).toBe(CONFIG_TITLES.proxy);
        expect(node.additionalProperties, p).toBe(false);
        expect(node.properties, p).toEqual(rest);
      }
    });

    it("leaves out exactly the fields the templates refuse in config (their fail messages)", () => {
      const helpers = readFileSync(join(chartDir, "templates/_helpers.tpl"), "utf8");
      // bindConfig: `hasKey $c "identity"`, `hasKey $c "statusFile"`; proxyConfig: `list "identities" "auth" "tls"`.
      const bindSet = [...helpers.matchAll(/hasKey \$c "(\w+)"/g)].map((m) => m[1]);
      const proxySet = /range \$k := list ((?:"\w+" ?)+)/.exec(helpers)?.[1]?.match(/\w+/g);
      expect(bindSet.sort()).toEqual(["identity", "statusFile"]);
      expect(proxySet?.sort()).toEqual(["auth", "identities", "tls"]);
      const bind = nodeAt(committed, "sidecar.bind.config").properties!;
      for (const k of bindSet) expect(bind, k).not.toHaveProperty(k!);
      for (const k of proxySet ?? []) expect(nodeAt(committed, "proxy.config").properties, k).not.toHaveProperty(k);
    });
  });
});

describe("the value sets", () => {
  const examples = readdirSync(join(chartDir, "examples")).filter(
    (f) => f.endsWith(".yaml") && f !== "federation.yaml",
  );
  const ciFiles = readdirSync(join(chartDir, "ci")).filter((f) => f.endsWith(".yaml"));

  it("values.yaml, every example and every ci/ file are valid values (the schema's zod source)", () => {
    const sets: [string, unknown][] = [
      ["values.yaml", values],
      ...examples.map((f): [string, unknown] => [`examples/${f}`, readYaml(join(chartDir, "examples", f))]),
      ...ciFiles.map((f): [string, unknown] => [`ci/${f}`, readYaml(join(chartDir, "ci", f))]),
    ];
    expect(sets.length).toBeGreaterThanOrEqual(1 + 4 + 4);
    for (const [name, v] of sets) {
      const r = ChartValues.safeParse(v);
      expect(r.success ? [] : r.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`), name).toEqual([]);
    }
  });

  it("ci/ holds each example's values as <example>-values.yaml (chart-testing names), equal to the example", () => {
    expect(ciFiles.every((f) => f.endsWith("-values.yaml"))).toBe(true);
    for (const f of examples) {
      const ci = `${f.replace(/\.yaml$/, "")}-values.yaml`;
      expect(ciFiles, ci).toContain(ci);
      expect(readYaml(join(chartDir, "ci", ci)), ci).toEqual(readYaml(join(chartDir, "examples", f)));
    }
  });

  it("the zod source refuses what Helm's check of the generated file refuses", () => {
    const bad = [
      { sidecar: { replica: 3 } },
      { sidecar: { networkPolicy: { enable: false } } },
      { sidecar: { serviceAcountName: "ksm" } },
      { sidecar: { bind: { config: { identity: "/x" } } } },
      { proxy: { config: { tls: { cert: "a", key: "b" } } } },
      { sidecar: { kind: "StatefulSet" } },
      { proxy: { config: { logLevel: "verbose" } } },
    ];
    for (const v of bad) expect(ChartValues.safeParse(v).success, JSON.stringify(v)).toBe(false);
  });
});
