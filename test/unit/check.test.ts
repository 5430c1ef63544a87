/**
 * `scrapez check`: every config kind, told from the content or given, valid and invalid (errors name the field),
 * --no-files for configs whose files are elsewhere, and the exit codes (0 valid, 1 invalid, 2 usage).
 * test/integration/helm.test.ts runs the real CLI process on the configs the Helm chart renders.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import YAML from "yaml";
import { detectKind, runCheck } from "../../src/cli/check.js";

const dir = mkdtempSync(join(tmpdir(), "scrapez-check-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
writeFileSync(join(dir, "id.json"), "{}", { mode: 0o600 });
writeFileSync(join(dir, "token"), "t\n");

let n = 0;
/** Writes a config (an object as YAML, or raw text) and returns its path. */
function file(content: unknown): string {
  const p = join(dir, `c${n++}.yaml`);
  writeFileSync(p, typeof content === "string" ? content : YAML.stringify(content));
  return p;
}

async function check(args: string[], env: NodeJS.ProcessEnv = {}) {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runCheck(args, {
    stdout: { write: (s: string) => out.push(s) },
    stderr: { write: (s: string) => err.push(s) },
    env,
  });
  return { code, out: out.join(""), err: err.join("") };
}

const bind = { identity: "id.json", targets: [{ service: "node", upstream: "http://127.0.0.1:9100" }] };
const proxy = { identities: ["id.json"], listen: "0.0.0.0:9480", auth: { bearerTokenFile: "token" } };
const federation = {
  proxy: { url: "http://127.0.0.1:9480" },
  clusters: [{ name: "cluster-a", service: "prometheus-cluster-a" }],
};
const absent = "/nonexistent/scrapez-check";

describe("scrapez check: valid configs exit 0", () => {
  it.each([
    ["bind, told from targets", bind, [], /valid bind config \(1 target\(s\): node\)/],
    ["proxy, told from identities", proxy, [], /valid proxy config \(1 identity file\(s\), listen 0\.0\.0\.0:9480\)/],
    ["federation, told from clusters", federation, [], /valid federation config \(1 cluster\(s\): cluster-a\)/],
    ["bind with --kind", bind, ["--kind", "bind"], /valid bind config/],
    ["proxy with -k", proxy, ["-k", "proxy"], /valid proxy config/],
    [
      "bind whose identity and TLS files are elsewhere, with --no-files",
      {
        identity: `${absent}/identity.json`,
        targets: [
          {
            service: "tls",
            upstream: "https://127.0.0.1:8443",
            tls: { ca: `${absent}/ca.pem`, cert: `${absent}/c.pem`, key: `${absent}/k.pem` },
          },
        ],
      },
      ["--no-files"],
      /valid bind config/,
    ],
    [
      "proxy whose identity, token, password and TLS files are elsewhere, with --no-files",
      {
        identities: [`${absent}/a.json`, `${absent}/b.json`],
        listen: "0.0.0.0:9480",
        auth: { bearerTokenFile: `${absent}/token`, basic: { username: "p", passwordFile: `${absent}/pw` } },
        tls: { cert: `${absent}/t.crt`, key: `${absent}/t.key`, clientCA: `${absent}/ca.crt` },
      },
      ["--no-files"],
      /valid proxy config \(2 identity file\(s\)/,
    ],
  ])("%s", async (_name, config, flags, summary) => {
    const f = file(config);
    const r = await check(["--config", f, ...flags]);
    expect(r.err).toBe("");
    expect(r.out).toMatch(summary);
    expect(r.out.startsWith(`${f}: `)).toBe(true);
    expect(r.code).toBe(0);
  });
});

describe("scrapez check: invalid configs exit 1, naming the field", () => {
  it.each([
    [
      "bind: bad upstream",
      { ...bind, targets: [{ service: "n", upstream: "ftp://x" }] },
      [],
      /targets\[0\]\.upstream: not an http\(s\) URL/,
    ],
    ["bind: unknown key", { ...bind, colour: "red" }, [], /colour/],
    [
      "bind: duplicate service",
      { ...bind, targets: [bind.targets[0], bind.targets[0]] },
      [],
      /targets\[1\]\.service: duplicate service "node"/,
    ],
    [
      "bind: missing identity file",
      { ...bind, identity: `${absent}/x.json` },
      [],
      /identity: file .*x\.json does not exist/,
    ],
    [
      "bind: missing TLS file",
      { ...bind, targets: [{ service: "t", upstream: "https://127.0.0.1:1", tls: { ca: `${absent}/ca.pem` } }] },
      [],
      /targets\[0\]\.tls\.ca: file .* does not exist/,
    ],
    [
      "bind: --no-files still checks the fields",
      {
        ...bind,
        identity: `${absent}/x.json`,
        targets: [{ service: "n", upstream: "http://h:1", paths: ["metrics"] }],
      },
      ["--no-files"],
      /targets\[0\]\.paths\[0\]: a path starts with \//,
    ],
    ["proxy: bad listen", { ...proxy, listen: "9480" }, [], /listen: expected host:port/],
    [
      "proxy: open listener without auth",
      { identities: ["id.json"], listen: "0.0.0.0:9480" },
      ["--no-files"],
      /listen: 0\.0\.0\.0:9480 is not a loopback address, so auth is required/,
    ],
    [
      "proxy: missing token file",
      { ...proxy, auth: { bearerTokenFile: `${absent}/token` } },
      [],
      /auth\.bearerTokenFile: file .* does not exist/,
    ],
    [
      "proxy: missing identity file",
      { identities: [`${absent}/a.json`] },
      [],
      /identities\[0\]: file .* does not exist/,
    ],
    [
      "federation: bad cluster name",
      { ...federation, clusters: [{ name: "Cluster_A", service: "p" }] },
      [],
      /clusters\[0\]\.name: lowercase letters, digits and -/,
    ],
    [
      "federation: timeout longer than interval",
      { ...federation, scrapeInterval: "10s", scrapeTimeout: "20s" },
      [],
      /scrapeTimeout: must not be longer than scrapeInterval/,
    ],
    ["a bind config checked as a proxy config", bind, ["--kind", "proxy"], /identities|targets/],
    [
      "no marker key",
      { logLevel: "info" },
      [],
      /none of the keys targets \(bind\), identities \(proxy\), clusters \(federation\): give --kind/,
    ],
    [
      "markers of two kinds",
      { ...bind, identities: ["id.json"] },
      [],
      /several kinds \(targets, identities\): give --kind/,
    ],
    ["not a mapping", "- a\n- b\n", [], /not a YAML mapping/],
    ["empty file", "", [], /not a YAML mapping/],
    ["not YAML", "identity: [unclosed\n", [], /cannot read config/],
  ])("%s", async (_name, config, flags, message) => {
    const r = await check(["--config", file(config), ...flags]);
    expect(r.err).toMatch(message);
    expect(r.out).toBe("");
    expect(r.code).toBe(1);
  });

  it("a file that does not exist", async () => {
    const r = await check(["--config", `${absent}/bind.yaml`]);
    expect(r.err).toMatch(/cannot read config .*bind\.yaml: ENOENT/);
    expect(r.code).toBe(1);
  });

  it("checks every --config and exits 1 if one is invalid", async () => {
    const good = file(bind);
    const bad = file({ ...proxy, listen: "nope" });
    const r = await check(["-c", good, "-c", bad]);
    expect(r.out).toMatch(/valid bind config/);
    expect(r.err).toMatch(/listen: expected host:port/);
    expect(r.code).toBe(1);
  });
});

describe("scrapez check: usage errors exit 2", () => {
  it.each([
    ["no --config", []],
    ["unknown --kind", ["--config", "x.yaml", "--kind", "exporter"]],
    ["unknown flag", ["--config", "x.yaml", "--strict"]],
    ["a positional file", ["x.yaml"]],
  ])("%s", async (_name, args) => {
    const r = await check(args);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^scrapez check: /);
  });

  it("--help prints the usage and exits 0", async () => {
    const r = await check(["--help"]);
    expect(r.out).toMatch(/--no-files/);
    expect(r.code).toBe(0);
  });
});

