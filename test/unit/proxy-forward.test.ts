/**
 * src/proxy/overlay-forward.ts, the proxy's "forward one GET under a deadline" relay, between real loopback HTTP
 * servers: a front server whose handler forwards each request with a Forward over a pool (src/proxy/overlay-pool.ts)
 * whose connections are TCP sockets to an upstream (Node's HTTP server, or raw bytes over TCP where Node's server
 * would refuse to write them). The proxy's own tests check its wording of each failure over the real overlay; these
 * check what the module itself promises.
 */
import http from "node:http";
import net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { DIALED_AHEAD, answerProblem, requestHead, type ForwardFailure } from "../../src/common/forward.js";
import { Forward, type ForwardOptions } from "../../src/proxy/overlay-forward.js";
import { OverlayPool } from "../../src/proxy/overlay-pool.js";
import { waitUntil } from "../harness/ports.js";

const closers: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
});

function listen(s: net.Server): Promise<number> {
  closers.push(() => new Promise((r) => s.close(r)));
  return new Promise((r) => s.listen(0, "127.0.0.1", () => r((s.address() as net.AddressInfo).port)));
}

/** An upstream HTTP server; counts the connections it accepted. */
async function upstream(handler: http.RequestListener): Promise<{ port: number; connections: () => number }> {
  const s = http.createServer({ keepAliveTimeout: 60_000 }, handler);
  let n = 0;
  s.on("connection", () => n++);
  closers.push(() => s.closeAllConnections());
  return { port: await listen(s), connections: () => n };
}

/** An upstream that answers each connection's requests by `answer(socket, index of the request on it)`. */
async function rawUpstream(answer: (s: net.Socket, nth: number) => void): Promise<{ port: number; conns: number }> {
  const state = { port: 0, conns: 0 };
  const sockets = new Set<net.Socket>();
  const s = net.createServer((sock) => {
    state.conns++;
    sockets.add(sock);
    sock.on("error", () => undefined);
    let nth = 0;
    let buf = "";
    sock.on("data", (d) => {
      buf += d.toString("latin1");
      while (buf.includes("\r\n\r\n")) {
        buf = buf.slice(buf.indexOf("\r\n\r\n") + 4);
        answer(sock, nth++);
      }
    });
  });
  closers.push(() => sockets.forEach((x) => x.destroy()));
  state.port = await listen(s);
  return state;
}

interface Seen {
  failures: ForwardFailure[];
  cuts: number;
  retries: number;
  /** The body's data as the side's sink saw it (without chunk framing). */
  data: string;
}

/**
 * A front server forwarding every request to 127.0.0.1:`port` with a Forward over `pool` (TCP connections to the
 * upstream); a failure is answered `599 <kind>` (as a side would word it).
 */
async function front(
  port: number,
  opts: Partial<Omit<ForwardOptions, "started">> = {},
  pool: OverlayPool = tcpPool(port),
): Promise<{ port: number; seen: Seen; pool: OverlayPool }> {
  const seen: Seen = { failures: [], cuts: 0, retries: 0, data: "" };
  closers.push(() => pool.destroy());
  const s = http.createServer((req, res) => {
    const request = requestHead(req.method!, req.url!, `upstream:${port}`, req.rawHeaders, ["x-drop-me"]);
    new Forward(
      req,
      res,
      pool,
      request,
      { deadlineMs: 5_000, dialTimeoutMs: 5_000, ...opts },
      {
        fail: (f) => {
          seen.failures.push(f);
          res.writeHead(599, { "x-kind": f.kind }).end(f.kind === "invalid" ? f.problem.kind : f.kind);
        },
        passing: () => (d) => void (seen.data += d.toString("latin1")),
        cut: () => void seen.cuts++,
        retrying: () => void seen.retries++,
      },
    ).start();
  });
  closers.push(() => s.closeAllConnections());
  return { port: await listen(s), seen, pool };
}

/** A pool whose connections are TCP sockets to 127.0.0.1:`port` (as overlay dials are byte streams). */
function tcpPool(port: number, maxSockets = 4): OverlayPool {
  return new OverlayPool(
    () =>
      new Promise((resolve, reject) => {
        const c = net.connect(port, "127.0.0.1");
        c.once("connect", () => {
          c.off("error", reject);
          resolve(c);
        });
        c.once("error", reject);
      }),
    { maxSockets, keepAliveMs: 60_000 },
  );
}

/** Sends `raw` to the front and reads until the connection closes or `until` matches what arrived. */
function rawExchange(port: number, raw: string, until?: RegExp): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.connect(port, "127.0.0.1");
    let got = "";
    c.on("data", (d) => {
      got += d.toString("latin1");
      if (until?.test(got)) {
        c.destroy();
        resolve(got);
      }
    });
    c.on("close", () => resolve(got));
    c.on("error", reject);
    c.write(raw);
  });
}

