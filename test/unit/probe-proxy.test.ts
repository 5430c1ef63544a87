/**
 * `scrapez probe --proxy URL`: the exec probe for a scrapez proxy that listens only on the pod's loopback (the chart's
 * in-pod proxies). Against a real HTTP server on a loopback port chosen at run time. The chart test
 * (test/integration/helm.test.ts) runs the rendered probe commands against a real scrapez proxy.
 */
import http from "node:http";
import type net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { probeProxy } from "../../src/cli/probe.js";

let server: http.Server;
let base: string;
let ready = false;

beforeAll(async () => {
  server = http.createServer((req, res) => {
    if (req.url === "/-/healthy") return void res.end("scrapez proxy is healthy\n");
    if (req.url === "/-/ready") {
      res.writeHead(ready ? 200 : 503);
      return void res.end(ready ? "ready\n" : "not ready: no identity is authenticated yet\nsecond line\n");
    }
    res.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));

describe("scrapez probe --proxy", () => {
  it("--live asks /-/healthy: 200 is live", async () => {
    expect(await probeProxy(base, "live")).toEqual({
      ok: true,
      detail: `${base}/-/healthy: 200 scrapez proxy is healthy`,
    });
  });

  it("--ready asks /-/ready and says why it is not ready (the first line of the body)", async () => {
    ready = false;
    expect(await probeProxy(base, "ready")).toEqual({
      ok: false,
      detail: `${base}/-/ready: 503 not ready: no identity is authenticated yet`,
    });
    ready = true;
    expect((await probeProxy(`${base}/`, "ready")).ok).toBe(true);
  });

  it("a proxy that does not answer within the deadline is not ready", async () => {
    const silent = http.createServer(() => undefined); // accepts, never answers
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
    const url = `http://127.0.0.1:${(silent.address() as net.AddressInfo).port}`;
    try {
      expect(await probeProxy(url, "ready", 300)).toEqual({
        ok: false,
        detail: `${url}/-/ready: no answer within 0.3 s`,
      });
    } finally {
      silent.closeAllConnections();
      await new Promise<void>((r) => silent.close(() => r()));
    }
  });

  it("nothing listening", async () => {
    const s = http.createServer();
    await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
    const port = (s.address() as net.AddressInfo).port;
    await new Promise<void>((r) => s.close(() => r()));
    expect(await probeProxy(`http://127.0.0.1:${port}`, "live")).toEqual({
      ok: false,
      detail: `http://127.0.0.1:${port}/-/healthy: ECONNREFUSED`,
    });
  });

  it.each([
    ["https", "https://127.0.0.1:9480", /only http:\/\//],
    ["not a URL", "127.0.0.1 9480", /is not a URL/],
  ])("refuses %s", async (_n, url, msg) => {
    const r = await probeProxy(url, "ready");
    expect(r.ok).toBe(false);
    expect(r.detail).toMatch(msg);
  });
});
