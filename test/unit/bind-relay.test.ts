/**
 * The bind's relay (src/bind/relay.ts, relay-exchange.ts, upstream-pool.ts): what it does that an http.Server and
 * client did not have to be told: answers passed through with their own framing, pipelined requests in order,
 * exporter sockets pooled and dropped when an answer leaves them in doubt. Exporters are real sockets; the overlay
 * is the in-memory stand-in (the real-overlay proofs are the integration suites, which run through the relay).
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import type net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { parseBindConfig } from "../../src/bind/config.js";
import { keepsAlive } from "../../src/common/forward.js";
import { BindServer } from "../../src/bind/server.js";
import { createLogger } from "../../src/common/log.js";
import { FakeOverlay, collect, rawUpstream, scrape } from "../harness/bind-standin.js";

const dir = mkdtempSync(join(tmpdir(), "scrapez-bind-relay-"));
writeFileSync(join(dir, "id.json"), "{}");
const log = createLogger("error", { component: "bind" }, () => undefined);
const closers: (() => Promise<unknown>)[] = [];

afterAll(async () => {
  for (const c of closers.reverse()) await c().catch(() => undefined);
  rmSync(dir, { recursive: true, force: true });
});

async function startBind(upstream: string, extra: object = {}): Promise<FakeOverlay> {
  const ov = new FakeOverlay();
  const bs = new BindServer(
    ov,
    parseBindConfig({ identity: "id.json", targets: [{ service: "s", upstream, ...extra }] }, "b.yaml", dir, {}),
    log,
  );
  await bs.start();
  closers.push(() => bs.close());
  return ov;
}

/** Writes `requests` on one stand-in connection and returns everything it receives until it closes. */
async function exchange(ov: FakeOverlay, ...requests: string[]): Promise<string> {
  const conn = ov.dial("s");
  const got = collect(conn);
  conn.write(requests.join(""));
  return (await got).text;
}

const get = (path: string, extra = "") => `GET ${path} HTTP/1.1\r\nHost: s\r\n${extra}\r\n`;

