/**
 * `scrapez bind` against broken and hostile peers over the real overlay: a real
 * controller and router, the scrapez bind process, a real node_exporter, raw TCP exporters that answer a status
 * line Node's writer refuses, garbage, or nothing, and a dialer (our SDK) that sends half a request or opens more
 * connections than the service allows. Figures go to stdout.
 */
import net from "node:net";
import http from "node:http";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ZitiContext, type ZitiConnection } from "../../src/ziti/index.js";
import { NodeExporter, metricNames } from "../harness/node-exporter.js";
import { Overlay } from "../harness/overlay.js";
import { waitUntil } from "../harness/ports.js";
import { ScrapezProcess } from "../harness/scrapez.js";
import { rawUpstream } from "../harness/bind-standin.js";

let overlay: Overlay;
let exporter: NodeExporter;
let bind: ScrapezProcess;
let client: ZitiContext;
let agent: http.Agent;
const upstreams: (() => Promise<void>)[] = [];
let lateOpen: () => Promise<number>;

const figure = (name: string, value: string) => process.stdout.write(`[figure] bind-hardening ${name}: ${value}\n`);

/** A raw TCP exporter on a runtime-chosen loopback port (test/harness/bind-standin.ts); closed after the tests. */
async function rawExporter(answer: (s: net.Socket) => void): Promise<string> {
  const up = await rawUpstream(answer);
  upstreams.push(up.close);
  return up.url;
}

interface Resp {
  status: number;
  body: string;
  ms: number;
}

function get(host: string, path: string, headers: Record<string, string> = {}): Promise<Resp> {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    http
      .get({ host, path, agent, headers, timeout: 60_000 }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (body += d));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body, ms: Date.now() - t0 }));
      })
      .on("error", reject);
  });
}

/** What a raw overlay connection receives until the bind side closes it, and when. */
function untilClosed(c: ZitiConnection): Promise<{ text: string; ms: number }> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    let text = "";
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      resolve({ text, ms: Date.now() - t0 });
    };
    c.on("data", (d: Buffer) => (text += d.toString("latin1")));
    c.on("error", finish);
    c.on("end", () => {
      c.end();
      finish();
    });
    c.on("close", finish);
  });
}

beforeAll(async () => {
  overlay = await Overlay.start();
  exporter = await NodeExporter.start();
  const broken = await rawExporter((s) => s.end("HTTP/1.1 000 OK\r\nContent-Length: 2\r\n\r\nok"));
  const garbage = await rawExporter((s) => s.end("SSH-2.0-OpenSSH_9.6\r\nnot http\r\n"));
  const never = await rawExporter(() => undefined);
  // Answers 3 s after the request head: a connection waiting for it is busy and keeps its slot.
  const late = await rawUpstream((s) => {
    const t = setTimeout(() => s.end("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nlate\n"), 3_000);
    s.once("close", () => clearTimeout(t));
  });
  upstreams.push(late.close);
  lateOpen = late.open;
  const services = ["node", "broken", "garbage", "never", "capped"];
  for (const s of services) await overlay.service(s, { dial: ["#clients"], bind: ["#servers"] });
  const bindId = await overlay.identity("bind-h", ["servers"]);
  client = await ZitiContext.fromIdentityFile(await overlay.identity("prom-h", ["clients"]));
  agent = client.httpAgent({ keepAlive: true });
  bind = new ScrapezProcess("scrapez-bind-h", "bind", {});
  bind.writeConfig({
    identity: bindId,
    statusFile: join(bind.dir, "status.json"),
    targets: [
      { service: "node", upstream: exporter.url, headersTimeoutSeconds: 2 },
      { service: "broken", upstream: broken },
      { service: "garbage", upstream: garbage },
      { service: "never", upstream: never, timeoutSeconds: 2, maxTimeoutSeconds: 3 },
      { service: "capped", upstream: late.url, maxConnections: 2, headersTimeoutSeconds: 60 },
    ],
  });
  bind.start();
  await bind.waitFor(
    () => bind.logLines().filter((l) => l.msg === "service bound").length >= services.length,
    60_000,
    "every service bound",
  );
  // The terminators reach the router a moment after the bind reply: wait until a dial goes through.
  await waitUntil(
    () =>
      get("node", "/metrics").then(
        (r) => r.status === 200,
        () => false,
      ),
    30_000,
    "node reachable",
  );
});

