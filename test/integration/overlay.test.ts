/**
 * Proof the local overlay works with OpenZiti's own peers, independent of our SDK: node_exporter hosted by
 * `ziti tunnel host`, fetched through `ziti tunnel proxy`, both enrolled by `ziti edge enroll`.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NodeExporter, metricNames } from "../harness/node-exporter.js";
import { Overlay } from "../harness/overlay.js";
import type { ManagedProcess } from "../harness/process.js";
import { waitUntil } from "../harness/ports.js";
import { tunnelHost, tunnelProxy } from "../harness/ziti-tunnel.js";

let overlay: Overlay;
let exporter: NodeExporter;
let host: ManagedProcess;
let proxy: { proc: ManagedProcess; port: number };

beforeAll(async () => {
  overlay = await Overlay.start();
  exporter = await NodeExporter.start();
  const hostCfg = await overlay.createConfig("node-host", "host.v1", {
    protocol: "tcp",
    address: "127.0.0.1",
    port: exporter.port,
  });
  await overlay.service("node", { configs: [hostCfg] });
  const serverId = await overlay.identity("tunnel-host", ["servers"]);
  const clientId = await overlay.identity("tunnel-client", ["clients"]);
  host = await tunnelHost(serverId, ["node"]);
  proxy = await tunnelProxy(clientId, "node");
});

afterAll(async () => {
  await proxy?.proc.close();
  await host?.close();
  await exporter?.close();
  await overlay?.close();
});

async function scrapeViaProxy(): Promise<{ status: number; text: string }> {
  const r = await fetch(`http://127.0.0.1:${proxy.port}/metrics`, { signal: AbortSignal.timeout(10_000) });
  return { status: r.status, text: await r.text() };
}

describe("real OpenZiti overlay (ziti controller + edge router v1.6.3, ziti tunnel host/proxy)", () => {
  it("serves node_exporter's /metrics through the overlay with the same metric families as a direct scrape", async () => {
    const direct = await (await fetch(`${exporter.url}/metrics`)).text();
    const viaOverlay = await waitUntil(
      async () => {
        const r = await scrapeViaProxy();
        return r.status === 200 ? r.text : undefined;
      },
      60_000,
      "a scrape through ziti tunnel proxy",
      () => `${overlay.logs()}\n${host.logTail(4096)}\n${proxy.proc.logTail(4096)}`,
    );
    expect(metricNames(direct).length).toBeGreaterThan(5);
    expect(metricNames(viaOverlay)).toEqual(metricNames(direct));
  });

  it("works again after the edge router is stopped and started", async () => {
    await overlay.stopRouter();
    await expect(scrapeViaProxy()).rejects.toThrow();
    await overlay.startRouter();
    const text = await waitUntil(
      async () => {
        const r = await scrapeViaProxy().catch(() => undefined);
        return r?.status === 200 ? r.text : undefined;
      },
      90_000,
      "a scrape after the router restart",
      () => `${overlay.logs()}\n${host.logTail(4096)}`,
    );
    expect(metricNames(text)).toContain("node_load1");
  });
});
