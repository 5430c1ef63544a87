/**
 * The command line as an operator meets it: flags > SCRAPEZ_* variables > the config file (and errors naming
 * where a bad value came from), exit 2 for every usage error of every command, `generate -o` creating its
 * directory, and scrapez_build_info with the default process metrics in a private registry.
 * Pure code, in process; test/integration/lifecycle.test.ts proves the same on real processes.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Registry } from "prom-client";
import { afterAll, afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { parseBindConfig } from "../../src/bind/config.js";
import { buildInfoLabels, registerProcessMetrics, version } from "../../src/cli/build-info.js";
import { createLogger } from "../../src/common/log.js";
import { main } from "../../src/cli/main.js";
import { invalidConfig } from "../../src/common/config/errors.js";
import { BIND_OVERRIDES, collectOverrides, PROXY_OVERRIDES } from "../../src/common/config/overrides.js";
import { parseProxyConfig } from "../../src/proxy/config.js";

const repoRoot = join(import.meta.dirname, "../..");
const dir = mkdtempSync(join(tmpdir(), "scrapez-cli-ops-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
for (const f of ["id.json", "a.json", "b.json", "c.json"]) writeFileSync(join(dir, f), "{}");
const bindRaw = { identity: "id.json", targets: [{ service: "node", upstream: "http://127.0.0.1:9100" }] };

describe("overrides: flag > SCRAPEZ_* > file", () => {
  it("takes the flag over the variable, the variable over the file, and ignores an empty variable", () => {
    const env = { SCRAPEZ_LOG_LEVEL: "warn", SCRAPEZ_IDENTITY: "", SCRAPEZ_DRAIN_SECONDS: "30" };
    const o = collectOverrides(BIND_OVERRIDES, { "log-level": "debug" }, env);
    expect(o.values).toEqual({ logLevel: "debug", drainSeconds: 30 });
    expect(o.sources).toEqual({ logLevel: "--log-level", drainSeconds: "SCRAPEZ_DRAIN_SECONDS" });
    const c = parseBindConfig({ ...bindRaw, logLevel: "error" }, "bind.yaml", dir, env, { "log-level": "debug" });
    expect(c.logLevel).toBe("debug");
    expect(c.drainSeconds).toBe(30);
    expect(parseBindConfig({ ...bindRaw, logLevel: "error" }, "bind.yaml", dir, env).logLevel).toBe("warn");
    expect(parseBindConfig({ ...bindRaw, logLevel: "error" }, "bind.yaml", dir, {}).logLevel).toBe("error");
  });

  it("proxy identities: a repeated flag or a comma-separated variable replaces the list; listen likewise", () => {
    const raw = { identities: ["id.json"], listen: "127.0.0.1:9480" };
    const fromEnv = parseProxyConfig(raw, "proxy.yaml", dir, {
      SCRAPEZ_IDENTITY: "a.json, b.json",
      SCRAPEZ_LISTEN: "127.0.0.1:9999",
    });
    expect(fromEnv.identities).toEqual([join(dir, "a.json"), join(dir, "b.json")]);
    expect(fromEnv.listenPort).toBe(9999);
    const fromFlag = parseProxyConfig(
      raw,
      "proxy.yaml",
      dir,
      { SCRAPEZ_IDENTITY: "a.json" },
      { identity: ["c.json"], listen: "127.0.0.1:1234" },
    );
    expect(fromFlag.identities).toEqual([join(dir, "c.json")]);
    expect(fromFlag.listenPort).toBe(1234);
    expect(parseProxyConfig(raw, "proxy.yaml", dir).drainSeconds).toBe(10);
  });

  it("names the source of a bad value, and marks a bad flag (a usage error) apart from a bad file or variable", () => {
    const flagErr = (() => {
      try {
        parseProxyConfig({ identities: ["id.json"] }, "proxy.yaml", dir, {}, { "drain-seconds": "soon" });
      } catch (e) {
        return e as Error & { fromFlag?: boolean };
      }
    })();
    expect(flagErr?.message).toMatch(/drainSeconds \(from --drain-seconds\): .*expected number/);
    expect(flagErr?.fromFlag).toBe(true);
    const envErr = (() => {
      try {
        parseBindConfig(bindRaw, "bind.yaml", dir, { SCRAPEZ_IDENTITY: "nope.json" });
      } catch (e) {
        return e as Error & { fromFlag?: boolean };
      }
    })();
    expect(envErr?.message).toMatch(/identity \(from SCRAPEZ_IDENTITY\): file .*nope\.json does not exist/);
    expect(envErr?.fromFlag).toBe(false);
    // A non-loopback listen from the environment without auth: the post-schema check names the source too.
    expect(() =>
      parseProxyConfig({ identities: ["id.json"] }, "proxy.yaml", dir, { SCRAPEZ_LISTEN: "0.0.0.0:9480" }),
    ).toThrow(/listen \(from SCRAPEZ_LISTEN\): 0\.0\.0\.0:9480 is not a loopback address/);
    // Only a top-level key that was overridden is labelled.
    expect(invalidConfig("x", ["listenHost: nope"], { listen: "--listen" }).message).toBe(
      "x is invalid:\n  listenHost: nope",
    );
  });

  it("every override has a distinct flag and a SCRAPEZ_ variable per command", () => {
    for (const specs of [BIND_OVERRIDES, PROXY_OVERRIDES]) {
      expect(new Set(specs.map((s) => s.flag)).size).toBe(specs.length);
      for (const s of specs) expect(s.env).toMatch(/^SCRAPEZ_[A-Z_]+$/);
    }
  });

  it("a logger's level changes live for it and its children (a reload)", () => {
    const lines: string[] = [];
    const log = createLogger("warn", {}, (l) => lines.push(l));
    const child = log.child({ part: "x" });
    child.info("hidden");
    log.setLevel("debug");
    child.debug("shown");
    expect(lines.map((l) => (JSON.parse(l) as { msg: string }).msg)).toEqual(["shown"]);
  });
});

describe("exit status 2 for usage errors, in every command", () => {
  let err: string[];
  beforeEach(() => {
    err = [];
    vi.spyOn(process.stderr, "write").mockImplementation((s) => (err.push(String(s)), true));
    vi.spyOn(process.stdout, "write").mockImplementation(() => true);
  });
  afterEach(() => vi.restoreAllMocks());

  it.each([
    [[]],
    [["no-such-command"]],
    [["bind"]],
    [["bind", "--config"]],
    [["bind", "--config", "x.yaml", "--bogus"]],
    [["bind", "--config", "x.yaml", "--listen", "127.0.0.1:1"]],
    [["bind", "--config", "x.yaml", "extra"]],
    [["proxy"]],
    [["proxy", "--config", "x.yaml", "--nope"]],
    [["proxy", "--config", "x.yaml", "--log-level"]],
    [["enroll"]],
    [["enroll", "--jwt", "a", "--out", "b", "--key-type", "DSA"]],
    [["enroll", "--wat"]],
    [["generate"]],
    [["generate", "sideways", "--config", "f.yaml"]],
    [["generate", "cluster", "--config", "f.yaml"]],
    [["generate", "central", "--config", "f.yaml", "--format", "xml"]],
    [["generate", "central", "--config", "f.yaml", "--bogus"]],
    [["identity"]],
    [["identity", "key"]],
    [["identity", "key", "--identity", "x", "--nope"]],
    [["probe"]],
    [["probe", "--ready", "--live", "--status-file", "s"]],
    [["probe", "--ready"]],
    [["probe", "--ready", "--status-file", "s", "--bogus"]],
    [["status", "--bogus"]],
    [["status", "--timeout", "9999"]],
  ])("scrapez %j exits 2 and says what is wrong", async (argv) => {
    expect(await main(argv)).toBe(2);
    expect(err.join("")).toMatch(/scrapez/);
  });

  it("a bad flag value in the config exits 2; the same bad value in the file exits 1", async () => {
    const f = join(dir, "p.yaml");
    writeFileSync(f, "identities: [id.json]\n");
    expect(await main(["proxy", "--config", f, "--log-level", "loud"])).toBe(2);
    expect(err.join("")).toMatch(/logLevel \(from --log-level\)/);
    writeFileSync(f, "identities: [id.json]\nlogLevel: loud\n");
    expect(await main(["proxy", "--config", f])).toBe(1);
    writeFileSync(join(dir, "b.yaml"), "identity: id.json\nlogLevel: loud\ntargets: []\n");
    expect(await main(["bind", "--config", join(dir, "b.yaml")])).toBe(1);
    expect(await main(["probe", "--ready", "--config", join(dir, "missing.yaml")])).toBe(1);
  });
});

describe("scrapez generate -o", () => {
  beforeEach(() => void vi.spyOn(process.stderr, "write").mockImplementation(() => true));
  afterEach(() => vi.restoreAllMocks());

  it("creates the output directory (and its parents) for cluster and central", async () => {
    const fed = join(repoRoot, "config", "federation.yaml");
    const out = join(dir, "fresh", "out", "cluster-a");
    expect(existsSync(join(dir, "fresh"))).toBe(false);
    expect(await main(["generate", "cluster", "--cluster", "cluster-a", "--config", fed, "-o", out])).toBe(0);
    expect(readFileSync(join(out, "bind.yaml"), "utf8")).toMatch(/targets:/);
    expect(readFileSync(join(out, "prometheus.yml"), "utf8")).toMatch(/scrape_configs:/);
    const central = join(dir, "fresh2", "central", "prometheus.yml");
    expect(await main(["generate", "central", "--config", fed, "-o", central])).toBe(0);
    expect(readFileSync(central, "utf8")).toMatch(/\/federate/);
  });
});

describe("scrapez_build_info and the process metrics", () => {
  it("adds build info and prom-client's default metrics, unprefixed, to a private registry only", async () => {
    const pkg = JSON.parse(readFileSync(join(repoRoot, "package.json"), "utf8")) as { version: string };
    expect(version()).toBe(pkg.version);
    const labels = buildInfoLabels("bind");
    expect(labels).toMatchObject({ version: pkg.version, nodeversion: process.version, command: "bind" });
    // revision and branch come from the checkout's .git here (src/cli/build-info.ts; test/unit/build-info.test.ts).
    expect(labels.revision).toMatch(/^[0-9a-f]{40}$/);
    const reg = new Registry();
    registerProcessMetrics(reg, "proxy");
    const text = await reg.metrics();
    expect(text).toContain(
      `scrapez_build_info{version="${pkg.version}",revision="${labels.revision}",branch="${labels.branch}",nodeversion="${process.version}",command="proxy"} 1`,
    );
    for (const m of [
      "process_cpu_seconds_total",
      "process_start_time_seconds",
      "process_resident_memory_bytes",
      "process_open_fds",
      "nodejs_eventloop_lag_seconds",
      "nodejs_heap_size_used_bytes",
      "nodejs_version_info",
    ])
      expect(text).toMatch(new RegExp(`^# TYPE ${m} `, "m"));
    expect(text).not.toMatch(/^# TYPE scrapez_process_/m);
    // A second registry gets its own copy (bind and proxy each have one); the global registry gets nothing.
    const other = new Registry();
    registerProcessMetrics(other, "bind");
    expect(await other.metrics()).toMatch(/command="bind"/);
    const { register } = await import("prom-client");
    expect(await register.getSingleMetric("scrapez_build_info")).toBeUndefined();
  });
});
