/**
 * Issue 23 item 4 on a real overlay: `scrapez proxy` dials each target `/sd` lists ahead of its first scrape (its
 * Dial session and a pooled circuit), one Dial session per service serves all its replicas, and a refresh lists a
 * service's replicas again only when they can have changed. Real controller and router, two real `scrapez bind`
 * processes (two replicas of one service), the proxy as a real process; observed through the proxy's /metrics and
 * through the controller's circuits (`ziti fabric list circuits`): a target's first scrape rides the circuit its
 * warm-up dialed, no circuit of its own.
 */
import { mkdirSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Overlay } from "../harness/overlay.js";
import { freePort, waitUntil } from "../harness/ports.js";
import { runCommand, tempDir } from "../harness/process.js";
import { ScrapezProcess } from "../harness/scrapez.js";

const dir = tempDir("proxy-warmup");
let overlay: Overlay;
let exporter: http.Server;
let exporterRequests = 0;
const procs: ScrapezProcess[] = [];
let proxy: ScrapezProcess;
let proxyPort: number;

/** A GET through the proxy (forward-proxy form, as Prometheus's proxy_url sends it). */
function viaProxy(target: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: "127.0.0.1", port: proxyPort, path: target, timeout: 20_000 }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (body += d));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on("error", reject);
  });
}

/** The sum of the proxy's series whose line starts with `prefix` (a name, optionally with the start of its labels). */
async function metric(prefix: string): Promise<number> {
  const text = (await viaProxy("/metrics")).body;
  return text
    .split("\n")
    .filter((l) => l.startsWith(prefix))
    .reduce((sum, l) => sum + Number(l.split(" ").pop()), 0);
}

/** The `ziti` CLI's login lives under this HOME. */
let zitiEnv: NodeJS.ProcessEnv;
async function ziti(args: string[]): Promise<string> {
  const r = await runCommand(overlay.zitiBin, args, { env: zitiEnv, timeoutMs: 30_000 });
  if (r.code !== 0) throw new Error(`ziti ${args.join(" ")}: exit ${r.code}\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** The controller's circuits (only the proxy dials here, so they are all its): id → service name. */
async function circuits(): Promise<Map<string, string>> {
  const out = await ziti(["fabric", "list", "circuits", "limit 500", "--output-json"]);
  const body = JSON.parse(out.slice(out.indexOf("{"))) as { data: { id: string; service?: { name?: string } }[] };
  return new Map(body.data.map((c) => [c.id, c.service?.name ?? "?"]));
}

/** service name → how many circuits, sorted by service. */
const perService = (c: Map<string, string>) =>
  Object.fromEntries([...new Set(c.values())].sort().map((s) => [s, [...c.values()].filter((v) => v === s).length]));

async function sdTargets(): Promise<string[]> {
  const r = await viaProxy("/sd");
  if (r.status !== 200) return [];
  return (JSON.parse(r.body) as { targets: string[] }[]).flatMap((g) => g.targets).sort();
}

beforeAll(async () => {
  exporter = http.createServer((_req, res) => {
    exporterRequests++;
    res.writeHead(200, { "content-type": "text/plain; version=0.0.4" });
    res.end("warm_up_demo 1\n");
  });
  await new Promise<void>((r) => exporter.listen(0, "127.0.0.1", r));
  const upstream = `http://127.0.0.1:${(exporter.address() as AddressInfo).port}`;
  overlay = await Overlay.start();
  const home = join(dir, ".home");
  mkdirSync(home, { recursive: true });
  zitiEnv = { ...process.env, HOME: home };
  await ziti(["edge", "login", `127.0.0.1:${overlay.ctrlPort}`, "-u", "admin", "-p", "admin", "--yes"]);
  await overlay.service("warm-multi", { dial: ["#warm-clients"], bind: ["#warm-servers"] });
  await overlay.service("warm-single", { dial: ["#warm-clients"], bind: ["#warm-servers"] });
  // Bound from the start, dialable only once the test adds a Dial policy: a service that appears in /sd later.
  await overlay.service("warm-late", { dial: ["#nobody"], bind: ["#warm-servers"] });
  const binds: [string, string[]][] = [
    ["bind-a", ["warm-multi", "warm-single", "warm-late"]],
    ["bind-b", ["warm-multi"]],
  ];
  for (const [id, services] of binds) {
    const b = new ScrapezProcess(`scrapez-warmup-${id}`, "bind", {
      identity: await overlay.identity(id, ["warm-servers"], dir),
      logLevel: "warn",
      targets: services.map((service) => ({ service, upstream })),
    });
    procs.push(b);
    b.start();
  }
  proxyPort = await freePort();
  proxy = new ScrapezProcess("scrapez-warmup-proxy", "proxy", {
    identities: [await overlay.identity("prometheus-warm", ["warm-clients"], dir)],
    listen: `127.0.0.1:${proxyPort}`,
    logLevel: "warn",
    // Short, so the test sees several refreshes.
    discovery: { refreshSeconds: 2 },
  });
  procs.push(proxy);
  proxy.start();
}, 180_000);

