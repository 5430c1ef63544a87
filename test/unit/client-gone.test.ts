/**
 * A client that leaves before its answer is done must free what the answer holds, also when its request was
 * pipelined behind another (Node never emits 'close' on such a queued response). Found by the HTTP fuzz of the
 * real proxy: after a few pipelined requests whose client closed, every pooled overlay connection of a service was
 * held by a paused upstream answer and every later scrape of that service timed out.
 */
import http from "node:http";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, describe, expect, it } from "vitest";
import { onClientGone } from "../../src/common/client-gone.js";
import { httpCase, runCase, type FuzzCase } from "../harness/http-fuzz.js";
import { waitUntil } from "../harness/ports.js";
import { prng } from "./prng.js";
import { StandInOverlay, Upstream, request, startProxy, testDir, type Running } from "../harness/proxy-standin.js";

const closers: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const c of closers.reverse()) await c();
});

function server(handler: http.RequestListener): Promise<number> {
  const s = http.createServer({ keepAliveTimeout: 60_000 }, handler);
  closers.push(() => {
    s.closeAllConnections();
    s.close();
  });
  return new Promise((r) => s.listen(0, "127.0.0.1", () => r((s.address() as net.AddressInfo).port)));
}

/** A scrapez proxy whose stand-in overlay has one service, `service`, answered by `handler`. */
async function proxyTo(
  service: string,
  maxSocketsPerService: number,
  handler: http.RequestListener,
): Promise<{ r: Running; overlay: StandInOverlay }> {
  const app = await new Upstream(handler).start();
  closers.push(() => app.close());
  const overlay = new StandInOverlay().add(service, { port: app.port });
  const td = testDir();
  closers.push(() => td.remove());
  const r = await startProxy(td.dir, [overlay], { agent: { maxSocketsPerService, keepAliveSeconds: 60 } });
  closers.push(() => r.close());
  return { r, overlay };
}

describe("onClientGone", () => {
  it("fires for both pipelined requests when the client closes, though Node never closes the queued response", async () => {
    const gone: string[] = [];
    const closed: string[] = [];
    const port = await server((req, res) => {
      res.once("close", () => closed.push(req.url!));
      onClientGone(req, res, () => gone.push(req.url!));
      // Each answer is larger than the socket accepts at once, so the second stays queued behind the first.
      setTimeout(() => {
        res.writeHead(200);
        res.write(Buffer.alloc(200_000));
      }, 50);
    });
    const s = net.connect(port, "127.0.0.1");
    s.write("GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n");
    await new Promise((r) => setTimeout(r, 250));
    s.destroy();
    await waitUntil(() => gone.length === 2, 5_000, "both requests seen as gone");
    expect(gone.sort()).toEqual(["/a", "/b"]);
    // What made this needed: the queued response itself never says so.
    expect(closed).toEqual(["/a"]);
  });

  it("does not fire for answers that complete, and leaves no listener behind on a keep-alive socket", async () => {
    let gone = 0;
    let socket: net.Socket | undefined;
    const port = await server((req, res) => {
      socket = req.socket;
      onClientGone(req, res, () => gone++);
      res.end("ok");
    });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    closers.push(() => agent.destroy());
    const before: number[] = [];
    for (let i = 0; i < 30; i++) {
      await new Promise<void>((resolve, reject) =>
        http
          .get({ host: "127.0.0.1", port, path: "/", agent }, (res) => {
            res.resume();
            res.on("end", resolve);
          })
          .on("error", reject),
      );
      before.push(socket!.listenerCount("close"));
    }
    expect(gone).toBe(0);
    // One keep-alive connection served all 30: its 'close' listeners did not grow with them.
    expect(new Set(before).size).toBe(1);
  });
});

describe("scrapez proxy: pipelined requests whose client left free their pooled overlay connection", () => {
  it("with one connection per service, scrapes keep working after many abandoned pipelined requests", async () => {
    const big = "x".repeat(300_000);
    const { r } = await proxyTo("app", 1, (_req, res) => {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end(big);
    });
    for (let i = 0; i < 6; i++) {
      const s = net.connect(r.port, "127.0.0.1");
      s.write(
        "GET http://app/metrics HTTP/1.1\r\nHost: app\r\n\r\n" + "GET http://app/metrics HTTP/1.1\r\nHost: app\r\n\r\n",
      );
      // Read a little of the first answer, then leave with the second still queued.
      await new Promise<void>((resolve) => s.once("data", () => resolve()));
      s.destroy();
    }
    const good = await request(r.port, "http://app/metrics", { timeoutMs: 5_000 });
    expect(good.status).toBe(200);
    expect(good.body.length).toBe(big.length);
  });

  it("a client that leaves mid-body: the rest is drained and the next scrape reuses the same overlay connection", async () => {
    // 64 KiB now, the other 64 KiB after 300 ms: the client reads the first part and leaves.
    const half = "y".repeat(64 * 1024);
    const { r, overlay } = await proxyTo("mid", 4, (_req, res) => {
      res.writeHead(200, { "content-type": "text/plain", "content-length": String(2 * half.length) });
      res.write(half);
      setTimeout(() => res.end(half), 300);
    });
    const s = net.connect(r.port, "127.0.0.1");
    s.write("GET http://mid/metrics HTTP/1.1\r\nHost: mid\r\n\r\n");
    await new Promise<void>((resolve) => s.once("data", () => resolve()));
    s.destroy();
    await sleep(600); // the second half arrives and is drained: the connection is back in the pool
    const good = await request(r.port, "http://mid/metrics", { timeoutMs: 5_000 });
    expect(good.status).toBe(200);
    expect(good.body.length).toBe(2 * half.length);
    expect(overlay.dialsOf("mid").length).toBe(1);
  });

  it("replaying the fuzz sequence that found it: a good scrape still works after each of 250 fuzz cases", async () => {
    const app = await new Upstream((_req, res) => res.end("x".repeat(100_000))).start();
    closers.push(() => app.close());
    const overlay = new StandInOverlay().add("node", { port: app.port });
    overlay.replicaMap.set("node", ["bind-a"]);
    overlay.routes.set("bind-a~node", app.port);
    const td = testDir();
    closers.push(() => td.remove());
    const r: Running = await startProxy(td.dir, [overlay], {
      agent: { maxSocketsPerService: 1, keepAliveSeconds: 60 },
    });
    closers.push(() => r.close());
    const connect = () => net.connect({ host: "127.0.0.1", port: r.port });
    const good: FuzzCase = {
      kind: "good",
      chunks: [Buffer.from("GET http://node/metrics HTTP/1.1\r\nHost: node\r\n\r\n")],
      finish: "end",
    };
    // The seed and hosts of test/integration/http-fuzz.test.ts; before the fix the pool was gone at case 154.
    const hosts = ["node", "node:80", "bind-a~node", "nosuch", "127.0.0.1:1", "localhost", "evil.example", ""];
    for (let i = 0; i < 250; i++) {
      const c = httpCase(prng((0x5eed_0009 ^ Math.imul(i + 1, 0x85ebca6b)) >>> 0), "proxy", hosts);
      await runCase(connect(), c, 2_000);
      const after = await runCase(connect(), good, 3_000, 3_000);
      expect(after.status, `a good scrape after fuzz case ${i} (${c.kind})`).toBe(200);
    }
  }, 120_000);
});
