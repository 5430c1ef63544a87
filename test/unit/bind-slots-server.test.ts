/**
 * The bind server's use of its connection slots (src/bind/slots.ts), with the in-memory overlay stand-in and a local
 * upstream: stalled connections give way to a scrape and are counted by reason, and a connection whose exchange is over
 * on our side holds no slot while it waits to close. (That a target whose every slot is busy still refuses is in
 * test/unit/bind-hardening.test.ts.) The real-overlay proof is test/integration/bind-slots.test.ts.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Duplex } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseBindConfig } from "../../src/bind/config.js";
import { BindServer } from "../../src/bind/server.js";
import { createLogger } from "../../src/common/log.js";
import { FakeOverlay, collect } from "../harness/bind-standin.js";

const dir = mkdtempSync(join(tmpdir(), "scrapez-bind-slots-"));
writeFileSync(join(dir, "id.json"), "{}");
const log = createLogger("error", { component: "bind" }, () => undefined);
let app: http.Server;
let appUrl: string;
const closers: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  app = http.createServer((_req, res) => res.end("app_up 1\n"));
  await new Promise<void>((r) => app.listen(0, "127.0.0.1", r));
  appUrl = `http://127.0.0.1:${(app.address() as { port: number }).port}`;
});

afterAll(async () => {
  for (const c of closers.reverse()) await c().catch(() => undefined);
  app?.closeAllConnections();
  app?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function startBind(maxConnections: number): Promise<{ ov: FakeOverlay; bs: BindServer }> {
  // Each caller arrives with its own verified key, as the SDK hands a connection whose caller proof verified.
  const ov = new FakeOverlay({ flood: "sha256:F", prom: "sha256:P" });
  const config = parseBindConfig(
    { identity: "id.json", targets: [{ service: "app", upstream: appUrl, maxConnections }] },
    "bind.yaml",
    dir,
    {},
  );
  const bs = new BindServer(ov, config, log);
  await bs.start();
  closers.push(() => bs.close());
  return { ov, bs };
}

async function metric(bs: BindServer, re: RegExp): Promise<number> {
  const m = re.exec(await bs.metrics.registry.metrics());
  return m ? Number(m[1]) : 0;
}

/** One request written raw on `conn`; resolves with what came back when the bind ended its side. */
function exchange(conn: Duplex, path: string): Promise<string> {
  return new Promise((resolve) => {
    let text = "";
    conn.on("data", (d: Buffer) => (text += d.toString("latin1")));
    conn.on("error", () => resolve(text));
    conn.on("end", () => resolve(text));
    conn.on("close", () => resolve(text));
    conn.write(`GET ${path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n`);
  });
}

describe("bind server: connection slots", () => {
  it("stalled connections of one caller give way to another caller's scrape, counted by reason", async () => {
    const { ov, bs } = await startBind(3);
    const flood = Array.from({ length: 3 }, () => ov.dial("app", "flood"));
    for (const c of flood) c.write("GET /metrics HTTP/1.1\r\nHost: x\r\n");
    const closed = flood.map((c) => collect(c));
    const answer = await exchange(ov.dial("app", "prom"), "/metrics");
    expect(answer).toMatch(/^HTTP\/1\.1 200 OK\r\n[\s\S]*app_up 1\n$/);
    // The oldest stalled connection lost its slot; it was closed without an answer.
    expect(await closed[0]).toMatchObject({ text: "" });
    expect(await metric(bs, /scrapez_bind_connections_evicted_total\{service="app",reason="fair_share"\} (\d+)/)).toBe(
      1,
    );
    expect(await metric(bs, /scrapez_bind_connections_refused_total\{service="app"\} (\d+)/)).toBe(0);
    // The same caller's next connection replaces its own oldest stalled one.
    expect(await exchange(ov.dial("app", "flood"), "/metrics")).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    for (const c of flood) c.destroy();
  });

  it("a connection whose exchange is over on our side gives its slot back before it closes", async () => {
    const { ov, bs } = await startBind(1);
    // The dialer reads the answer and the bind's end of the stream, but never ends its own side: the connection
    // stays open (as one whose circuit still waits for its last acknowledgements).
    const first = ov.dial("app", "prom");
    expect(await exchange(first, "/metrics")).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(first.destroyed).toBe(false);
    expect(await metric(bs, /scrapez_bind_connections\{service="app"\} (\d+)/)).toBe(1);
    expect(await exchange(ov.dial("app", "prom"), "/metrics")).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(await metric(bs, /scrapez_bind_connections_refused_total\{service="app"\} (\d+)/)).toBe(0);
    first.destroy();
  });
});
