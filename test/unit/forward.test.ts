/**
 * src/common/forward.ts, the one "forward one GET under a deadline" both scrapez servers use, between real loopback
 * HTTP servers: a front server whose handler forwards each request with a Forward, and an upstream (Node's HTTP
 * server, or raw bytes over TCP where Node's server would refuse to write them). The proxy's and the bind's own
 * tests check their wording of each failure; these check what the module itself promises.
 */
import http from "node:http";
import net from "node:net";
import { Duplex } from "node:stream";
import { afterEach, describe, expect, it } from "vitest";
import {
  Forward,
  answerProblem,
  upstreamHeaders,
  type ForwardFailure,
  type ForwardOptions,
} from "../../src/common/forward.js";
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
}

/**
 * A front server forwarding every request to 127.0.0.1:`port` through `agent` with a Forward; a failure is answered
 * `599 <kind>` (as a side would word it).
 */
async function front(
  port: number,
  opts: Omit<ForwardOptions, "started">,
  agent: http.Agent = new http.Agent({ keepAlive: true, maxSockets: 4 }),
): Promise<{ port: number; seen: Seen; agent: http.Agent }> {
  const seen: Seen = { failures: [], cuts: 0, retries: 0 };
  closers.push(() => agent.destroy());
  const s = http.createServer((req, res) => {
    const headers = upstreamHeaders(req.headers, `upstream:${port}`, ["x-drop-me"]);
    new Forward(req, res, opts, {
      open: () => http.request({ agent, host: "127.0.0.1", port, path: req.url, method: req.method, headers }),
      fail: (f) => {
        seen.failures.push(f);
        res.writeHead(599, { "x-kind": f.kind }).end(f.kind === "invalid" ? f.problem.kind : f.kind);
      },
      cut: () => void seen.cuts++,
      retrying: () => void seen.retries++,
    }).start();
  });
  closers.push(() => s.closeAllConnections());
  return { port: await listen(s), seen, agent };
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
    const f = await front(up.port, { deadlineMs: 5_000, abandon: "destroy" });
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
    const f = await front(up.port, { deadlineMs: 5_000, abandon: "spare" });
    const r = await get(f.port);
    expect(r.status).toBe(203);
    expect(r.headers["x-a"]).toBe("1");
    expect(r.headers["content-type"]).toBe("text/plain");
    expect(r.headers["x-hop"]).toBeUndefined();
    expect(r.headers["proxy-authenticate"]).toBeUndefined();
    expect(r.body).toBe("body");
  });
});

/**
 * A front server whose client connection is an in-memory Duplex (as the bind's overlay connections are): each write
 * batch Node hands the connection is recorded as it arrives, so a test can see which bytes left together.
 */
function duplexFront(port: number): { request: (raw: string) => Promise<Buffer[]>; writes: Buffer[] } {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  closers.push(() => agent.destroy());
  const s = http.createServer((req, res) => {
    const headers = upstreamHeaders(req.headers, `upstream:${port}`);
    new Forward(
      req,
      res,
      { deadlineMs: 5_000, abandon: "destroy" },
      {
        open: () => http.request({ agent, host: "127.0.0.1", port, path: req.url, method: req.method, headers }),
        fail: (f) => res.writeHead(599).end(f.kind),
      },
    ).start();
  });
  const writes: Buffer[] = [];
  return {
    writes,
    request: (raw) =>
      new Promise((resolve) => {
        let done: () => void = () => undefined;
        const conn = new Duplex({
          read() {},
          writev(chunks, cb) {
            writes.push(Buffer.concat(chunks.map((c) => c.chunk as Buffer)));
            if (writes[writes.length - 1]!.toString("latin1").endsWith("0\r\n\r\n")) done();
            cb();
          },
          write(chunk: Buffer, _enc, cb) {
            writes.push(Buffer.from(chunk));
            if (chunk.toString("latin1").endsWith("0\r\n\r\n")) done();
            cb();
          },
        });
        done = () => {
          resolve(writes);
          conn.destroy();
        };
        s.emit("connection", conn);
        conn.push(raw);
      }),
  };
}