describe("scrapez check: what scrapez bind would do at start", () => {
  it("warns about an allow-listed caller without a pinned key, naming the fix and what v2 routers do; stays valid", async () => {
    const f = file({
      ...bind,
      targets: [{ ...bind.targets[0], allow: { identities: ["prometheus-central"] } }],
      self: { service: "bind-self", allow: { identities: ["ops"] } },
    });
    const r = await check(["-c", f]);
    const warnings = r.err.trim().split("\n");
    expect(warnings).toHaveLength(2);
    expect(warnings[0]).toMatch(
      new RegExp(
        `^${f}: warning: service "node" allows "prometheus-central" by name only \\(no pin in allow\\.keys\\)`,
      ),
    );
    expect(warnings[1]).toMatch(/warning: service "bind-self" allows "ops" by name only/);
    // v1.x: refused; the fix names the command; v2.0+: the router asserts the name, so it works there.
    expect(warnings[0]).toMatch(/OpenZiti v1\.x routers do not assert the dialer's identity, so there this caller/);
    expect(warnings[0]).toContain("Fix: pin its key: `scrapez identity key --identity <prometheus-central's identity");
    expect(warnings[0]).toMatch(/v2\.0\+ routers assert the dialer's identity, so a name-only entry works there/);
    expect(warnings[0]).toContain("verified_by: router");
    expect(r.out).toMatch(/valid bind config/);
    expect(r.code).toBe(0);
  });

  it("applies SCRAPEZ_IDENTITY like scrapez bind", async () => {
    const f = file({ ...bind, identity: `${absent}/x.json` });
    expect((await check(["-c", f])).code).toBe(1);
    const r = await check(["-c", f], { SCRAPEZ_IDENTITY: join(dir, "id.json") });
    expect(r.out).toMatch(/valid bind config/);
    expect(r.code).toBe(0);
  });
});

describe("detectKind", () => {
  it.each([
    [{ targets: [] }, "bind"],
    [{ identities: [] }, "proxy"],
    [{ clusters: [] }, "federation"],
  ])("%j is %s", (raw, kind) => expect(detectKind(raw)).toBe(kind));
  it.each([null, 3, "text", []])("%j has no kind", (raw) => expect(detectKind(raw)).toHaveProperty("reason"));
});