afterAll(async () => {
  for (const p of procs.reverse()) await p.close().catch(() => undefined);
  await overlay?.close();
  await new Promise((r) => exporter?.close(r));
});

describe("the proxy warms the overlay before Prometheus asks", () => {
  it("dials every target /sd lists before any scrape, and the first scrapes take those connections", async () => {
    const all = ["bind-a~warm-multi", "bind-a~warm-single", "bind-b~warm-multi"];
    await waitUntil(
      async () => JSON.stringify(await sdTargets()) === JSON.stringify(all),
      90_000,
      "/sd to list both replicas of warm-multi and warm-single's one",
      () => proxy.logTail(4096),
    );
    await waitUntil(
      async () => (await metric("scrapez_proxy_warm_connections_held")) === 3,
      60_000,
      "a connection held for each of the 3 targets",
      () => proxy.logTail(4096),
    );
    expect(await metric('scrapez_proxy_warm_dials_total{result="ok"}')).toBe(3);
    // The controller sees them: a circuit to each target, before any scrape.
    const warmed = await circuits();
    expect(perService(warmed)).toEqual({ "warm-multi": 2, "warm-single": 1 });
    // Dialing ahead asked the exporters nothing: no request went through those connections.
    expect(exporterRequests).toBe(0);
    // The scrapes' own dials so far: none.
    expect(await metric("scrapez_proxy_dials_total")).toBe(0);

    for (const t of all) {
      const r = await viaProxy(`http://${t}/metrics`);
      expect(r).toEqual({ status: 200, body: "warm_up_demo 1\n" });
    }
    expect(exporterRequests).toBe(3);
    expect(await metric('scrapez_proxy_warm_connections_total{outcome="taken"}')).toBe(3);
    expect(await metric("scrapez_proxy_warm_connections_held")).toBe(0);
    // Each target's first scrape went over the circuit dialed ahead: the controller has the same three circuits
    // and no other (a scrape that dialed for itself would have made a fourth; one that dialed and closed the warm
    // connection would have replaced one).
    expect([...(await circuits()).keys()].sort()).toEqual([...warmed.keys()].sort());
    // And the next scrapes reuse the pooled connections: still those circuits, no new warm-up dial, no failed one.
    for (const t of all) expect((await viaProxy(`http://${t}/metrics`)).status).toBe(200);
    expect(exporterRequests).toBe(6);
    expect([...(await circuits()).keys()].sort()).toEqual([...warmed.keys()].sort());
    expect(await metric("scrapez_proxy_warm_dials_total")).toBe(3);
    expect(await metric('scrapez_proxy_dials_total{service="warm-multi",result="ok"}')).toBe(2);
  });

  it("one Dial session per service, shared by its replicas: 2 sessions for 3 targets over 2 services", async () => {
    // Sessions are not stored by an OpenZiti 2.x controller (its sessions are tokens), so the proxy counts them.
    expect(await metric('scrapez_proxy_sessions_created_total{identity="prometheus-warm"}')).toBe(2);
  });

  it("lists no service's replicas again while nothing changed; a service that appears is listed once and dialed ahead", async () => {
    const lists = () => metric('scrapez_proxy_replica_lists_total{cause="refresh"');
    const refreshes = () => metric('scrapez_proxy_catalog_refreshes_total{result="ok"}');
    const lists0 = await lists();
    const refreshes0 = await refreshes();
    // Both services were listed once, at the first load (a later refresh may have listed one that changed then).
    expect(lists0).toBeGreaterThanOrEqual(2);
    await waitUntil(async () => (await refreshes()) >= refreshes0 + 3, 30_000, "three more catalog refreshes");
    expect(await lists()).toBe(lists0);

    // A Dial policy makes warm-late dialable: the identity's service list changes, the catalog lists its replicas
    // (one request), and its one target is dialed ahead of any scrape.
    await overlay.createServicePolicy("warm-late-dial-now", "Dial", ["#warm-late"], ["#warm-clients"]);
    await waitUntil(
      async () => (await sdTargets()).includes("bind-a~warm-late"),
      60_000,
      "warm-late in /sd",
      () => proxy.logTail(4096),
    );
    await waitUntil(
      async () => (await metric("scrapez_proxy_warm_connections_held")) === 1,
      60_000,
      "warm-late's target dialed ahead",
    );
    expect(await metric('scrapez_proxy_warm_dials_total{result="ok"}')).toBe(4);
    expect(await lists()).toBe(lists0 + 1);
    // The controller has its circuit before any scrape of it ...
    const late = async () => [...(await circuits())].filter(([, svc]) => svc === "warm-late").map(([id]) => id);
    const lateWarm = await late();
    expect(lateWarm).toHaveLength(1);
    const before = exporterRequests;
    expect((await viaProxy("http://bind-a~warm-late/metrics")).status).toBe(200);
    expect(exporterRequests).toBe(before + 1);
    // ... and its first scrape took that circuit, no other.
    expect(await late()).toEqual(lateWarm);
    expect(await metric('scrapez_proxy_warm_connections_total{outcome="taken"}')).toBe(4);
    expect(await metric('scrapez_proxy_sessions_created_total{identity="prometheus-warm"}')).toBe(3);
  });
});
