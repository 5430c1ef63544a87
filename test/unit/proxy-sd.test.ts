/**
 * `GET /sd`: Prometheus http_sd JSON from the overlay stand-in's service list, its filters, and how the list follows
 * the overlay (servicesChanged, periodic refresh, failed refreshes).
 */
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { setTimeout as sleep } from "node:timers/promises";
import { globMatch } from "../../src/common/naming.js";
import type { OverlayService } from "../../src/overlay/types.js";
import { MISS_RELIST_MS, attributesLabel } from "../../src/proxy/catalog.js";
import { compileGlob } from "../../src/proxy/glob.js";
import { ERROR_HEADER, MAX_SD_GLOB, MAX_SD_PATTERNS, MAX_SD_QUERY } from "../../src/proxy/request.js";
import { ErrorCodes, ZitiError } from "../../src/ziti/errors.js";
import { prng } from "./prng.js";
import {
  StandInOverlay,
  Upstream,
  metric,
  request,
  startProxy,
  testDir,
  type Running,
} from "../harness/proxy-standin.js";

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

/** The stand-in, with controller latency and a count of replica listings per service. */
class CountingOverlay extends StandInOverlay {
  readonly replicaCalls = new Map<string, number>();
  replicasDelayMs = 0;
  servicesDelayMs = 0;

  override async services(): Promise<OverlayService[]> {
    const list = super.services(); // counted now, answered after the delay
    if (this.servicesDelayMs > 0) await sleep(this.servicesDelayMs);
    return list;
  }

  override async replicas(service: string): Promise<string[]> {
    this.replicaCalls.set(service, (this.replicaCalls.get(service) ?? 0) + 1);
    if (this.replicasDelayMs > 0) await sleep(this.replicasDelayMs);
    return super.replicas(service);
  }

  calls(service: string): number {
    return this.replicaCalls.get(service) ?? 0;
  }
}