describe("the bind's relay", () => {
  it("passes a chunked answer's bytes as the exporter framed them", async () => {
    const body = "3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\nT: 1\r\n\r\n";
    const up = await rawUpstream((s) => s.write(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${body}`));
    closers.push(up.close);
    const text = await exchange(await startBind(up.url), get("/metrics", "Connection: close\r\n"));
    expect(text).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(text).toContain("\r\ntransfer-encoding: chunked\r\n");
    expect(text.endsWith(`\r\n\r\n${body}`)).toBe(true);
  });

  it("chunks an answer framed by its connection's close, and keeps the dialer's connection for the next request", async () => {
    let n = 0;
    const up = await rawUpstream((s) => s.end(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nanswer ${++n}\n`));
    closers.push(up.close);
    const text = await exchange(await startBind(up.url), get("/metrics"), get("/metrics", "Connection: close\r\n"));
    const answers = text.split("HTTP/1.1 200 OK\r\n").slice(1);
    expect(answers).toHaveLength(2);
    for (const [i, a] of answers.entries()) {
      expect(a).toContain("transfer-encoding: chunked\r\n");
      expect(a).toContain(`\r\n\r\n9\r\nanswer ${i + 1}\n\r\n0\r\n\r\n`);
    }
  });

  it("answers pipelined requests in order on one connection", async () => {
    const app = http.createServer((req, res) => {
      // The first answer is the slowest: order must come from the relay, not from the exporter.
      const delay = req.url === "/metrics?n=1" ? 200 : 0;
      setTimeout(() => res.end(`for ${req.url}\n`), delay);
    });
    await new Promise<void>((r) => app.listen(0, "127.0.0.1", r));
    closers.push(() => new Promise((r) => app.close(r)));
    const url = `http://127.0.0.1:${(app.address() as net.AddressInfo).port}`;
    const text = await exchange(
      await startBind(url),
      get("/metrics?n=1"),
      get("/metrics?n=2"),
      get("/metrics?n=3", "Connection: close\r\n"),
    );
    const order = [...text.matchAll(/for \/metrics\?n=(\d)/g)].map((m) => m[1]);
    expect(order).toEqual(["1", "2", "3"]);
  });

  it("refuses a request with a body with a 400 that says so, and closes the connection", async () => {
    const up = await rawUpstream((s) => s.end("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
    closers.push(up.close);
    const text = await exchange(
      await startBind(up.url),
      "GET /metrics HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\n\r\nhello",
    );
    expect(text).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(text).toContain("scrapez bind: the request has a body: a scrape is a GET or HEAD without a body");
  });

  it("keeps one exporter connection for consecutive scrapes", async () => {
    const app = http.createServer((_req, res) => res.end("m 1\n"));
    await new Promise<void>((r) => app.listen(0, "127.0.0.1", r));
    closers.push(() => new Promise((r) => app.close(r)));
    let connections = 0;
    app.on("connection", () => connections++);
    const ov = await startBind(`http://127.0.0.1:${(app.address() as net.AddressInfo).port}`);
    for (let i = 0; i < 5; i++) expect((await scrape(ov, "s")).body).toBe("m 1\n");
    expect(connections).toBe(1);
  });

  it("does not reuse an exporter connection that sent bytes after its answer", async () => {
    const up = await rawUpstream((s) => s.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"));
    closers.push(up.close);
    const ov = await startBind(up.url);
    for (let i = 0; i < 3; i++) {
      const r = await scrape(ov, "s");
      expect(r.status).toBe(200);
      expect(r.body).toBe("ok");
    }
    // Each scrape had to open its own: the extra bytes made the connection unusable.
    await expect.poll(() => up.open()).toBe(0);
  });

  it("a HEAD answer passes its length with no body after it, and both connections serve the next request", async () => {
    const app = http.createServer((_req, res) => {
      res.setHeader("content-length", 12);
      res.end();
    });
    await new Promise<void>((r) => app.listen(0, "127.0.0.1", r));
    closers.push(() => new Promise((r) => app.close(r)));
    let connections = 0;
    app.on("connection", () => connections++);
    const text = await exchange(
      await startBind(`http://127.0.0.1:${(app.address() as net.AddressInfo).port}`),
      "HEAD /metrics HTTP/1.1\r\nHost: s\r\n\r\n",
      "HEAD /metrics HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n",
    );
    expect(text.match(/HTTP\/1\.1 200 OK\r\n/g)).toHaveLength(2);
    expect(text.match(/content-length: 12\r\n/gi)).toHaveLength(2);
    expect(connections).toBe(1);
  });

  it("after a 504 at the deadline, the dialer's connection carries the next scrape", async () => {
    const app = http.createServer((req, res) => {
      if (req.url?.includes("slow")) return void setTimeout(() => res.end("late\n"), 3_000);
      res.end("m 1\n");
    });
    await new Promise<void>((r) => app.listen(0, "127.0.0.1", r));
    closers.push(async () => {
      app.closeAllConnections();
      await new Promise((r) => app.close(r));
    });
    const url = `http://127.0.0.1:${(app.address() as net.AddressInfo).port}`;
    const text = await exchange(
      await startBind(url, { timeoutSeconds: 1 }),
      get("/metrics?slow=1"),
      get("/metrics", "Connection: close\r\n"),
    );
    expect(text).toMatch(/^HTTP\/1\.1 504 Gateway Timeout\r\n[\s\S]*did not answer within 1\.0s\n/);
    expect(text).toMatch(/HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\nm 1\n$/);
  });

  it("opens at most 4 exporter connections; scrapes beyond wait for one and are all answered", async () => {
    let open = 0;
    let most = 0;
    const app = http.createServer((_req, res) => setTimeout(() => res.end("m 1\n"), 100));
    app.on("connection", (s: net.Socket) => {
      most = Math.max(most, ++open);
      s.once("close", () => open--);
    });
    await new Promise<void>((r) => app.listen(0, "127.0.0.1", r));
    closers.push(async () => {
      app.closeAllConnections();
      await new Promise((r) => app.close(r));
    });
    const ov = await startBind(`http://127.0.0.1:${(app.address() as net.AddressInfo).port}`);
    const answers = await Promise.all(Array.from({ length: 10 }, () => scrape(ov, "s")));
    expect(answers.map((a) => a.body)).toEqual(Array(10).fill("m 1\n"));
    expect(most).toBe(4);
  });

  it.each<[string, 0 | 1, string[], boolean]>([
    ["HTTP/1.1", 1, [], true],
    ["HTTP/1.1 with Connection: close", 1, ["Connection", "Close"], false],
    ["HTTP/1.1 with close among other tokens", 1, ["connection", "te, close"], false],
    ["HTTP/1.0", 0, [], false],
    ["HTTP/1.0 with Connection: keep-alive", 0, ["Connection", "Keep-Alive"], true],
    ["a token that only contains close", 1, ["Connection", "closed"], true],
  ])("keepsAlive: %s", (_what, minor, headers, want) => {
    expect(keepsAlive(minor, headers)).toBe(want);
  });

  it("an exporter that closes idle connections: the next scrape gets a new one, never an error", async () => {
    const up = await rawUpstream((s) => {
      s.write("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nm 1\n");
      setTimeout(() => s.end(), 50);
    });
    closers.push(up.close);
    let connections = 0;
    up.server.on("connection", () => connections++);
    const ov = await startBind(up.url);
    for (let i = 0; i < 3; i++) {
      const r = await scrape(ov, "s");
      expect([r.status, r.body]).toEqual([200, "m 1\n"]);
      await new Promise((done) => setTimeout(done, 200));
    }
    expect(connections).toBe(3);
  });
});