afterAll(async () => {
  agent?.destroy();
  await client?.close();
  await bind?.close();
  for (const close of upstreams) await close();
  await exporter?.close();
  await overlay?.close();
});

describe("scrapez bind hardening (real overlay)", () => {
  it("an exporter answering `HTTP/1.1 000` gets the scraper a 502 naming the cause; the process lives", async () => {
    const r = await get("broken", "/metrics");
    figure("invalid status line -> 502", `${r.ms} ms`);
    expect(r.status).toBe(502);
    expect(r.body).toMatch(
      /^scrapez bind: service "broken": upstream http:\/\/127\.0\.0\.1:\d+ answered an invalid status line \(status 0 "OK": a final status is 200-999\)\n$/,
    );
    const n = await get("node", "/metrics");
    expect(n.status).toBe(200);
    expect(metricNames(n.body)).toContain("node_load1");
    expect(bind.running).toBe(true);
  });

  it("garbage gets a 502 at once; an exporter that never answers a 504 at the capped deadline", async () => {
    const g = await get("garbage", "/metrics");
    expect(g.status).toBe(502);
    expect(g.body).toMatch(/answered something that is not valid HTTP: .*\(HPE_INVALID_CONSTANT\)\n$/);
    // The dialer asks for 600 s; the target caps it at maxTimeoutSeconds (3 s), so the 504 comes at 2.5 s.
    const n = await get("never", "/metrics", { "x-prometheus-scrape-timeout-seconds": "600" });
    figure("never-answering exporter, header 600 s, cap 3 s -> 504", `${n.ms} ms`);
    expect(n.status).toBe(504);
    expect(n.body).toMatch(/did not answer within 2\.5s\n$/);
    expect(n.ms).toBeGreaterThanOrEqual(2_400);
    expect(n.ms).toBeLessThan(30_000);
    expect((await get("node", "/metrics")).status).toBe(200);
    expect(bind.running).toBe(true);
  });

  it("dot segments are removed before matching, encoded slashes refused", async () => {
    const up = await get("node", "/metrics/../debug/pprof");
    expect(up.status).toBe(404);
    expect(up.body).toMatch(/does not expose \/debug\/pprof \(allowed: \/metrics\)/);
    const enc = await get("node", "/metrics/..%2f..%2fdebug");
    expect(enc.status).toBe(400);
    expect(enc.body).toMatch(/^scrapez bind: service "node": ambiguous request path: an encoded \/ or \\/);
  });

  it("a dialer that sends half a request line and stalls gets a 408 and is disconnected at the deadline", async () => {
    const c = await client.dial("node");
    const closed = untilClosed(c);
    c.write("GET /metr");
    const { text, ms } = await closed;
    figure("half request line, headersTimeoutSeconds 2 -> disconnected after", `${ms} ms`);
    expect(text).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n/);
    expect(text).toMatch(/the request head was not complete within 2s\n$/);
    expect(ms).toBeGreaterThanOrEqual(1_500);
    expect(ms).toBeLessThan(30_000);
    expect((await get("node", "/metrics")).status).toBe(200);
  });

  it("with maxConnections 2 and both connections busy, a third connection is refused at once by the bind and ends for its dialer; the two others are served", async () => {
    // Busy: each has a request in flight (the exporter answers after 3 s); an idle or stalled one would give way.
    const held = [await client.dial("capped"), await client.dial("capped")];
    const answers = held.map((c) => {
      const r = untilClosed(c);
      c.write("GET /metrics HTTP/1.1\r\nHost: capped\r\nConnection: close\r\n\r\n");
      return r;
    });
    await waitUntil(async () => (await lateOpen()) === 2, 10_000, "both requests at the exporter");
    const t0 = Date.now();
    const third = await client.dial("capped").then(
      (c) => untilClosed(c).then((r) => `closed after ${r.ms} ms, ${r.text.length} bytes`),
      (e: Error) => `dial refused: ${e.message}`,
    );
    figure("connection over the cap", `${third} (${Date.now() - t0} ms from dial)`);
    expect(third).toMatch(/^(closed after \d+ ms, 0 bytes|dial refused)/);
    await waitUntil(
      () => bind.logLines().some((l) => l.msg === "connection refused: every connection slot of this service is busy"),
      10_000,
      "the cap logged",
    );
    for (const a of await Promise.all(answers)) expect(a.text).toMatch(/^HTTP\/1\.1 200 OK\r\n[\s\S]*late\n$/);
    expect(bind.running).toBe(true);
  });
});
