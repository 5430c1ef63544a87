/**
 * src/proxy/front.ts: scrapes on a plain listener are read and answered before Node's HTTP server, everything else
 * is handed to Node's server with its bytes, so it is answered as before. Over the in-memory overlay stand-in, with
 * raw sockets as the client, so each test sees the exact bytes on the connection.
 */
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { headerObject } from "../../src/proxy/front-response.js";
import { StandInOverlay, Upstream, startProxy, testDir, type Running } from "../harness/proxy-standin.js";
import { waitUntil } from "../harness/ports.js";

const METRICS = "# TYPE app_requests_total counter\napp_requests_total 42\n";
const td = testDir();
let app: Upstream;
let chunked: Upstream;
let slow: Upstream;
const overlay = new StandInOverlay();
let p: Running;

beforeAll(async () => {
  app = await new Upstream((req, res) => {
    res.writeHead(200, { "content-type": "text/plain; version=0.0.4", "content-length": METRICS.length });
    res.end(req.method === "HEAD" ? undefined : METRICS);
  }).start();
  chunked = await new Upstream((_req, res) => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.write("one\n");
    setTimeout(() => res.end("two\n"), 5);
  }).start();
  slow = await new Upstream((_req, res) => void setTimeout(() => res.end("late\n"), 300)).start();
  overlay.add("app", { port: app.port }).add("chunky", { port: chunked.port }).add("slow", { port: slow.port });
  p = await startProxy(td.dir, [overlay], { timeouts: { dialSeconds: 1, defaultScrapeSeconds: 5 } });
});

afterAll(async () => {
  await p?.close();
  await app?.close();
  await chunked?.close();
  await slow?.close();
  td.remove();
});