describe("a replica name the list does not have is answered from the list", () => {
  it("2,000 distinct unknown replica names: 502 naming the replicas, no dial, one listing per service per interval", async () => {
    const o = new CountingOverlay().add("multi").add("good").add("other");
    o.replicaMap.set("multi", ["bind-a", "bind-b"]);
    o.replicaMap.set("other", ["bind-c"]); // "good" is bound without edge identities: it lists none
    o.replicasDelayMs = 20; // a controller round trip: the misses that arrive meanwhile wait for the same one
    const r = await start([o], { discovery: { refreshSeconds: 3600 } });
    await sleep(MISS_RELIST_MS + 100); // the start-up listing is an interval old: a miss may ask once
    const before = { multi: o.calls("multi"), good: o.calls("good"), other: o.calls("other"), svc: o.servicesCalls };
    const started = Date.now();
    let next = 0;
    const slowest: number[] = [];
    await Promise.all(
      Array.from({ length: 50 }, async () => {
        while (next < 2_000) {
          const i = next++;
          const svc = i % 2 === 0 ? "multi" : "good";
          const res = await request(r.port, `http://r${i}~${svc}/metrics`);
          expect(res.status).toBe(502);
          expect(res.headers[ERROR_HEADER]).toBe("not-dialable");
          expect(res.text).toBe(
            svc === "multi"
              ? `scrapez proxy: service "multi" has no replica "r${i}": its replicas are "bind-a", "bind-b"; address one as bind-a~multi\n`
              : `scrapez proxy: service "good" has no replica "r${i}": no identity binds it by edge identity, so it has no replicas; address the service as good\n`,
          );
          slowest.push(res.ms);
        }
      }),
    );
    const elapsed = Date.now() - started;
    const allowed = 1 + Math.floor(elapsed / MISS_RELIST_MS);
    const asked = { multi: o.calls("multi") - before.multi, good: o.calls("good") - before.good };
    // One listing was due for each service: the 1,000 misses of each shared it (and any later one).
    expect(asked.multi).toBeGreaterThanOrEqual(1);
    expect(asked.multi).toBeLessThanOrEqual(allowed);
    expect(asked.good).toBeGreaterThanOrEqual(1);
    expect(asked.good).toBeLessThanOrEqual(allowed);
    // Nothing else was asked: not the other services' replicas, not the service list; and nothing was dialed.
    expect(o.calls("other") - before.other).toBe(0);
    expect(o.servicesCalls - before.svc).toBe(0);
    expect(o.dials).toHaveLength(0);
    expect(r.proxy.poolCount).toBe(0);
    const m = (await request(r.port, "/metrics")).text;
    expect(metric(m, 'scrapez_proxy_replica_lists_total{cause="miss",result="ok"}')).toBe(asked.multi + asked.good);
    slowest.sort((a, b) => a - b);
    process.stdout.write(
      `[proxy] 2,000 unknown replica names in ${elapsed} ms: ${asked.multi}+${asked.good} replica listings, ` +
        `p50 ${slowest[1_000]} ms, p99 ${slowest[1_980]} ms\n`,
    );
  });

  it("a replica bound since the last listing is dialable after at most one interval; /sd lists it then", async () => {
    const up = await new Upstream((_q, res) => res.end("new replica\n")).start();
    try {
      const o = new CountingOverlay().add("multi");
      o.replicaMap.set("multi", ["bind-a"]);
      o.routes.set("bind-new~multi", up.port);
      const r = await start([o], { discovery: { refreshSeconds: 3600 } });
      const listed = o.calls("multi");
      o.replicaMap.set("multi", ["bind-a", "bind-new"]); // bound now
      // Within the interval of the last listing: answered from the list, without asking.
      const early = await request(r.port, "http://bind-new~multi/metrics");
      expect(early.status).toBe(502);
      expect(early.text).toMatch(
        /^scrapez proxy: service "multi" has no replica "bind-new": its replicas are "bind-a";/,
      );
      expect(o.calls("multi")).toBe(listed);
      await sleep(MISS_RELIST_MS + 100);
      // The first miss after it asks once, waits for the answer and is served.
      const late = await request(r.port, "http://bind-new~multi/metrics");
      expect(late.status).toBe(200);
      expect(late.text).toBe("new replica\n");
      expect(o.calls("multi")).toBe(listed + 1);
      expect(o.dialsOf("multi").at(-1)).toMatchObject({ identity: "bind-new" });
      const groups = (await sd(r)) as { targets: string[] }[];
      expect(groups.map((g) => g.targets[0])).toEqual(["bind-a~multi", "bind-new~multi"]);
      expect(o.servicesCalls).toBe(1); // the service list was never asked for again
    } finally {
      await up.close();
    }
  });

  it("unknown services: misses share the listing under way, and none follows within the interval after it ends", async () => {
    const o = new CountingOverlay().add("one");
    const r = await start([o], { discovery: { refreshSeconds: 3600 } });
    // A refresh that takes longer than the miss interval (thousands of services, a slow controller).
    o.servicesDelayMs = MISS_RELIST_MS + 200;
    o.changed();
    await sleep(50);
    const calls = o.servicesCalls;
    const waited = await Promise.all(
      Array.from({ length: 200 }, (_, i) => request(r.port, `http://unknown-${i}/metrics`)),
    );
    expect(waited.every((w) => w.status === 502)).toBe(true);
    expect(o.servicesCalls).toBe(calls);
    o.servicesDelayMs = 0;
    // Just after that refresh ended: answered from the list, no new listing (the interval counts from the end).
    for (let i = 0; i < 20; i++) expect((await request(r.port, `http://later-${i}/metrics`)).status).toBe(502);
    expect(o.servicesCalls).toBe(calls);
  });
});

