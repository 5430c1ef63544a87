/**
 * `GET /sd`: Prometheus http_sd JSON from the overlay stand-in's service list, its filters, and how the list follows
 * the overlay (servicesChanged, periodic refresh, failed refreshes).
 */
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { attributesLabel } from "../../src/proxy/catalog.js";
import { ErrorCodes, ZitiError } from "../../src/ziti/errors.js";
import { StandInOverlay, request, startProxy, testDir, type Running } from "../harness/proxy-standin.js";

const td = testDir();
const running: Running[] = [];
afterEach(async () => {
  for (const r of running.splice(0)) await r.close();
});
afterAll(() => td.remove());

async function start(overlays: StandInOverlay[], raw: Record<string, unknown> = {}): Promise<Running> {
  const r = await startProxy(td.dir, overlays, raw);
  running.push(r);
  return r;
}

async function sd(r: Running, query = ""): Promise<unknown> {
  const res = await request(r.port, `/sd${query}`);
  expect(res.status).toBe(200);
  expect(res.headers["content-type"]).toBe("application/json");
  return JSON.parse(res.text);
}

function overlayA(): StandInOverlay {
  return new StandInOverlay("prometheus-central")
    .add("node", { attrs: ["metrics", "linux"], id: "s-node" })
    .add("app", { attrs: ["metrics"], id: "s-app" })
    .add("My Service", { id: "s-my" })
    .add("db-internal", { attrs: ["internal"], id: "s-db" })
    .add("bind-only", { permissions: ["Bind"], id: "s-bind" })
    .add("both", { permissions: ["Bind", "Dial"], id: "s-both" });
}

