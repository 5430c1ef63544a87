/**
 * Connection slots of `scrapez bind` over the real overlay (issue 18, item 1): one Dial-permitted identity opens 200
 * overlay connections to a bound target (maxConnections 64) and sends half a request head on each; a scrape from
 * another identity and one from the same identity must both get a 200 in under 1 s. A real controller and router,
 * the scrapez bind process, a real node_exporter, our SDK as the dialers. Figures go to stdout.
 */
import http from "node:http";
import type { Duplex } from "node:stream";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ZitiContext, type ZitiConnection } from "../../src/ziti/index.js";
import { NodeExporter, metricNames } from "../harness/node-exporter.js";
import { Overlay } from "../harness/overlay.js";
import { waitUntil } from "../harness/ports.js";
import { ScrapezProcess } from "../harness/scrapez.js";

let overlay: Overlay;
let exporter: NodeExporter;
let bind: ScrapezProcess;
let flooder: ZitiContext;
let other: ZitiContext;
const stalled: ZitiConnection[] = [];

const figure = (name: string, value: string) => process.stdout.write(`[figure] bind-slots ${name}: ${value}\n`);

interface Resp {
  status: number;
  body: string;
  ms: number;
}

/** Dials `service` and sends one GET over the new connection (Connection: close); timed from the dial. */
async function scrape(ctx: ZitiContext, service: string, path: string, opts: { identity?: string } = {}) {
  const t0 = Date.now();
  const conn: Duplex = await ctx.dial(service, opts);
  return new Promise<Resp>((resolve, reject) => {
    const req = http.request(
      { host: service, path, createConnection: () => conn as never, timeout: 30_000, headers: { connection: "close" } },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (body += d));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body, ms: Date.now() - t0 }));
        res.on("error", reject);
      },
    );
    // A connection the bind closes unanswered is a status 0, not a thrown test.
    req.on("error", (err) => resolve({ status: 0, body: err.message, ms: Date.now() - t0 }));
    req.on("timeout", () => req.destroy(new Error("no answer within 30 s")));
    req.end();
  });
}

/** The bind's own counter `name{labels}` from its self-metrics service. */
async function bindMetric(re: RegExp): Promise<number> {
  const r = await scrape(other, "slots-self", "/metrics", { identity: "slots-bind" });
  expect(r.status).toBe(200);
  return [...r.body.matchAll(re)].reduce((n, m) => n + Number(m[1]), 0);
}

beforeAll(async () => {
  overlay = await Overlay.start();
  exporter = await NodeExporter.start();
  await overlay.service("slots", { dial: ["#clients"], bind: ["#servers"] });
  await overlay.service("slots-self", { dial: ["#clients"], bind: ["#servers"] });
  const bindId = await overlay.identity("slots-bind", ["servers"]);
  flooder = await ZitiContext.fromIdentityFile(await overlay.identity("slots-flooder", ["clients"]));
  other = await ZitiContext.fromIdentityFile(await overlay.identity("slots-prom", ["clients"]));
  bind = new ScrapezProcess("scrapez-bind-slots", "bind", {});
  bind.writeConfig({
    identity: bindId,
    statusFile: join(bind.dir, "status.json"),
    // headersTimeoutSeconds long: the stalled connections must stay stalled for the whole test, so that only the
    // slot rules (not the 408 deadline) can free a slot. maxConnections is the default, 64.
    targets: [{ service: "slots", upstream: exporter.url, headersTimeoutSeconds: 120 }],
    self: { service: "slots-self" },
  });
  bind.start();
  await bind.waitFor(
    () => ["service bound", "self-metrics bound"].every((m) => bind.logLines().some((l) => l.msg === m)),
    60_000,
    "slots and slots-self bound",
  );
  // The terminators reach the router a moment after the bind reply: wait until a scrape goes through.
  await waitUntil(
    () =>
      scrape(other, "slots", "/metrics").then(
        (r) => r.status === 200,
        () => false,
      ),
    30_000,
    "slots reachable",
  );
}, 180_000);

afterAll(async () => {
  for (const c of stalled) c.destroy();
  await flooder?.close();
  await other?.close();
  await bind?.close();
  await exporter?.close();
  await overlay?.close();
});

describe("connection slots (real overlay)", () => {
  it("200 half-request connections from one identity: a scrape from another identity and one from the same identity both get 200 in under 1 s", async () => {
    const closedEarly = new Set<ZitiConnection>();
    const t0 = Date.now();
    // 200 dials, 20 at a time; each sends half a request head (no final CRLF) and then nothing.
    for (let i = 0; i < 200; i += 20) {
      const batch = await Promise.all(
        Array.from({ length: 20 }, async () => {
          const c = await flooder.dial("slots");
          c.on("error", () => undefined);
          // Read (nothing should come), so that the bind closing the connection ends it here.
          c.resume();
          c.on("end", () => closedEarly.add(c));
          c.on("close", () => closedEarly.add(c));
          c.write("GET /metrics HTTP/1.1\r\nHost: x\r\n");
          return c;
        }),
      );
      stalled.push(...batch);
    }
    figure("200 stalled connections dialed in", `${Date.now() - t0} ms`);
    // A dial completes before the bind has read the caller proof and taken the connection: wait until the bind has
    // taken all 200 (64 hold a slot, each of the others took one or was refused), so the target is full.
    const evictedRe = /^scrapez_bind_connections_evicted_total\{[^}]*service="slots"[^}]*\} (\d+)/gm;
    const refusedRe = /^scrapez_bind_connections_refused_total\{service="slots"\} (\d+)/gm;
    await waitUntil(
      async () => (await bindMetric(evictedRe)) + (await bindMetric(refusedRe)) >= 200 - 64,
      30_000,
      "the bind took all 200 connections",
    );
    figure("the bind had taken all 200 after", `${Date.now() - t0} ms`);
    const fromOther = await scrape(other, "slots", "/metrics");
    const fromSame = await scrape(flooder, "slots", "/metrics");
    figure("scrape from another identity", `${fromOther.status} in ${fromOther.ms} ms`);
    figure("scrape from the flooding identity", `${fromSame.status} in ${fromSame.ms} ms`);
    expect(fromOther.status).toBe(200);
    expect(metricNames(fromOther.body)).toContain("node_load1");
    expect(fromOther.ms).toBeLessThan(1_000);
    expect(fromSame.status).toBe(200);
    expect(metricNames(fromSame.body)).toContain("node_load1");
    expect(fromSame.ms).toBeLessThan(1_000);
    const evicted = await bindMetric(evictedRe);
    const refused = await bindMetric(refusedRe);
    const reasons = (await scrape(other, "slots-self", "/metrics", { identity: "slots-bind" })).body
      .split("\n")
      .filter((l) => l.startsWith("scrapez_bind_connections_evicted_total"));
    await waitUntil(() => closedEarly.size >= evicted - 2, 10_000, "the evicted connections closed at the dialer");
    figure(
      "of the 200 stalled connections",
      `${stalled.filter((c) => closedEarly.has(c)).length} closed by the bind; evictions ${evicted} (${reasons.join(", ")}), refused ${refused}`,
    );
    // Every connection beyond the first 64 took a slot from an older stalled one, and so did the other identity's
    // scrape (the flooder's scrape may take the slot that one left); none was refused.
    expect(refused).toBe(0);
    expect(evicted).toBeGreaterThanOrEqual(136 + 1);
    expect(bind.running).toBe(true);
  });
});
