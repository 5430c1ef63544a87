/**
 * The bind side against broken and hostile peers: exporters that answer what
 * Node's writer refuses, garbage, slowly or never; dialers that send half a request, never read, or open too many
 * connections. Upstreams are real sockets (raw net.Server, a local HTTP server, a real node_exporter); the overlay is
 * the in-memory stand-in. The real-overlay proof is test/integration/bind-hardening.test.ts.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { Backoff } from "../../src/bind/backoff.js";
import { parseBindConfig, type BindConfig } from "../../src/bind/config.js";
import { BindServer, statusLabel } from "../../src/bind/server.js";
import { createLogger } from "../../src/common/log.js";
import { NodeExporter, metricNames } from "../harness/node-exporter.js";
import { waitUntil } from "../harness/ports.js";
import { FakeOverlay, collect, rawUpstream, scrape } from "../harness/bind-standin.js";

const dir = mkdtempSync(join(tmpdir(), "scrapez-bind-hardening-"));
writeFileSync(join(dir, "id.json"), "{}");
const logLines: Record<string, unknown>[] = [];
const log = createLogger("debug", { component: "bind" }, (l) => logLines.push(JSON.parse(l) as never));
const warnings: Error[] = [];
const onWarning = (w: Error) => warnings.push(w);
process.on("warning", onWarning);

function config(targets: object[], extra: object = {}): BindConfig {
  return parseBindConfig({ identity: "id.json", targets, ...extra }, "bind.yaml", dir, {});
}

let exporter: NodeExporter;
let app: http.Server;
let appUrl: string;
const closers: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  exporter = await NodeExporter.start();
  app = http.createServer((req, res) => {
    if (req.url?.startsWith("/slow")) {
      const t = setTimeout(() => res.end("late\n"), 5_000);
      res.on("close", () => clearTimeout(t));
      return;
    }
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("app_up 1\n");
  });
  await new Promise<void>((r) => app.listen(0, "127.0.0.1", r));
  appUrl = `http://127.0.0.1:${(app.address() as { port: number }).port}`;
}, 60_000);

afterAll(async () => {
  for (const c of closers.reverse()) await c().catch(() => undefined);
  process.off("warning", onWarning);
  await exporter?.close();
  app?.closeAllConnections();
  app?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function startBind(targets: object[]): Promise<{ ov: FakeOverlay; bs: BindServer }> {
  const ov = new FakeOverlay();
  const bs = new BindServer(ov, config(targets), log);
  await bs.start();
  closers.push(() => bs.close());
  return { ov, bs };
}

async function metric(bs: BindServer, re: RegExp): Promise<number | undefined> {
  const m = re.exec(await bs.metrics.registry.metrics());
  return m ? Number(m[1]) : undefined;
}

// ---------------------------------------------------------------------------------------------------------------

describe("an exporter answering what Node's HTTP writer refuses", () => {
  const bad: [string, string][] = [
    ["status 000", "HTTP/1.1 000 OK\r\nContent-Length: 2\r\n\r\nok"],
    ["status 099", "HTTP/1.1 099 OK\r\nContent-Length: 2\r\n\r\nok"],
    ["status 101 to a request that asked for no upgrade", "HTTP/1.1 101 Switching\r\nContent-Length: 2\r\n\r\nok"],
    ["a control byte in the reason phrase", "HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok"],
    ["DEL in the reason phrase", "HTTP/1.1 200 O\x7fK\r\nContent-Length: 2\r\n\r\nok"],
    ["an empty body with status 000", "HTTP/1.1 000 X\r\nContent-Length: 0\r\n\r\n"],
    ["a chunked body with status 099", "HTTP/1.1 099 X\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
  ];

  it.each(bad)("%s: 502 at once naming the service and the cause; other services keep serving", async (_n, bytes) => {
    const up = await rawUpstream((s) => s.end(Buffer.from(bytes, "latin1")));
    closers.push(up.close);
    const { ov, bs } = await startBind([
      { service: "broken", upstream: up.url },
      { service: "node", upstream: exporter.url },
    ]);
    const r = await scrape(ov, "broken");
    expect(r.status).toBe(502);
    expect(r.body).toMatch(
      /^scrapez bind: service "broken": upstream http:\/\/127\.0\.0\.1:\d+ answered an invalid status line \(status \d+ .*\)\n$/,
    );
    expect(r.body.trim().split("\n")).toHaveLength(1);
    // Again on the same runtime (no state left behind), and the neighbour serves a real node_exporter.
    expect((await scrape(ov, "broken")).status).toBe(502);
    const n = await scrape(ov, "node");
    expect(n.status).toBe(200);
    expect(metricNames(n.body)).toContain("node_load1");
    await waitUntil(
      async () =>
        (await metric(bs, /scrapez_bind_upstream_errors_total\{service="broken",kind="invalid"\} (\d+)/)) === 2,
      5_000,
      "both counted as invalid upstream answers",
    );
  });

  it.each([
    ["a control byte in a header value", "HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 2\r\n\r\nok"],
    ["NUL in a header value", "HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok"],
    ["a space in a header name", "HTTP/1.1 200 OK\r\nX A: b\r\nContent-Length: 2\r\n\r\nok"],
    ["an empty header name", "HTTP/1.1 200 OK\r\n: b\r\nContent-Length: 2\r\n\r\nok"],
    ["a four-digit status", "HTTP/1.1 1000 OK\r\nContent-Length: 2\r\n\r\nok"],
  ])("%s: 502 naming the service and the parse error", async (_n, bytes) => {
    const up = await rawUpstream((s) => s.end(Buffer.from(bytes, "latin1")));
    closers.push(up.close);
    const { ov } = await startBind([{ service: "broken", upstream: up.url }]);
    const r = await scrape(ov, "broken");
    expect(r.status).toBe(502);
    expect(r.body).toMatch(
      /^scrapez bind: service "broken": upstream .* answered something that is not valid HTTP: .*\(HPE_\w+\)\n$/,
    );
  });

  it('forwards a valid but unusual status (799) and its reason, and counts it under status="other"', async () => {
    const up = await rawUpstream((s) =>
      s.end("HTTP/1.1 799 Odd But Fine\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nodd"),
    );
    closers.push(up.close);
    const { ov, bs } = await startBind([{ service: "odd", upstream: up.url }]);
    const r = await scrape(ov, "odd");
    expect(r.status).toBe(799);
    expect(r.statusMessage).toBe("Odd But Fine");
    expect(r.body).toBe("odd");
    await waitUntil(
      async () =>
        (await metric(bs, /scrapez_bind_scrapes_total\{service="odd",caller="[^"]*",status="other"\} (\d+)/)) === 1,
      5_000,
      "the scrape counted under status=other",
    );
  });
});

describe("no metric label takes a request-controlled value (besides caller, handled elsewhere)", () => {
  it("status labels are known HTTP codes or 'other'", () => {
    expect(statusLabel(200)).toBe("200");
    expect(statusLabel(504)).toBe("504");
    expect(statusLabel(799)).toBe("other");
    expect(statusLabel(0)).toBe("other");
  });

  it("a path never becomes a label: 50 distinct paths leave the label sets as they were", async () => {
    const { ov, bs } = await startBind([{ service: "app", upstream: appUrl, paths: ["/metrics", "/x/*"] }]);
    for (let i = 0; i < 25; i++) await scrape(ov, "app", `/x/${i}`);
    for (let i = 0; i < 25; i++) await scrape(ov, "app", `/nope-${i}`);
    const text = await bs.metrics.registry.metrics();
    expect(text).not.toMatch(/nope-|\/x\//);
    const series = text.split("\n").filter((l) => l.startsWith("scrapez_bind_scrapes_total{"));
    expect(series.map((l) => /status="([^"]+)"/.exec(l)![1]).sort()).toEqual(["200", "404"]);
  });
});

describe("an exporter answering garbage, slowly, or never", () => {
  it("garbage (not HTTP): 502 at once; slow (1 byte/s) and never: 504 at the deadline; no growth", async () => {
    const garbage = await rawUpstream((s) => s.end("SSH-2.0-OpenSSH_9.6\r\nnot http at all\r\n"));
    const never = await rawUpstream(() => undefined);
    const slow = await rawUpstream((s) => {
      const bytes = Buffer.from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
      let i = 0;
      const t = setInterval(() => (i < bytes.length ? s.write(bytes.subarray(i, ++i)) : s.end()), 1_000);
      s.once("close", () => clearInterval(t));
    });
    const slowBody = await rawUpstream((s) => {
      s.write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n");
      const t = setInterval(() => s.write("x"), 1_000);
      s.once("close", () => clearInterval(t));
    });
    closers.push(garbage.close, never.close, slow.close, slowBody.close);
    const { ov, bs } = await startBind([
      { service: "garbage", upstream: garbage.url },
      { service: "never", upstream: never.url, timeoutSeconds: 1 },
      { service: "slow", upstream: slow.url, timeoutSeconds: 1 },
      { service: "slow-body", upstream: slowBody.url, timeoutSeconds: 1 },
      { service: "node", upstream: exporter.url },
    ]);

    const g = await scrape(ov, "garbage");
    expect(g.status).toBe(502);
    expect(g.body).toMatch(
      /^scrapez bind: service "garbage": upstream .* answered something that is not valid HTTP: .*\(HPE_INVALID_CONSTANT\)\n$/,
    );

    const warnBefore = warnings.length;
    for (let round = 0; round < 3; round++) {
      // Three stuck upstreams at once while the neighbour keeps answering.
      let settled = false;
      const stuck = Promise.all([scrape(ov, "never"), scrape(ov, "slow"), scrape(ov, "garbage")]).finally(
        () => (settled = true),
      );
      const node = await scrape(ov, "node");
      expect(node.status).toBe(200);
      expect(settled).toBe(false); // answered while the stuck ones still wait for their deadline
      const [n, s, g2] = await stuck;
      for (const r of [n, s]) {
        expect(r.status).toBe(504);
        expect(r.ms).toBeGreaterThanOrEqual(900);
        expect(r.ms).toBeLessThan(5_000);
        expect(r.body).toMatch(/did not answer within 1\.0s\n$/);
      }
      expect(g2.status).toBe(502);
    }
    // A body trickling after the head: the deadline still ends the exchange (the connection is cut).
    const cut = await scrape(ov, "slow-body").then(
      (r) => `complete ${r.status} ${r.body.length}`,
      (e: Error) => `cut: ${e.message}`,
    );
    expect(cut).toMatch(/^cut: /);

    // Nothing kept: the upstream sockets of the stuck exchanges are closed, the bind side has no open overlay
    // connection once the dialers are gone, and no listener piled up.
    await waitUntil(
      async () => (await never.open()) + (await slow.open()) + (await slowBody.open()) === 0,
      5_000,
      "upstream sockets closed",
    );
    await waitUntil(
      async () =>
        !/scrapez_bind_connections\{service="(never|slow|garbage)"\} [1-9]/.test(await bs.metrics.registry.metrics()),
      5_000,
      "no overlay connection left open",
    );
    expect(warnings.slice(warnBefore).filter((w) => w.name === "MaxListenersExceededWarning")).toEqual([]);
  });
});

describe("deadlines and a cap for overlay connections", () => {
  const fast = { headersTimeoutSeconds: 1, idleTimeoutSeconds: 1 };

  it("a dialer that sends half a request line and stalls gets a 408 and is disconnected at the deadline", async () => {
    const { ov, bs } = await startBind([{ service: "app", upstream: appUrl, ...fast }]);
    const c = ov.dial("app");
    const done = collect(c);
    c.write("GET /metr");
    const { text, ms } = await done;
    expect(text).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n/);
    expect(text).toMatch(/scrapez bind: service "app": the request head was not complete within 1s\n$/);
    expect(ms).toBeGreaterThanOrEqual(900);
    expect(ms).toBeLessThan(5_000);
    expect(
      await metric(bs, /scrapez_bind_connections_expired_total\{service="app",reason="headers_timeout"\} (\d+)/),
    ).toBe(1);
  });

  it("headers trickled one byte at a time do not extend the deadline", async () => {
    const { ov } = await startBind([{ service: "app", upstream: appUrl, ...fast }]);
    const c = ov.dial("app");
    const done = collect(c);
    const head = "GET /metrics HTTP/1.1\r\nHost: app\r\nX-Padding: " + "y".repeat(200);
    let i = 0;
    const t = setInterval(() => !c.destroyed && i < head.length && c.write(head[i++]!), 50);
    const { text, ms } = await done;
    clearInterval(t);
    expect(text).toMatch(/^HTTP\/1\.1 408 /);
    expect(ms).toBeLessThan(5_000);
  });

  it("a connection that opens and sends nothing is closed at the idle deadline (held for a first scrape)", async () => {
    const { ov, bs } = await startBind([{ service: "app", upstream: appUrl, ...fast }]);
    const { ms } = await collect(ov.dial("app"));
    expect(ms).toBeGreaterThanOrEqual(900);
    expect(ms).toBeLessThan(5_000);
    expect(await metric(bs, /reason="idle_timeout"\} (\d+)/)).toBe(1);
  });

  it("a kept-alive connection serves several requests, then is closed after idleTimeoutSeconds", async () => {
    const { ov, bs } = await startBind([{ service: "app", upstream: appUrl, ...fast }]);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    let dials = 0;
    (agent as unknown as { createConnection: () => unknown }).createConnection = () => {
      dials++;
      return ov.dial("app");
    };
    const get = () =>
      new Promise<number>((resolve, reject) =>
        http
          .get({ host: "app", path: "/metrics", agent }, (res) => {
            res.resume();
            res.on("end", () => resolve(res.statusCode ?? 0));
          })
          .on("error", reject),
      );
    for (let i = 0; i < 3; i++) expect(await get()).toBe(200);
    expect(dials).toBe(1);
    await waitUntil(
      async () =>
        (await metric(bs, /scrapez_bind_connections_expired_total\{service="app",reason="idle_timeout"\} (\d+)/)) === 1,
      5_000,
      "the idle connection closed",
    );
    agent.destroy();
  });

  /**
   * `requests` on a connection whose dialer never takes a byte of the answers, with a scrape deadline of
   * `timeoutSeconds` and a request deadline of four times that: how long until the connection closed, and the bind.
   */
  async function stalledDialer(requests: string, timeoutSeconds: number): Promise<{ ms: number; bs: BindServer }> {
    const { ov, bs } = await startBind([
      {
        service: "app",
        upstream: appUrl,
        timeoutSeconds,
        maxTimeoutSeconds: timeoutSeconds * 2,
        requestTimeoutSeconds: timeoutSeconds * 4,
        idleTimeoutSeconds: 60,
      },
    ]);
    const { conn, stall } = ov.dialRaw("app");
    stall();
    const done = collect(conn);
    conn.write(requests);
    return { ms: (await done).ms, bs };
  }

  it("a dialer that never reads its answer is disconnected after requestTimeoutSeconds", async () => {
    // Two requests answered locally (404), whose bytes the dialer never takes.
    const { ms, bs } = await stalledDialer("GET /nope HTTP/1.1\r\nHost: app\r\n\r\n".repeat(2), 0.25);
    expect(ms).toBeGreaterThanOrEqual(900);
    expect(ms).toBeLessThan(5_000);
    expect(await metric(bs, /reason="request_timeout"\} (\d+)/)).toBe(1);
  });

  it("an exporter's answer all written before the scrape deadline is not cut or counted as a timeout when the dialer has not taken it", async () => {
    // The scrape deadline (0.5 s) leaves time enough for the local exporter's answer to be all written first, even
    // on a loaded machine; the connection's own request deadline (2 s) is what closes it.
    const { ms, bs } = await stalledDialer("GET /metrics HTTP/1.1\r\nHost: app\r\n\r\n", 0.5);
    expect(ms).toBeGreaterThanOrEqual(1_900);
    expect(await metric(bs, /reason="request_timeout"\} (\d+)/)).toBe(1);
    expect((await metric(bs, /scrapez_bind_upstream_errors_total\{service="app",kind="timeout"\} (\d+)/)) ?? 0).toBe(0);
  });

  it("more than 8 pipelined requests in flight on one connection close it", async () => {
    const { ov, bs } = await startBind([{ service: "app", upstream: appUrl }]);
    const { conn, stall } = ov.dialRaw("app");
    stall();
    const done = collect(conn);
    conn.write("GET /nope HTTP/1.1\r\nHost: app\r\n\r\n".repeat(9));
    const { ms } = await done;
    expect(ms).toBeLessThan(5_000); // long before any deadline (requestTimeoutSeconds is 90)
    expect(await metric(bs, /reason="too_many_pipelined"\} (\d+)/)).toBe(1);
  });

  it("over maxConnections, with every connection busy, a new one is closed at once and counted; the others are served", async () => {
    // Busy: each has a request in flight (the upstream answers after 5 s), so none gives way (src/bind/slots.ts).
    const { ov, bs } = await startBind([
      { service: "node", upstream: appUrl, maxConnections: 3, paths: ["/slow", "/metrics"] },
    ]);
    const held = [ov.dial("node"), ov.dial("node"), ov.dial("node")];
    const answers = held.map((c) => {
      const r = collect(c);
      c.write("GET /slow HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n");
      return r;
    });
    await waitUntil(() => bs.inFlight === 3, 5_000, "three requests in flight");
    const extra = collect(ov.dial("node"));
    const { text, ms } = await extra;
    expect(text).toBe("");
    expect(ms).toBeLessThan(1_000);
    expect(await metric(bs, /scrapez_bind_connections_refused_total\{service="node"\} (\d+)/)).toBe(1);
    expect(await metric(bs, /scrapez_bind_connections\{service="node"\} (\d+)/)).toBe(3);
    for (const a of await Promise.all(answers)) expect(a.text).toMatch(/^HTTP\/1\.1 200 OK\r\n[\s\S]*late\n$/);
    // Once they are gone, a new connection is accepted again.
    await waitUntil(
      async () => (await metric(bs, /scrapez_bind_connections\{service="node"\} (\d+)/)) === 0,
      5_000,
      "the connections closed",
    );
    expect((await scrape(ov, "node")).status).toBe(200);
  });

  it("answers a malformed request with a one-line 400 instead of a silent close", async () => {
    const { ov } = await startBind([{ service: "app", upstream: appUrl }]);
    const c = ov.dial("app");
    const done = collect(c);
    c.write("GET /a b c HTTP/1.1\r\n\r\n");
    const { text } = await done;
    expect(text).toMatch(
      /^HTTP\/1\.1 400 Bad Request\r\n[\s\S]*\r\n\r\nscrapez bind: malformed HTTP request \(HPE_\w+\)\n$/,
    );
  });
});