describe("forward: the answer's body", () => {
  it("without a length: reaches the client byte for byte, its last chunk and the terminator in one write", async () => {
    const parts = ["first part\n", "second part\n", "x".repeat(40_000), "last part\n"];
    const up = await upstream(async (_req, res) => {
      res.writeHead(200, { "content-type": "text/plain; version=0.0.4" });
      for (const p of parts) {
        res.write(p);
        await new Promise((r) => setTimeout(r, 20));
      }
      res.end();
    });
    const f = duplexFront(up.port);
    const writes = await f.request("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    const all = Buffer.concat(writes).toString("latin1");
    const [head, chunked] = [all.slice(0, all.indexOf("\r\n\r\n")), all.slice(all.indexOf("\r\n\r\n") + 4)];
    expect(head).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(head.toLowerCase()).toContain("transfer-encoding: chunked");
    // Decode the chunked body: exactly the upstream's bytes.
    let body = "";
    for (let rest = chunked; ;) {
      const eol = rest.indexOf("\r\n");
      const n = parseInt(rest.slice(0, eol), 16);
      if (n === 0) break;
      body += rest.slice(eol + 2, eol + 2 + n);
      rest = rest.slice(eol + 2 + n + 2);
    }
    expect(body).toBe(parts.join(""));
    const last = writes[writes.length - 1]!.toString("latin1");
    const lastPart = parts[parts.length - 1]!;
    expect(last).toBe(`${lastPart.length.toString(16)}\r\n${lastPart}\r\n0\r\n\r\n`);
  });

  it("without a length: what arrived is passed on as soon as more arrives later, before the answer ends", async () => {
    let release: () => void = () => undefined;
    const up = await upstream((_req, res) => {
      res.writeHead(200);
      res.write("one,");
      setTimeout(() => res.write("two,"), 50);
      release = () => res.end("three");
    });
    const f = await front(up.port, { deadlineMs: 5_000, abandon: "destroy" });
    const body = await new Promise<string>((resolve, reject) => {
      http
        .get({ host: "127.0.0.1", port: f.port, agent: false }, (res) => {
          let b = "";
          res.setEncoding("utf8");
          res.on("data", (d: string) => {
            b += d;
            if (b === "one,") release();
          });
          res.on("end", () => resolve(b));
        })
        .on("error", reject);
    });
    expect(body).toBe("one,two,three");
  });

  it("without a length: the chunks that arrive together leave as one chunk, byte for byte", async () => {
    const parts = Array.from({ length: 50 }, (_, i) => `metric_${i}{a="b"} ${i}\n`);
    const up = await upstream((_req, res) => {
      res.writeHead(200, { "content-type": "text/plain" });
      res.cork(); // 50 chunks in one segment, as an exporter's buffered writer sends them
      for (const p of parts) res.write(p);
      res.uncork();
      setTimeout(() => res.end(), 50);
    });
    const f = duplexFront(up.port);
    const all = Buffer.concat(await f.request("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")).toString("latin1");
    const sizes: number[] = [];
    let body = "";
    for (let rest = all.slice(all.indexOf("\r\n\r\n") + 4); ;) {
      const eol = rest.indexOf("\r\n");
      const n = parseInt(rest.slice(0, eol), 16);
      if (n === 0) break;
      sizes.push(n);
      body += rest.slice(eol + 2, eol + 2 + n);
      rest = rest.slice(eol + 2 + n + 2);
    }
    expect(body).toBe(parts.join(""));
    expect(sizes).toEqual([body.length]);
  });

  it("with a length: each chunk is passed on as it arrives", async () => {
    let release: () => void = () => undefined;
    const up = await upstream((_req, res) => {
      res.writeHead(200, { "content-length": "8" });
      res.write("half");
      release = () => res.end("done");
    });
    const f = await front(up.port, { deadlineMs: 5_000, abandon: "destroy" });
    const body = await new Promise<string>((resolve, reject) => {
      http
        .get({ host: "127.0.0.1", port: f.port, agent: false }, (res) => {
          let b = "";
          res.setEncoding("utf8");
          res.on("data", (d: string) => {
            b += d;
            if (b === "half") release();
          });
          res.on("end", () => resolve(b));
        })
        .on("error", reject);
    });
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
    const f = await front(up.port, { deadlineMs: 20_000, abandon: "destroy" });
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
    const f = await front(up.port, { deadlineMs: 5_000, abandon: "destroy" });
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
  it("is retried once on a fresh connection when the upstream closed it while idle", async () => {
    // Each connection answers its first request and resets at the second: the pooled one is stale.
    const up = await rawUpstream((s, nth) => {
      if (nth === 0) s.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok");
      else s.resetAndDestroy();
    });
    const f = await front(up.port, { deadlineMs: 5_000, abandon: "spare" });
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
    const f = await front(up.port, { deadlineMs: 5_000, abandon: "spare" });
    expect((await get(f.port)).status).toBe(200);
    expect(await get(f.port)).toMatchObject({ status: 599, body: "error" });
    expect(f.seen.retries).toBe(1);
    expect(f.seen.failures.map((x) => x.kind)).toEqual(["error"]);
  });
});

describe("forward: the deadline", () => {
  it("before an answer: the side answers the timeout once; 'destroy' closes the upstream connection", async () => {
    let closed = false;
    const up = await upstream((req) => req.socket.once("close", () => (closed = true)));
    const f = await front(up.port, { deadlineMs: 200, abandon: "destroy" });
    expect(await get(f.port)).toMatchObject({ status: 599, body: "timeout" });
    await waitUntil(() => closed, 5_000, "the upstream connection closed");
    expect(f.seen.failures).toEqual([{ kind: "timeout" }]);
  });

  it("before an answer: 'spare' reads the late answer to its end and keeps the connection for the next request", async () => {
    let n = 0;
    const up = await upstream((_req, res) => {
      if (n++ === 0) setTimeout(() => res.end("late"), 400);
      else res.end("second");
    });
    const f = await front(up.port, { deadlineMs: 150, abandon: "spare" });
    expect(await get(f.port)).toMatchObject({ status: 599, body: "timeout" });
    await waitUntil(
      () => Object.values(f.agent.freeSockets).some((l) => (l?.length ?? 0) > 0),
      5_000,
      "the connection back in the pool",
    );
    expect(await get(f.port)).toMatchObject({ status: 200, body: "second" });
    expect(up.connections()).toBe(1);
  });

  it("while the answer is passing: the client's connection is cut and the side hears it, not a failure", async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { "content-length": "10" });
      res.write("abc"); // and never the rest
    });
    const f = await front(up.port, { deadlineMs: 300, abandon: "destroy" });
    await expect(get(f.port)).rejects.toThrow();
    expect(f.seen.cuts).toBe(1);
    expect(f.seen.failures).toEqual([]);
  });
});

describe("forward: a client that leaves", () => {
  it("gets nothing answered, and 'destroy' closes the upstream request at once", async () => {
    let upstreamClosed = false;
    let arrived = false;
    const up = await upstream((req) => {
      arrived = true;
      req.socket.once("close", () => (upstreamClosed = true));
    });
    const f = await front(up.port, { deadlineMs: 10_000, abandon: "destroy" });
    const c = net.connect(f.port, "127.0.0.1");
    c.on("error", () => undefined);
    c.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    await waitUntil(() => arrived, 5_000, "the request upstream");
    c.destroy();
    await waitUntil(() => upstreamClosed, 5_000, "the upstream connection closed");
    expect(f.seen.failures).toEqual([]);
  });
});