describe("GET /sd", () => {
  it("answers [] (application/json) when nothing is dialable", async () => {
    const r = await start([new StandInOverlay().add("bind-only", { permissions: ["Bind"] })]);
    const res = await request(r.port, "/sd");
    expect(res.status).toBe(200);
    expect(res.headers["content-type"]).toBe("application/json");
    expect(res.text).toBe("[]");
  });

  it("lists one target group per dialable service, sorted, with the __meta_ziti_* labels", async () => {
    const r = await start([overlayA()]);
    expect(await sd(r)).toEqual([
      {
        targets: ["x--4d792053657276696365"],
        labels: {
          __meta_ziti_service: "My Service",
          __meta_ziti_service_id: "s-my",
          __meta_ziti_service_attributes: "",
          __meta_ziti_identity: "prometheus-central",
        },
      },
      {
        targets: ["app"],
        labels: {
          __meta_ziti_service: "app",
          __meta_ziti_service_id: "s-app",
          __meta_ziti_service_attributes: ",metrics,",
          __meta_ziti_identity: "prometheus-central",
        },
      },
      expect.objectContaining({ targets: ["both"] }),
      expect.objectContaining({ targets: ["db-internal"] }),
      {
        targets: ["node"],
        labels: {
          __meta_ziti_service: "node",
          __meta_ziti_service_id: "s-node",
          __meta_ziti_service_attributes: ",linux,metrics,",
          __meta_ziti_identity: "prometheus-central",
        },
      },
    ]);
  });

  it("offers one target per replica bound by edge identity, addressable as <identity>~<service>", async () => {
    const o = overlayA();
    o.replicaMap.set("node", ["bind-b", "bind-a"]);
    const r = await start([o]);
    const groups = (await sd(r, "?service=node")) as { targets: string[]; labels: Record<string, string> }[];
    expect(groups.map((g) => [g.targets[0], g.labels.__meta_ziti_replica])).toEqual([
      ["bind-a~node", "bind-a"],
      ["bind-b~node", "bind-b"],
    ]);
    expect(groups[0]!.labels.__meta_ziti_service).toBe("node");
  });

  it.each([
    ["?service=node", ["node"]],
    ["?service=n*", ["node"]],
    ["?service=node&service=app", ["app", "node"]],
    ["?service=My%20Service", ["My Service"]],
    ["?attribute=metrics", ["app", "node"]],
    ["?attribute=linux", ["node"]],
    ["?attribute=metrics&service=a*", ["app"]],
    ["?attribute=metric", []],
    ["?service=zzz", []],
  ])("filters %s", async (query, services) => {
    const r = await start([overlayA()]);
    const groups = (await sd(r, query)) as { labels: Record<string, string> }[];
    expect(groups.map((g) => g.labels.__meta_ziti_service)).toEqual(services);
  });

  it.each([
    [{ include: ["#metrics"] }, ["app", "node"]],
    [{ include: ["node", "My*"] }, ["My Service", "node"]],
    [{ exclude: ["#internal", "both"] }, ["My Service", "app", "node"]],
    [{ include: ["#metrics"], exclude: ["app"] }, ["node"]],
  ])("config discovery %j shapes /sd (but not what is reachable)", async (discovery, services) => {
    const o = overlayA();
    const r = await start([o], { discovery });
    const groups = (await sd(r)) as { labels: Record<string, string> }[];
    expect(groups.map((g) => g.labels.__meta_ziti_service)).toEqual(services);
    // Excluded from discovery is not the same as unreachable: the overlay's Dial policies decide that.
    // (The stand-in has no upstream for it, so the dial itself fails: proof that it was attempted.)
    const res = await request(r.port, "http://db-internal/metrics");
    expect(res.text).toMatch(/service "db-internal" via identity "prometheus-central" is unreachable/);
  });

  it("merges identities: each service once, labelled with the first identity that may dial it", async () => {
    const a = new StandInOverlay("id-a").add("shared").add("only-a");
    const b = new StandInOverlay("id-b").add("shared").add("only-b");
    const r = await start([a, b]);
    const groups = (await sd(r)) as { labels: Record<string, string> }[];
    expect(groups.map((g) => [g.labels.__meta_ziti_service, g.labels.__meta_ziti_identity])).toEqual([
      ["only-a", "id-a"],
      ["only-b", "id-b"],
      ["shared", "id-a"],
    ]);
  });

  it("follows servicesChanged at once", async () => {
    const o = new StandInOverlay().add("one");
    const r = await start([o], { discovery: { refreshSeconds: 3600 } });
    expect(((await sd(r)) as unknown[]).length).toBe(1);
    o.add("two");
    o.changed();
    await new Promise((res) => setTimeout(res, 50));
    expect(((await sd(r)) as unknown[]).length).toBe(2);
  });

  it("refreshes periodically without a signal", async () => {
    const o = new StandInOverlay().add("one");
    const r = await start([o], { discovery: { refreshSeconds: 1 } });
    o.add("two");
    expect(((await sd(r)) as unknown[]).length).toBe(1);
    await new Promise((res) => setTimeout(res, 1_300));
    expect(((await sd(r)) as unknown[]).length).toBe(2);
  });

  it("keeps the last list when a refresh fails and stays ready, saying the list is stale and why", async () => {
    const o = new StandInOverlay().add("one");
    const r = await start([o], { discovery: { refreshSeconds: 3600 } });
    o.servicesError = new ZitiError(ErrorCodes.AUTH_FAILED, "the controller rejected our credentials");
    o.add("two");
    o.changed();
    await new Promise((res) => setTimeout(res, 50));
    expect(((await sd(r)) as unknown[]).length).toBe(1);
    const ready = await request(r.port, "/-/ready");
    expect(ready.status).toBe(200);
    expect(ready.text).toMatch(
      /serving the last service list \(cannot list services: the controller rejected our credentials\)/,
    );
    expect(r.logs).toContainEqual(
      expect.objectContaining({ level: "warn", msg: "cannot list services; keeping the last list" }),
    );
    o.servicesError = undefined;
    o.changed();
    await new Promise((res) => setTimeout(res, 50));
    expect(((await sd(r)) as unknown[]).length).toBe(2);
    const again = await request(r.port, "/-/ready");
    expect(again.status).toBe(200);
    expect(again.text).not.toMatch(/last service list/);
  });

  it("a request for a service that appeared since the last list looks again (throttled)", async () => {
    const o = new StandInOverlay().add("one");
    const r = await start([o], { discovery: { refreshSeconds: 3600 } });
    o.add("late");
    await new Promise((res) => setTimeout(res, 5_100)); // past the miss throttle
    const res = await request(r.port, "http://late/metrics");
    // No upstream route in the stand-in: the dial fails, which proves it was attempted (not refused).
    expect(res.status).toBe(502);
    expect(res.text).toMatch(/service "late" via identity "prometheus-central" is unreachable/);
    const listsBefore = o.servicesCalls;
    for (let i = 0; i < 20; i++) expect((await request(r.port, "http://unknown-host/")).status).toBe(502);
    // 20 misses right after a listing do not list again (an unknown host must not hammer the controller).
    expect(o.servicesCalls - listsBefore).toBe(0);
  });
});

describe("attribute label", () => {
  it.each([
    [[], ""],
    [["a"], ",a,"],
    [["b", "a"], ",a,b,"],
  ])("%j -> %s", (attrs, label) => {
    expect(attributesLabel(attrs)).toBe(label);
  });
});
