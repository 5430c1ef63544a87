/**
 * ProxyServer.reconfigure (what SIGHUP applies) and ProxyServer.drain (what SIGTERM does), over the in-memory
 * overlay stand-in with real HTTP on loopback. test/integration/lifecycle.test.ts proves both on real processes.
 */
import http from "node:http";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseProxyConfig } from "../../src/proxy/config.js";
import { canConnect } from "../harness/ports.js";
import { StandInOverlay, Upstream, request, startProxy, testDir, type Running } from "../harness/proxy-standin.js";

const td = testDir();
let up: Upstream;
const overlay = new StandInOverlay();
/** Upstream requests held open until released (by id). */
const held = new Map<string, () => void>();

beforeAll(async () => {
  up = await new Upstream((req, res) => {
    const id = new URL(req.url ?? "/", "http://x").searchParams.get("hold");
    const answer = () => res.end("held_metric 1\n");
    if (id) held.set(id, answer);
    else answer();
  }).start();
  overlay.add("app", { port: up.port, attrs: ["apps"] }).add("db", { port: up.port, attrs: ["dbs"] });
  td.file("id.json", "{}");
});
afterAll(async () => {
  await up.close();
  td.remove();
});

const bearer = (t: string) => ({ authorization: `Bearer ${t}` });

describe("reconfigure (SIGHUP)", () => {
  let p: Running;
  let raw: Record<string, unknown>;
  const parse = (r: Record<string, unknown>) =>
    parseProxyConfig({ identities: ["id.json"], listen: "127.0.0.1:0", ...r }, "proxy.yaml", td.dir);

  beforeAll(async () => {
    td.file("token", "tok-a\n");
    raw = { auth: { bearerTokenFile: "token" } };
    p = await startProxy(td.dir, [overlay], raw);
  });
  afterAll(() => p.close());

  it("re-reads the token file even when the config is unchanged (rotation)", async () => {
    expect((await request(p.port, "/metrics", { headers: bearer("tok-a") })).status).toBe(200);
    writeFileSync(join(td.dir, "token"), "tok-b\n");
    expect(p.proxy.reconfigure(parse(raw))).toEqual([]);
    expect((await request(p.port, "/metrics", { headers: bearer("tok-a") })).status).toBe(401);
    expect((await request(p.port, "/metrics", { headers: bearer("tok-b") })).status).toBe(200);
  });

  it("applies discovery and timeouts live and says which fields changed", async () => {
    const sd = async () =>
      (JSON.parse((await request(p.port, "/sd", { headers: bearer("tok-b") })).text) as { targets: string[] }[])
        .flatMap((g) => g.targets)
        .sort();
    expect(await sd()).toEqual(["app", "db"]);
    raw = { ...raw, discovery: { include: ["#apps"] }, timeouts: { dialSeconds: 3 } };
    expect(p.proxy.reconfigure(parse(raw)).sort()).toEqual(["discovery", "timeouts"]);
    await p.proxy.catalog.refresh();
    expect(await sd()).toEqual(["app"]);
  });

  it("refuses, as a whole, a config whose listen, identities or TLS on/off changed, or whose token is unreadable", async () => {
    td.file("other.json", "{}");
    td.file("token-c", "tok-c\n");
    const withC = { ...raw, auth: { bearerTokenFile: "token-c" } };
    expect(() => p.proxy.reconfigure(parse({ ...withC, listen: "127.0.0.1:1" }))).toThrow(
      /^listen changed: restart scrapez proxy/,
    );
    expect(() => p.proxy.reconfigure(parse({ ...withC, identities: ["id.json", "other.json"] }))).toThrow(
      /^identities changed/,
    );
    const pki = { cert: td.file("c.pem", "x"), key: td.file("k.pem", "x") };
    expect(() => p.proxy.reconfigure(parse({ ...withC, tls: pki }))).toThrow(/^tls \(on\/off\) changed/);
    td.file("empty-token", "\n");
    expect(() => p.proxy.reconfigure(parse({ ...raw, auth: { bearerTokenFile: "empty-token" } }))).toThrow(
      /auth\.bearerTokenFile: .* is empty/,
    );
    // Nothing of the refused configs applied: the running token still works, token-c does not.
    expect((await request(p.port, "/metrics", { headers: bearer("tok-c") })).status).toBe(401);
    expect((await request(p.port, "/metrics", { headers: bearer("tok-b") })).status).toBe(200);
  });
});

describe("drain (SIGTERM)", () => {
  it("stops listening, finishes the request in flight with Connection: close, then resolves with 0 left", async () => {
    const p = await startProxy(td.dir, [overlay]);
    try {
      // An idle keep-alive client connection: closed by the drain at once.
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      await new Promise<void>((resolve, reject) =>
        http
          .get({ host: "127.0.0.1", port: p.port, path: "/-/healthy", agent }, (res) => res.resume().on("end", resolve))
          .on("error", reject),
      );
      const idle = Object.values(agent.freeSockets).flat()[0]!;
      const idleClosed = new Promise<void>((r) => idle.once("close", () => r()));
      const inFlight = request(p.port, "http://app/metrics?hold=d1");
      await waitFor(() => held.has("d1"));
      expect(p.proxy.inFlight).toBe(1);
      const drained = p.proxy.drain(10_000);
      await idleClosed;
      expect(await canConnect(p.port)).toBe(false);
      held.get("d1")!();
      const r = await inFlight;
      expect(r.status).toBe(200);
      expect(r.text).toBe("held_metric 1\n");
      expect(r.headers.connection).toBe("close");
      expect(await drained).toEqual({ unfinished: 0 });
      agent.destroy();
    } finally {
      await p.close();
    }
  });

  it("resolves at the deadline with what is still open", async () => {
    const p = await startProxy(td.dir, [overlay]);
    try {
      const inFlight = request(p.port, "http://app/metrics?hold=d2").catch((e: Error) => e);
      await waitFor(() => held.has("d2"));
      const started = Date.now();
      expect(await p.proxy.drain(200)).toEqual({ unfinished: 1 });
      expect(Date.now() - started).toBeGreaterThanOrEqual(150);
      await p.close();
      expect(await inFlight).toBeInstanceOf(Error); // closed, never answered
    } finally {
      held.get("d2")?.();
      await p.close();
    }
  });
});

async function waitFor(check: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(check()).toBe(true);
}