describe("/sd patterns are capped and compiled once", () => {
  it("caps service= and attribute= values together, and their length, with a 400 naming the limit", async () => {
    const r = await start([overlayA()]);
    const many = (n: number) =>
      Array.from({ length: n }, (_, i) => (i % 2 ? `attribute=a${i}` : `service=s${i}`)).join("&");
    const over = await request(r.port, `/sd?${many(MAX_SD_PATTERNS + 1)}`);
    expect(over.status).toBe(400);
    expect(over.headers[ERROR_HEADER]).toBe("sd-query-too-large");
    expect(over.text).toBe(
      "scrapez proxy: /sd query too large: 17 service= and attribute= values (at most 16 together)\n",
    );
    expect((await request(r.port, `/sd?${many(MAX_SD_PATTERNS)}`)).status).toBe(200);
    const long = await request(r.port, `/sd?service=${"*".repeat(MAX_SD_GLOB + 44)}`);
    expect(long.status).toBe(400);
    expect(long.text).toBe("scrapez proxy: /sd query too large: service= is 300 characters (at most 256)\n");
    expect((await request(r.port, `/sd?service=${"*".repeat(MAX_SD_GLOB)}`)).status).toBe(200);
  });

  it("2,000 services of 68 characters and 15 globs of 256: the answer the glob reading gives", async () => {
    const o = new StandInOverlay();
    const names = Array.from({ length: 2_000 }, (_, i) => `${"a".repeat(63)}${String(i).padStart(4, "0")}b`);
    for (const n of names) o.add(n);
    // Globs that make a backtracking matcher work hardest: a star, a run of `?`, then literals late in the name.
    const globs = Array.from({ length: 15 }, (_, j) =>
      `*${"?".repeat(20 + 3 * j)}${j % 10}${(j * 7) % 10}*`
        .padEnd(MAX_SD_GLOB, j % 2 ? "*" : "?*")
        .slice(0, MAX_SD_GLOB),
    );
    expect(globs.every((g) => g.length === MAX_SD_GLOB)).toBe(true);
    const r = await start([o], { discovery: { refreshSeconds: 3600 } });
    const query = globs.map((g) => `service=${g}`).join("&");
    expect(query.length).toBeLessThanOrEqual(MAX_SD_QUERY);
    const got = ((await sd(r, `?${query}`)) as { labels: Record<string, string> }[]).map(
      (g) => g.labels.__meta_ziti_service,
    );
    const want = names.filter((n) => globs.some((g) => globMatch(g, n))).sort();
    expect(want.length).toBeGreaterThan(0);
    expect(want.length).toBeLessThan(names.length);
    expect(got).toEqual(want);
  });

  it("the compiled glob reads every glob as globMatch does (fixed-seed random globs and names)", () => {
    const rand = prng(18);
    const pick = (chars: string, max: number) =>
      Array.from({ length: Math.floor(rand() * max) }, () => chars[Math.floor(rand() * chars.length)]).join("");
    for (let k = 0; k < 20_000; k++) {
      // Up to 80 characters: past one 32-state word, so the carry between words is exercised.
      const glob = pick("*?ab.", k % 10 === 0 ? 80 : 10);
      const name = pick("ab.", k % 10 === 0 ? 90 : 12);
      expect(compileGlob(glob).test(name), `${glob} vs ${name}`).toBe(globMatch(glob, name));
    }
    for (const [glob, name, want] of [
      ["", "", true],
      ["*", "", true],
      ["?", "", false],
      ["a*", "a", true],
      ["*a", "ba", true],
      ["*a", "ab", false],
      ["?".repeat(70), "x".repeat(70), true],
      ["?".repeat(70), "x".repeat(69), false],
      [`*${"?".repeat(64)}b`, `${"a".repeat(64)}b`, true],
      [`*${"?".repeat(64)}b`, `${"a".repeat(63)}b`, false],
      ["é*", "é-node", true],
    ] as const) {
      expect(compileGlob(glob).test(name), `${glob} vs ${name}`).toBe(want);
    }
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
