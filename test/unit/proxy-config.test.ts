import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { isLoopback, parseProxyConfig } from "../../src/proxy/config.js";
import {
  globMatch,
  hostToName,
  nameToHost,
  parseTargetHost,
  selectorMatch,
  targetHost,
} from "../../src/common/naming.js";

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
    ["empty identities", { identities: [] }, /identities: at least one identity file is required/],
    ["port out of range", { identities: ["id.json"], listen: "127.0.0.1:70000" }, /listen: port must be 0-65535/],
    ["IPv6 without brackets", { identities: ["id.json"], listen: "::1:9480" }, /listen: expected host:port/],
    [
      "non-loopback IPv6 without auth",
      { identities: ["id.json"], listen: "[::]:9480" },
      /listen: \[::\]:9480 is not a loopback address, so auth is required/,
    ],
    [
      "basic auth without username",
      { identities: ["id.json"], auth: { basic: { passwordFile: "token" } } },
      /auth\.basic\.username/,
    ],
    [
      "unknown auth key",
      { identities: ["id.json"], auth: { bearerToken: "inline" } },
      /auth: Unrecognized key.*bearerToken/,
    ],
    ["tls without key", { identities: ["id.json"], tls: { cert: "token" } }, /tls\.key/],
    [
      "missing client CA",
      { identities: ["id.json"], tls: { cert: "token", key: "token", clientCA: "ca" } },
      /tls\.clientCA: file/,
    ],
    [
      "a bare # selector",
      { identities: ["id.json"], discovery: { include: ["#"] } },
      /discovery\.include\[0\]: expected a name glob/,
    ],
    ["an empty include list", { identities: ["id.json"], discovery: { include: [] } }, /discovery\.include/],
    ["refreshSeconds 0", { identities: ["id.json"], discovery: { refreshSeconds: 0 } }, /discovery\.refreshSeconds/],
    ["dialSeconds 0", { identities: ["id.json"], timeouts: { dialSeconds: 0 } }, /timeouts\.dialSeconds/],
    [
      "a string timeout",
      { identities: ["id.json"], timeouts: { defaultScrapeSeconds: "10s" } },
      /timeouts\.defaultScrapeSeconds/,
    ],
    [
      "maxSocketsPerService 0",
      { identities: ["id.json"], agent: { maxSocketsPerService: 0 } },
      /agent\.maxSocketsPerService/,
    ],
    [
      "fractional maxSockets",
      { identities: ["id.json"], agent: { maxSocketsPerService: 1.5 } },
      /agent\.maxSocketsPerService/,
    ],
    [
      "a waiver that is not a boolean",
      { identities: ["id.json"], insecureAllowUnauthenticated: "yes" },
      /insecureAllowUnauthenticated/,
    ],
    ["unknown log level", { identities: ["id.json"], logLevel: "trace" }, /logLevel/],
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

  it.each([
    ["bearer", { auth: { bearerTokenFile: "token" } }],
    ["basic", { auth: { basic: { username: "prom", passwordFile: "token" } } }],
    ["client certificates", { tls: { cert: "token", key: "token", clientCA: "token" } }],
    ["the waiver", { insecureAllowUnauthenticated: true }],
  ])("a non-loopback listener is accepted with %s", (_n, extra) => {
    expect(parse({ identities: ["id.json"], listen: "10.0.0.1:9480", ...extra }).listenHost).toBe("10.0.0.1");
  });

  it("TLS without a client CA is not authentication", () => {
    expect(() => parse({ identities: ["id.json"], listen: "0.0.0.0:1", tls: { cert: "token", key: "token" } })).toThrow(
      /auth is required/,
    );
  });

  it("resolves files relative to the config file's directory", () => {
    const c = parse({ identities: ["id.json"], auth: { bearerTokenFile: "token" } });
    expect(c.identities).toEqual([join(dir, "id.json")]);
    expect(c.auth?.bearerTokenFile).toBe(join(dir, "token"));
  });

  it("fills every documented default", () => {
    expect(parse({ identities: ["id.json"] })).toMatchObject({
      listen: "127.0.0.1:9480",
      logLevel: "info",
      insecureAllowUnauthenticated: false,
      discovery: { refreshSeconds: 30 },
      timeouts: { dialSeconds: 10, defaultScrapeSeconds: 10 },
      agent: { maxSocketsPerService: 4, keepAliveSeconds: 60 },
    });
  });

  it("lists every problem at once", () => {
    expect(() => parse({ identities: [], listen: "x", colour: 1 })).toThrow(/identities[^]*listen[^]*colour/);
  });

  it("accepts IPv6 loopback in brackets", () => {
    expect(parse({ identities: ["id.json"], listen: "[::1]:9480" })).toMatchObject({
      listenHost: "::1",
      listenPort: 9480,
    });
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

  it.each([
    ["node-*", "node-a", true],
    ["node-?", "node-ab", false],
    ["a.b", "axb", false],
    ["*", "", true],
    ["(x)+", "(x)+", true],
    ["[ab]", "a", false],
  ])("glob %s matches %s: %s", (glob, s, want) => {
    expect(globMatch(glob, s)).toBe(want);
  });

  it.each([
    ["#metrics", true],
    ["#linux", false],
    ["node*", true],
    ["#node*", false],
  ])("selector %s", (sel, want) => {
    expect(selectorMatch(sel, { name: "node-a", roleAttributes: ["metrics"] })).toBe(want);
  });

  it("replica names cannot collide with service names: identities and services with ~ are encoded", () => {
    expect(nameToHost("a~b")).toBe("x--617e62");
    expect(parseTargetHost("x--617e62")).toEqual({ service: "a~b" });
    expect(parseTargetHost(targetHost({ service: "s~1", identity: "i~2" }))).toEqual({
      service: "s~1",
      identity: "i~2",
    });
    expect(parseTargetHost("[::1]:443")).toEqual({ service: "[::1]" });
  });
});