function get(
  port: number,
  path = "/",
  headers: http.OutgoingHttpHeaders = {},
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: "127.0.0.1", port, path, headers, agent: false }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body }));
      res.on("error", reject);
      res.on("close", () => {
        if (!res.complete) reject(new Error(`the answer was cut after ${body.length} characters`));
      });
    });
    req.on("error", reject);
  });
}

describe("forward: headers", () => {
  it("sends neither hop-by-hop headers, those Connection names, content-length nor the side's; sets Host", async () => {
    let got: http.IncomingHttpHeaders = {};
    const up = await upstream((req, res) => {
      got = req.headers;
      res.end("ok");
    });
    const f = await front(up.port, { deadlineMs: 5_000 });
    const r = await get(f.port, "/metrics?x=1", {
      connection: "keep-alive, x-named",
      "x-named": "1",
      te: "trailers",
      "proxy-authorization": "Basic eA==",
      "x-drop-me": "secret",
      "x-keep": "kept",
      "content-length": "0",
    });
    expect(r).toMatchObject({ status: 200, body: "ok" });
    expect(got["x-keep"]).toBe("kept");
    expect(got.host).toBe(`upstream:${up.port}`);
    for (const h of ["x-named", "te", "proxy-authorization", "x-drop-me"]) expect(got[h]).toBeUndefined();
  });

  it("passes the answer's status, reason and headers on without its hop-by-hop ones", async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(203, "Fine Enough", {
        "x-a": "1",
        "x-hop": "2",
        connection: "x-hop",
        "proxy-authenticate": "Basic",
        "content-type": "text/plain",
      });
      res.end("body");
    });
    const f = await front(up.port, { deadlineMs: 5_000 });
    const r = await get(f.port);
    expect(r.status).toBe(203);
    expect(r.headers["x-a"]).toBe("1");
    expect(r.headers["content-type"]).toBe("text/plain");
    expect(r.headers["x-hop"]).toBeUndefined();
    expect(r.headers["proxy-authenticate"]).toBeUndefined();
    expect(r.body).toBe("body");
  });
});

/** GETs from the front and calls `release` once the body so far is `seen` (the upstream then finishes). */
function getReleasing(port: number, seen: string, release: () => void): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    http
      .get({ host: "127.0.0.1", port, agent: false }, (res) => {
        let b = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => {
          b += d;
          if (b === seen) release();
        });
        res.on("end", () => resolve(b));
      })
      .on("error", reject);
  });
}