describe("the dialer's scrape-timeout header is capped by maxTimeoutSeconds", () => {
  it("a dialer asking for 600 s gets the 504 at the target's cap", async () => {
    const { ov } = await startBind([
      { service: "slow", upstream: appUrl, paths: ["/slow"], timeoutSeconds: 0.5, maxTimeoutSeconds: 1 },
    ]);
    const r = await scrape(ov, "slow", "/slow", { "x-prometheus-scrape-timeout-seconds": "600" });
    expect(r.status).toBe(504);
    expect(r.body).toMatch(/did not answer within 0\.5s\n$/);
    expect(r.ms).toBeLessThan(4_000);
  });
});

describe("re-binding after a failure backs off exponentially with jitter", () => {
  afterEach(() => vi.useRealTimers());

  it("Backoff: 1 s doubling to 60 s, each within ±25 %, and back to 1 s after reset()", () => {
    for (const r of [0, 0.5, 0.999]) {
      const b = new Backoff({ random: () => r });
      const seq = Array.from({ length: 9 }, () => b.next());
      const base = [1, 2, 4, 8, 16, 32, 60, 60, 60].map((s) => s * 1000);
      seq.forEach((d, i) => {
        expect(d).toBeGreaterThanOrEqual(base[i]! * 0.75);
        expect(d).toBeLessThanOrEqual(base[i]! * 1.25);
      });
      b.reset();
      expect(b.next()).toBeLessThanOrEqual(1250);
    }
    // The jitter spreads: two sidecars failing together do not retry in step.
    const spread = new Set(Array.from({ length: 20 }, () => new Backoff().next()));
    expect(spread.size).toBeGreaterThan(1);
  });

  it("a service that cannot bind retries after growing delays, logs when, and binds once allowed", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "Date"] });
    const ov = new FakeOverlay();
    ov.refuse.add("svc");
    logLines.length = 0;
    const bs = new BindServer(ov, config([{ service: "svc", upstream: appUrl }]), log);
    await bs.start();
    const retries = () => logLines.filter((l) => String(l.msg).startsWith("service not bound; retrying in"));
    // Lets pending promises run without moving the clock (vi.waitFor would advance it).
    const settle = async (done: () => boolean) => {
      for (let k = 0; k < 100 && !done(); k++) await vi.advanceTimersByTimeAsync(0);
    };
    for (let i = 1; i <= 8; i++) {
      await settle(() => retries().length === i);
      expect(retries()).toHaveLength(i);
      const line = retries()[i - 1]!;
      const delay = line.retry_in_ms as number;
      const base = Math.min(1000 * 2 ** (i - 1), 60_000);
      expect(delay).toBeGreaterThanOrEqual(base * 0.75);
      expect(delay).toBeLessThanOrEqual(base * 1.25);
      expect(line.msg).toBe(`service not bound; retrying in ${(delay / 1000).toFixed(1)}s`);
      expect(Date.parse(line.next_try as string) - Date.now()).toBe(delay);
      expect(line.reason).toMatch(/no Bind permission/);
      // Nothing happens before the delay is over.
      const calls = ov.calls.length;
      await vi.advanceTimersByTimeAsync(delay - 1);
      expect(ov.calls.length).toBe(calls);
      if (i < 8) await vi.advanceTimersByTimeAsync(1);
    }
    ov.refuse.delete("svc");
    await vi.advanceTimersByTimeAsync(1);
    await settle(() => bs.status().ready);
    expect(bs.status().services.svc).toEqual({ state: "bound" });
    await bs.close();
  });
});