/** A raw client connection: write bytes, read until `n` complete answers (by Content-Length or chunked end). */
class Client {
  readonly sock: net.Socket;
  #got = "";
  closed = false;
  constructor(port: number) {
    this.sock = net.connect(port, "127.0.0.1");
    this.sock.on("data", (d: Buffer) => (this.#got += d.toString("latin1")));
    this.sock.on("close", () => (this.closed = true));
    this.sock.on("error", () => undefined);
  }
  /** Everything received so far. */
  get raw(): string {
    return this.#got;
  }
  send(s: string): void {
    this.sock.write(s);
  }
  /** Waits for `n` answers in all and returns them (heads and bodies as text). */
  async answers(n: number): Promise<string[]> {
    let out: string[] = [];
    await waitUntil(
      () => {
        out = splitAnswers(this.#got);
        return out.length >= n;
      },
      5_000,
      `${n} answers`,
    );
    return out;
  }
}

function splitAnswers(s: string): string[] {
  const out: string[] = [];
  let rest = s;
  for (;;) {
    const end = rest.indexOf("\r\n\r\n");
    if (end < 0) return out;
    const head = rest.slice(0, end);
    let bodyEnd: number;
    const cl = /\r\ncontent-length: *(\d+)/i.exec(head);
    if (cl) bodyEnd = end + 4 + Number(cl[1]);
    else if (/\r\ntransfer-encoding: *chunked/i.test(head)) {
      const z = rest.indexOf("\r\n0\r\n\r\n", end);
      if (z < 0) return out;
      bodyEnd = z + 7;
    } else bodyEnd = end + 4;
    if (rest.length < bodyEnd) return out;
    out.push(rest.slice(0, bodyEnd));
    rest = rest.slice(bodyEnd);
  }
}

const SCRAPE = "GET http://app/metrics HTTP/1.1\r\nHost: app\r\nUser-Agent: Prometheus/3\r\n\r\n";

describe("the proxy's front", () => {
  it("answers scrapes on one kept-alive connection, with Node's framing and keep-alive headers", async () => {
    const c = new Client(p.port);
    for (let i = 0; i < 20; i++) c.send(SCRAPE);
    const got = await c.answers(20);
    for (const a of got) {
      expect(a).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
      expect(a).toMatch(/\r\nConnection: keep-alive\r\nKeep-Alive: timeout=75\r\n/);
      expect(a).toMatch(/\r\nDate: /);
      expect(a.endsWith(`\r\n\r\n${METRICS}`)).toBe(true);
    }
    await waitUntil(() => p.proxy.frontConnections === 1, 5_000, "one connection, with the front");
    c.sock.destroy();
  });

  it("passes a chunked answer on as it came, and a HEAD gets the head alone", async () => {
    const c = new Client(p.port);
    c.send("GET http://chunky/metrics HTTP/1.1\r\nHost: chunky\r\n\r\n");
    const [a] = await c.answers(1);
    expect(a).toMatch(/\r\nTransfer-Encoding: chunked\r\n/);
    expect(a!.slice(a!.indexOf("\r\n\r\n") + 4)).toBe("4\r\none\n\r\n4\r\ntwo\n\r\n0\r\n\r\n");
    c.send(SCRAPE);
    const [, get] = await c.answers(2);
    expect(get!.endsWith(METRICS)).toBe(true);
    c.sock.destroy();
    const h = new Client(p.port);
    h.send("HEAD http://app/metrics HTTP/1.1\r\nHost: app\r\n\r\n");
    await waitUntil(() => h.raw.endsWith("\r\n\r\n"), 5_000, "the HEAD answer");
    await new Promise((r) => setTimeout(r, 100));
    expect(h.raw).toMatch(/^HTTP\/1\.1 200 OK\r\n[^]*content-length: \d+\r\n[^]*\r\n\r\n$/i);
    h.sock.destroy();
  });

  it("a head that arrives byte by byte is answered", async () => {
    const c = new Client(p.port);
    for (const ch of SCRAPE) {
      c.send(ch);
      await new Promise((r) => setImmediate(r));
    }
    const [a] = await c.answers(1);
    expect(a!.endsWith(METRICS)).toBe(true);
    c.sock.destroy();
  });

  it("hands the connection to Node's server for anything else, which answers it and what follows as before", async () => {
    const c = new Client(p.port);
    c.send(SCRAPE);
    await c.answers(1);
    await waitUntil(() => p.proxy.frontConnections === 1, 5_000, "only this connection with the front");
    // Origin-form: Node's server and the proxy's routing answer it (health), then the scrape after it.
    c.send("GET /-/healthy HTTP/1.1\r\nHost: localhost\r\n\r\n");
    const [, healthy] = await c.answers(2);
    expect(healthy).toMatch(/^HTTP\/1\.1 200 OK\r\n[^]*scrapez proxy is healthy\n$/);
    await waitUntil(() => p.proxy.frontConnections === 0, 5_000, "the connection handed to Node");
    c.send(SCRAPE);
    const [, , again] = await c.answers(3);
    expect(again!.endsWith(METRICS)).toBe(true);
    c.sock.destroy();
  });

  it.each([
    // Node's parser is more lenient than the front's (two spaces pass): either way Node answers as it did.
    ["a request line with two spaces", "GET  http://app/metrics HTTP/1.1\r\nHost: app\r\n\r\n", /^HTTP\/1\.1 200 OK/],
    [
      "HTTP/1.0",
      "GET http://app/metrics HTTP/1.0\r\nHost: app\r\n\r\n",
      /^HTTP\/1\.1 200 OK[^]*app_requests_total 42\n$/,
    ],
    ["a POST", "POST http://app/metrics HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\n\r\n", /^HTTP\/1\.1 405 /],
    ["a body", "GET http://app/metrics HTTP/1.1\r\nHost: app\r\nContent-Length: 2\r\n\r\nhi", /^HTTP\/1\.1 200 OK/],
  ])("%s goes to Node's server, answered as before", async (_what, bytes, want) => {
    const c = new Client(p.port);
    c.send(bytes);
    const [a] = await c.answers(1);
    expect(a).toMatch(want);
    c.sock.destroy();
  });

  it("a request line that is not HTTP goes to Node's parser, whose client error closes the connection as before", async () => {
    const c = new Client(p.port);
    c.send("NOT-HTTP\r\n\r\n");
    await waitUntil(() => c.closed, 5_000, "the connection closed");
    expect(c.raw).toBe("");
  });

  it("Node's timeouts hold: a head not complete within headersTimeout, and a connection idle for keepAliveTimeout, are closed", async () => {
    const q = await startProxy(td.dir, [overlay], { timeouts: { dialSeconds: 1, defaultScrapeSeconds: 5 } });
    q.proxy.server.headersTimeout = 300;
    q.proxy.server.keepAliveTimeout = 600;
    const partial = new Client(q.port);
    const idle = new Client(q.port);
    const sent = Date.now();
    idle.send(SCRAPE);
    await idle.answers(1);
    const t0 = Date.now();
    partial.send("GET http://app/metrics HTTP/1.1\r\nHost: a");
    await waitUntil(() => partial.closed, 5_000, "the unfinished head's connection closed");
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    expect(partial.raw).toBe("");
    await waitUntil(() => idle.closed, 5_000, "the idle connection closed");
    // Idle from its answer's end, which came after `sent` (waitUntil polls, so t0 may be well after that end).
    expect(Date.now() - sent).toBeGreaterThanOrEqual(550);
    await q.close();
  });

  it("Node's headers are what a handler reads: lower-case names, duplicates joined or dropped as Node does", () => {
    expect(
      headerObject([
        "Host",
        "a",
        "host",
        "b",
        "X-Y",
        "1",
        "x-y",
        "2",
        "Cookie",
        "c=1",
        "cookie",
        "d=2",
        "Set-Cookie",
        "s",
      ]),
    ).toEqual({ host: "a", "x-y": "1, 2", cookie: "c=1; d=2", "set-cookie": ["s"] });
  });

  it("a graceful stop closes idle front connections at once and ends an answer in flight with Connection: close", async () => {
    const q = await startProxy(td.dir, [overlay], { timeouts: { dialSeconds: 1, defaultScrapeSeconds: 5 } });
    const idle = new Client(q.port);
    idle.send(SCRAPE);
    await idle.answers(1);
    const busy = new Client(q.port);
    busy.send("GET http://slow/metrics HTTP/1.1\r\nHost: slow\r\n\r\n");
    await waitUntil(() => q.proxy.inFlight === 1, 5_000, "the slow scrape in flight");
    const drained = q.proxy.drain(5_000);
    await waitUntil(() => idle.closed, 5_000, "the idle connection closed");
    const [a] = await busy.answers(1);
    expect(a).toMatch(/\r\nConnection: close\r\n[^]*late\n$/);
    await waitUntil(() => busy.closed, 5_000, "the busy connection closed after its answer");
    expect((await drained).unfinished).toBe(0);
    await q.close();
  });
});