describe("forward: the answer's body", () => {
  it("chunked: the upstream's bytes reach the client as they came, chunk framing included; the side sees the data", async () => {
    const body = "5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n";
    const up = await rawUpstream((sock) =>
      sock.write(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n${body}`),
    );
    const f = await front(up.port);
    const got = await rawExchange(f.port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", /\r\n\r\n[^]*\r\n\r\n$/);
    const [head, rest] = [got.slice(0, got.indexOf("\r\n\r\n")), got.slice(got.indexOf("\r\n\r\n") + 4)];
    expect(head).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(head.toLowerCase()).toContain("transfer-encoding: chunked");
    expect(head.toLowerCase()).toContain("connection: keep-alive");
    expect(rest).toBe(body);
    expect(f.seen.data).toBe("hello, world");
    // The connection went back to the pool: a second scrape uses it.
    expect((await get(f.port)).status).toBe(200);
    expect(up.conns).toBe(1);
  });

  it("chunked, to an HTTP/1.0 client: the data alone, ended by the close (it cannot read chunks)", async () => {
    const up = await rawUpstream((sock) =>
      sock.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n"),
    );
    const f = await front(up.port);
    const got = await rawExchange(f.port, "GET /metrics HTTP/1.0\r\n\r\n");
    expect(got.toLowerCase()).not.toContain("transfer-encoding");
    expect(got.slice(got.indexOf("\r\n\r\n") + 4)).toBe("hello!");
  });

  it("an interim 100 Continue before the answer is skipped", async () => {
    const up = await rawUpstream((sock) =>
      sock.write("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    );
    const f = await front(up.port);
    expect(await get(f.port)).toMatchObject({ status: 200, body: "ok" });
  });

  it("an answer framed by its connection's close reaches the client whole, and the connection is not pooled", async () => {
    const up = await rawUpstream((sock) => sock.end("HTTP/1.1 200 OK\r\n\r\nuntil the end"));
    const f = await front(up.port);
    expect(await get(f.port)).toMatchObject({ status: 200, body: "until the end" });
    expect(await get(f.port)).toMatchObject({ status: 200, body: "until the end" });
    expect(up.conns).toBe(2);
  });

  it("without a length: what arrived is passed on as soon as more arrives later, before the answer ends", async () => {
    let release: () => void = () => undefined;
    const up = await upstream((_req, res) => {
      res.writeHead(200);
      res.write("one,");
      setTimeout(() => res.write("two,"), 50);
      release = () => res.end("three");
    });
    const f = await front(up.port, { deadlineMs: 5_000 });
    const body = await getReleasing(f.port, "one,two,", () => release());
    expect(body).toBe("one,two,three");
  });

  it("with a length: each chunk is passed on as it arrives", async () => {
    let release: () => void = () => undefined;
    const up = await upstream((_req, res) => {
      res.writeHead(200, { "content-length": "8" });
      res.write("half");
      release = () => res.end("done");
    });
    const f = await front(up.port, { deadlineMs: 5_000 });
    const body = await getReleasing(f.port, "half", () => release());
    expect(body).toBe("halfdone");
  });

  it("a large answer to a client that reads slowly arrives whole (backpressure holds, nothing is dropped)", async () => {
    const chunk = Buffer.alloc(64 * 1024);
    for (let i = 0; i < chunk.length; i++) chunk[i] = i % 251;
    const n = 64; // 4 MiB, chunked
    const up = await upstream(async (_req, res) => {
      res.writeHead(200);
      for (let i = 0; i < n; i++) if (!res.write(chunk)) await new Promise((r) => res.once("drain", r));
      res.end();
    });
    const f = await front(up.port, { deadlineMs: 20_000 });
    const got = await new Promise<Buffer>((resolve, reject) => {
      http
        .get({ host: "127.0.0.1", port: f.port, agent: false }, (res) => {
          const parts: Buffer[] = [];
          res.on("data", (d: Buffer) => {
            parts.push(d);
            res.pause();
            setTimeout(() => res.resume(), 1);
          });
          res.on("end", () => resolve(Buffer.concat(parts)));
        })
        .on("error", reject);
    });
    expect(got.length).toBe(chunk.length * n);
    for (let i = 0; i < n; i++) expect(got.subarray(i * chunk.length, (i + 1) * chunk.length).equals(chunk)).toBe(true);
  });
});

describe("forward: answers that cannot be passed on", () => {
  it.each([
    ["HTTP/1.1 099 OK\r\nContent-Length: 2\r\n\r\nok", "status"],
    ["HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok", "reason"],
    ["HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n", "upgrade"],
  ])("%j: the side answers instead, naming the problem (%s), and none of it is passed on", async (bytes, kind) => {
    const up = await rawUpstream((s) => s.end(Buffer.from(bytes, "latin1")));
    const f = await front(up.port, { deadlineMs: 5_000 });
    const r = await get(f.port);
    expect(r).toMatchObject({ status: 599, body: kind });
    expect(f.seen.failures).toEqual([{ kind: "invalid", problem: expect.objectContaining({ kind }) }]);
  });

  it("answerProblem names each kind a server could not write, and passes what it can", () => {
    expect(answerProblem(200, "OK", ["X-A", "b"])).toBeUndefined();
    expect(answerProblem(799, "", [])).toBeUndefined();
    expect(answerProblem(0, "OK", [])).toEqual({ kind: "status", status: 0, reason: "OK" });
    expect(answerProblem(undefined, undefined, [])).toEqual({ kind: "status", status: undefined, reason: "" });
    expect(answerProblem(200, "O\nK", [])).toEqual({ kind: "reason", status: 200, reason: "O\nK" });
    expect(answerProblem(200, "OK", ["X A", "b"])).toEqual({ kind: "header-name", name: "X A" });
    expect(answerProblem(200, "OK", ["X-A", "a\x00b"])).toEqual({ kind: "header-value", name: "X-A" });
  });
});

describe("forward: a stale pooled connection", () => {
  it("a connection dialed ahead that the far end closed while it waited (our writing side ended) is retried at once", async () => {
    const up = await upstream((_req, res) => res.end("fresh"));
    let dials = 0;
    const pool = new OverlayPool(
      () =>
        new Promise((resolve, reject) => {
          const c = net.connect(up.port, "127.0.0.1");
          c.once("error", reject);
          c.once("connect", () => {
            // The first is the warm-up's: closed by the far end meanwhile, which ends our writing side too.
            if (dials++ === 0) c.end();
            resolve(Object.assign(c, { [DIALED_AHEAD]: dials === 1 }));
          });
        }),
      { maxSockets: 4, keepAliveMs: 60_000 },
    );
    const f = await front(up.port, {}, pool);
    expect(await get(f.port)).toMatchObject({ status: 200, body: "fresh" });
    expect(f.seen.retries).toBe(1);
    expect(dials).toBe(2);
  });

  it("is retried once on a fresh connection when the upstream closed it while idle", async () => {
    // Each connection answers its first request and resets at the second: the pooled one is stale.
    const up = await rawUpstream((s, nth) => {
      if (nth === 0) s.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok");
      else s.resetAndDestroy();
    });
    const f = await front(up.port, { deadlineMs: 5_000 });
    expect(await get(f.port)).toMatchObject({ status: 200, body: "ok" });
    expect(await get(f.port)).toMatchObject({ status: 200, body: "ok" });
    expect(f.seen.retries).toBe(1);
    expect(up.conns).toBe(2);
    expect(f.seen.failures).toEqual([]);
  });

  it("is not retried a second time: a fresh connection that fails too is the side's failure", async () => {
    const up = await rawUpstream((s, nth) => {
      if (nth === 0 && up.conns === 1) s.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
      else s.resetAndDestroy();
    });
    const f = await front(up.port, { deadlineMs: 5_000 });
    expect((await get(f.port)).status).toBe(200);
    expect(await get(f.port)).toMatchObject({ status: 599, body: "error" });
    expect(f.seen.retries).toBe(1);
    expect(f.seen.failures.map((x) => x.kind)).toEqual(["error"]);
  });
});

describe("forward: the deadline", () => {
  it("before an answer: the side answers the timeout once, and the connection is held for the late answer", async () => {
    let late: http.ServerResponse | undefined;
    const up = await upstream((_req, res) => void (late = res));
    const f = await front(up.port, { deadlineMs: 200 });
    expect(await get(f.port)).toMatchObject({ status: 599, body: "timeout" });
    expect(f.seen.failures).toEqual([{ kind: "timeout" }]);
    // Still held for a late answer: open, not idle, until it comes.
    expect(f.pool.counts).toMatchObject({ open: 1, idle: 0 });
    late!.end("late");
    await waitUntil(() => f.pool.counts.idle === 1, 5_000, "the connection back in the pool");
  });

  it("before an answer: the late answer is read to its end and the connection kept for the next request", async () => {
    let n = 0;
    const up = await upstream((_req, res) => {
      if (n++ === 0) setTimeout(() => res.end("late"), 400);
      else res.end("second");
    });
    const f = await front(up.port, { deadlineMs: 150 });
    expect(await get(f.port)).toMatchObject({ status: 599, body: "timeout" });
    await waitUntil(() => f.pool.counts.idle === 1, 5_000, "the connection back in the pool");
    expect(await get(f.port)).toMatchObject({ status: 200, body: "second" });
    expect(up.connections()).toBe(1);
  });

  it("while the answer is passing: the client's connection is cut and the side hears it, not a failure", async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { "content-length": "10" });
      res.write("abc"); // and never the rest
    });
    const f = await front(up.port, { deadlineMs: 300 });
    await expect(get(f.port)).rejects.toThrow();
    expect(f.seen.cuts).toBe(1);
    expect(f.seen.failures).toEqual([]);
  });
});

describe("forward: a client that leaves", () => {
  it("gets nothing answered; the late answer is read to its end and its connection serves the next scrape", async () => {
    let arrived = 0;
    let answerFirst: () => void = () => undefined;
    const up = await upstream((_req, res) => {
      if (arrived++ === 0) answerFirst = () => res.end("late");
      else res.end("second");
    });
    const f = await front(up.port, { deadlineMs: 10_000 });
    const c = net.connect(f.port, "127.0.0.1");
    c.on("error", () => undefined);
    c.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    await waitUntil(() => arrived === 1, 5_000, "the request upstream");
    c.destroy();
    await new Promise((r) => setTimeout(r, 50));
    answerFirst();
    await waitUntil(() => f.pool.counts.idle === 1, 5_000, "the connection back in the pool");
    expect(await get(f.port)).toMatchObject({ status: 200, body: "second" });
    expect(up.connections()).toBe(1);
    expect(f.seen.failures).toEqual([]);
  });

  it("while its answer is passing: the rest is read and dropped, and the connection is kept", async () => {
    const big = "x".repeat(4 * 1024 * 1024);
    let n = 0;
    const up = await upstream((_req, res) => res.end(n++ === 0 ? big : "second"));
    const f = await front(up.port);
    await new Promise<void>((resolve) => {
      const c = net.connect(f.port, "127.0.0.1");
      c.on("error", () => undefined);
      c.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
      c.once("data", () => {
        c.destroy();
        resolve();
      });
    });
    await waitUntil(() => f.pool.counts.idle === 1, 5_000, "the connection back in the pool");
    expect(await get(f.port)).toMatchObject({ status: 200, body: "second" });
    expect(up.connections()).toBe(1);
  });
});
