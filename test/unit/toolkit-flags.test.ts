/**
 * Prometheus's command-line conventions on bind and proxy: --log.level and --log.format (logfmt lines a logfmt
 * parser reads back), --web.listen-address beside --listen (both at once is a usage error), --web.config.file and
 * --web.enable-lifecycle as overrides; and scrapez_build_info's revision and branch from a git directory, a
 * build-info.json or the environment.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { buildRevision, gitInfo } from "../../src/cli/build-info.js";
import { main } from "../../src/cli/main.js";
import { parseBindConfig } from "../../src/bind/config.js";
import { BIND_OVERRIDES, collectOverrides, PROXY_OVERRIDES } from "../../src/common/config/overrides.js";
import { createLogger, formatLogfmt } from "../../src/common/log.js";
import { parseProxyConfig } from "../../src/proxy/config.js";
import { parseLogfmt } from "../harness/logfmt.js";

const dir = mkdtempSync(join(tmpdir(), "scrapez-toolkit-flags-"));
writeFileSync(join(dir, "id.json"), "{}");
writeFileSync(join(dir, "web.yml"), "{}\n");
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("--log.format", () => {
  it("logfmt: one line a record that a logfmt parser reads back, quoting what needs it", () => {
    const lines: string[] = [];
    const log = createLogger("info", { component: "proxy" }, (l) => lines.push(l), "logfmt");
    log.info("listening", { address: "127.0.0.1:9480", identities: ["a", "b"], ready: true, n: 3 });
    log.error("new config rejected; keeping the running one", { reason: 'bad "x"\nline two', empty: "" });
    log.debug("hidden");
    expect(lines).toHaveLength(2);
    for (const l of lines) expect(l.endsWith("\n") && l.indexOf("\n") === l.length - 1).toBe(true);
    const a = parseLogfmt(lines[0]!);
    expect(a).toMatchObject({
      level: "info",
      msg: "listening",
      component: "proxy",
      address: "127.0.0.1:9480",
      identities: '["a","b"]',
      ready: "true",
      n: "3",
    });
    expect(new Date(a.time!).toISOString()).toBe(a.time);
    expect(parseLogfmt(lines[1]!)).toMatchObject({
      level: "error",
      msg: "new config rejected; keeping the running one",
      reason: 'bad "x"\nline two',
      empty: "",
    });
  });

  it("json stays the default; the format changes live for a logger and its children (a reload)", () => {
    const lines: string[] = [];
    const log = createLogger("info", {}, (l) => lines.push(l));
    const child = log.child({ part: "x" });
    child.info("one");
    log.setFormat("logfmt");
    child.info("two");
    expect(JSON.parse(lines[0]!)).toMatchObject({ msg: "one", part: "x" });
    expect(parseLogfmt(lines[1]!)).toMatchObject({ msg: "two", part: "x" });
  });

  it("enabled() says which levels are written, for a logger and its children, and follows a level change", () => {
    const lines: string[] = [];
    const log = createLogger("warn", {}, (l) => lines.push(l));
    const child = log.child({ part: "x" });
    expect([log.enabled("info"), log.enabled("warn"), child.enabled("info"), child.enabled("error")]).toEqual([
      false,
      true,
      false,
      true,
    ]);
    child.info("dropped");
    log.setLevel("info");
    expect(child.enabled("info")).toBe(true);
    expect(child.enabled("debug")).toBe(false);
    child.info("kept");
    expect(lines.map((l) => (JSON.parse(l) as { msg: string }).msg)).toEqual(["kept"]);
  });

  it("keys that logfmt cannot carry are made safe", () => {
    expect(formatLogfmt({ "a b": 1, "x=y": "z" })).toBe("a_b=1 x_y=z\n");
  });

  it("is a field of both configs, from the flag or SCRAPEZ_LOG_FORMAT, and a bad value names its source", () => {
    const bind = { identity: "id.json", targets: [{ service: "s", upstream: "http://127.0.0.1:9100" }] };
    expect(parseBindConfig(bind, "bind.yaml", dir, {}, { "log.format": "logfmt" }).logFormat).toBe("logfmt");
    expect(parseBindConfig(bind, "bind.yaml", dir).logFormat).toBe("json");
    expect(
      parseProxyConfig({ identities: ["id.json"] }, "p.yaml", dir, { SCRAPEZ_LOG_FORMAT: "logfmt" }).logFormat,
    ).toBe("logfmt");
    expect(() => parseProxyConfig({ identities: ["id.json"] }, "p.yaml", dir, {}, { "log.format": "xml" })).toThrow(
      /logFormat \(from --log\.format\): Invalid option: expected one of "json"\|"logfmt"/,
    );
  });
});

describe("Prometheus flag names beside scrapez's own", () => {
  it("--web.listen-address and --listen, --log.level and --log-level set the same field; the source is the one given", () => {
    for (const flag of ["web.listen-address", "listen"]) {
      const o = collectOverrides(PROXY_OVERRIDES, { [flag]: "127.0.0.1:9999" }, {});
      expect(o).toEqual({ values: { listen: "127.0.0.1:9999" }, sources: { listen: `--${flag}` } });
    }
    for (const flag of ["log.level", "log-level"]) {
      expect(collectOverrides(BIND_OVERRIDES, { [flag]: "debug" }, {}).values).toEqual({ logLevel: "debug" });
    }
  });

  it("--web.config.file and --web.enable-lifecycle (a flag without a value; the variable true/false)", () => {
    const c = parseProxyConfig(
      { identities: ["id.json"] },
      "p.yaml",
      dir,
      {},
      {
        "web.config.file": "web.yml",
        "web.enable-lifecycle": true,
      },
    );
    expect(c.webConfigFile).toBe(join(dir, "web.yml"));
    expect(c.enableLifecycle).toBe(true);
    expect(
      parseProxyConfig({ identities: ["id.json"] }, "p.yaml", dir, { SCRAPEZ_WEB_ENABLE_LIFECYCLE: "true" })
        .enableLifecycle,
    ).toBe(true);
    expect(() =>
      parseProxyConfig({ identities: ["id.json"] }, "p.yaml", dir, {}, { "web.config.file": "missing.yml" }),
    ).toThrow(/webConfigFile \(from --web\.config\.file\): file .*missing\.yml does not exist/);
  });

  it("a flag given under both its names is a usage error (exit 2) naming both", async () => {
    const err: string[] = [];
    const orig = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((s: string) => (err.push(String(s)), true)) as typeof process.stderr.write;
    try {
      const code = await main([
        "proxy",
        "--config",
        "x.yaml",
        "--listen",
        "127.0.0.1:1",
        "--web.listen-address",
        "127.0.0.1:2",
      ]);
      expect(code).toBe(2);
    } finally {
      process.stderr.write = orig;
    }
    expect(err.join("")).toMatch(/--web\.listen-address and --listen are the same flag: give it once/);
  });
});

describe("scrapez_build_info's revision and branch", () => {
  const rev = "0123456789abcdef0123456789abcdef01234567";

  it("reads a git directory as files: a loose ref, a packed ref, a detached HEAD", () => {
    const g = join(dir, "git1");
    mkdirSync(join(g, "refs", "heads", "feature"), { recursive: true });
    writeFileSync(join(g, "HEAD"), "ref: refs/heads/feature/x\n");
    writeFileSync(join(g, "refs", "heads", "feature", "x"), `${rev}\n`);
    expect(gitInfo(g)).toEqual({ revision: rev, branch: "feature/x" });
    const p = join(dir, "git2");
    mkdirSync(p);
    writeFileSync(join(p, "HEAD"), "ref: refs/heads/main\n");
    writeFileSync(join(p, "packed-refs"), `# pack-refs with: peeled fully-peeled sorted\n${rev} refs/heads/main\n`);
    expect(gitInfo(p)).toEqual({ revision: rev, branch: "main" });
    const d = join(dir, "git3");
    mkdirSync(d);
    writeFileSync(join(d, "HEAD"), `${rev}\n`);
    expect(gitInfo(d)).toEqual({ revision: rev });
    expect(gitInfo(join(dir, "nothing-here"))).toEqual({});
  });

  it("SCRAPEZ_BUILD_REVISION and SCRAPEZ_BUILD_BRANCH (the image's build arguments) win; empty counts as unset", () => {
    expect(buildRevision({ SCRAPEZ_BUILD_REVISION: rev, SCRAPEZ_BUILD_BRANCH: "release-1" })).toEqual({
      revision: rev,
      branch: "release-1",
    });
    const fromCheckout = buildRevision({});
    expect(buildRevision({ SCRAPEZ_BUILD_REVISION: "", SCRAPEZ_BUILD_BRANCH: "" })).toEqual(fromCheckout);
    // This test runs in a git checkout: the revision is a commit id.
    expect(fromCheckout.revision).toMatch(/^[0-9a-f]{40}$/);
  });
});
