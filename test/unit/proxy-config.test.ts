import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { isLoopback, parseProxyConfig } from "../../src/proxy/config.js";
import { globMatch, hostToName, nameToHost, parseTargetHost, targetHost } from "../../src/proxy/naming.js";

const dir = mkdtempSync(join(tmpdir(), "scrapez-unit-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
writeFileSync(join(dir, "id.json"), "{}");
writeFileSync(join(dir, "token"), "t\n");
const parse = (raw: unknown) => parseProxyConfig(raw, "proxy.yaml", dir);

describe("proxy config", () => {
  it("defaults to loopback with documented defaults", () => {
    const c = parse({ identities: ["id.json"] });
    expect(c).toMatchObject({
      listenHost: "127.0.0.1",
      listenPort: 9480,
      timeouts: { dialSeconds: 10 },
      agent: { maxSocketsPerService: 4 },
    });
  });

  it.each([
    ["no identities", {}, /identities:/],
    ["missing identity file", { identities: ["nope.json"] }, /identities\[0\]: file .*nope\.json does not exist/],
    ["unknown key", { identities: ["id.json"], colour: 1 }, /colour/],
    ["bad listen", { identities: ["id.json"], listen: "9480" }, /listen: expected host:port/],
    [
      "non-loopback without auth",
      { identities: ["id.json"], listen: "0.0.0.0:9480" },
      /listen: 0\.0\.0\.0:9480 is not a loopback address, so auth is required/,
    ],
    [
      "missing token file",
      { identities: ["id.json"], auth: { bearerTokenFile: "nope" } },
      /auth\.bearerTokenFile: file/,
    ],
  ])("rejects %s, naming the field", (_n, raw, msg) => {
    expect(() => parse(raw)).toThrow(msg);
  });

  it("accepts a non-loopback listener with auth, or with the explicit waiver", () => {
    expect(parse({ identities: ["id.json"], listen: "0.0.0.0:1", auth: { bearerTokenFile: "token" } }).listenHost).toBe(
      "0.0.0.0",
    );
    expect(parse({ identities: ["id.json"], listen: "0.0.0.0:1", insecureAllowUnauthenticated: true }).listenPort).toBe(
      1,
    );
  });

  it("knows loopback addresses", () => {
    expect(["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"].every(isLoopback)).toBe(true);
    expect(["0.0.0.0", "10.0.0.1", "::", "example.org"].some(isLoopback)).toBe(false);
  });
});

describe("service naming", () => {
  it.each([
    ["node-exporter.cluster-a", "node-exporter.cluster-a"],
    ["my_svc_underscore", "my_svc_underscore"],
    ["My Service", "x--4d792053657276696365"],
    ["a/b", "x--612f62"],
    ["x--looks-encoded", "x--782d2d6c6f6f6b732d656e636f646564"],
  ])("%s <-> %s", (name, host) => {
    expect(nameToHost(name)).toBe(host);
    expect(hostToName(host)).toBe(name);
  });

  it("parses targets: the port is ignored, `identity~service` names a replica", () => {
    expect(parseTargetHost("node:80")).toEqual({ service: "node" });
    expect(parseTargetHost("svc:9100")).toEqual({ service: "svc" });
    expect(parseTargetHost("bind-a~node:80")).toEqual({ service: "node", identity: "bind-a" });
    expect(targetHost({ service: "My Service", identity: "bind-a" })).toBe("bind-a~x--4d792053657276696365");
    expect(parseTargetHost(targetHost({ service: "My Service", identity: "r 1" }))).toEqual({
      service: "My Service",
      identity: "r 1",
    });
  });

  it("matches globs", () => {
    expect(globMatch("node-*", "node-a")).toBe(true);
    expect(globMatch("node-?", "node-ab")).toBe(false);
    expect(globMatch("a.b", "axb")).toBe(false);
  });
});
