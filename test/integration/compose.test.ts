/**
 * The real docker-compose.yml brought up by a real engine, as users run it (`docker compose up -d`), with
 * test/compose.override.yml on top: the only change it makes is where the images come from (no registry is
 * reachable here; see that file). What the stack promises, each checked on the running containers:
 * - every service starts only once what it depends on is healthy (or, for the one-shots, completed), read from the
 *   engine's own events;
 * - Prometheus finds node_exporter through scrapez proxy's /sd (Bearer token) and scrapes it over the overlay, on
 *   Prometheus 3.16 and on Debian's 2.42 (only the prometheus service is swapped: `up -d --no-deps prometheus`);
 * - nothing but Prometheus's UI is published, and only on the host's loopback;
 * - a second `up -d` changes nothing; `down` then `up -d` keeps the enrolled identities in their volume;
 * - `docker stop` of scrapez bind and proxy drains and exits 0.
 * The bootstrap script's recovery of a lost identity file is checked separately, on the host against the test
 * overlay (the last describe), because losing a file inside the volume cannot be staged in the stack cheaply.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import YAML from "yaml";
import { nodeExporterBin, prometheus3Bin, prometheusBin, repoRoot, zitiBin } from "../harness/binaries.js";
import {
  RUN_ID,
  baseImage,
  binaryImage,
  busyboxImage,
  docker,
  dockerOk,
  requireEngine,
  scrapezImage,
} from "../harness/docker.js";
import { Overlay } from "../harness/overlay.js";
import { freePort, waitUntil } from "../harness/ports.js";
import { runCommand, tempDir } from "../harness/process.js";

/** The Compose CLI users have: Compose v5 as the `docker compose` plugin (built by scripts/setup.sh). */
const COMPOSE = ["docker", "compose"];
const tag = "[compose.test]";
const project = `scrapez-${RUN_ID.replace(/[^a-z0-9]/g, "")}`;
const LONG_RUNNING = ["ziti", "node-exporter", "scrapez-bind", "scrapez-proxy", "prometheus"];
const ONE_SHOT = ["init", "bootstrap"];
/** The images the override file substitutes, by its environment variable. */
const env: Record<string, string> = {};
let failed = false;

interface Run {
  code: number;
  out: string;
  ms: number;
}

async function compose(args: string[], timeoutMs = 600_000): Promise<Run> {
  const t0 = Date.now();
  const files = ["-f", join(repoRoot, "docker-compose.yml"), "-f", join(repoRoot, "test/compose.override.yml")];
  const r = await runCommand(
    COMPOSE[0]!,
    [...COMPOSE.slice(1), "-p", project, "--project-directory", repoRoot, ...files, ...args],
    { timeoutMs, env: { ...process.env, ...env } },
  );
  return { code: r.code, out: r.stdout + r.stderr, ms: Date.now() - t0 };
}

async function composeOk(args: string[], timeoutMs?: number): Promise<Run> {
  const r = await compose(args, timeoutMs);
  if (r.code !== 0) {
    failed = true;
    throw new Error(`${COMPOSE.join(" ")} ${args.join(" ")} exited ${r.code}:\n${r.out.slice(-4000)}`);
  }
  return r;
}

interface Inspect {
  Id: string;
  Name: string;
  Created: string;
  RestartCount: number;
  State: { Status: string; Running: boolean; ExitCode: number; StartedAt: string; Health?: { Status: string } };
  Config: { Labels: Record<string, string> };
  HostConfig: { PortBindings: Record<string, { HostIp: string; HostPort: string }[] | null> | null };
  NetworkSettings: { Ports: Record<string, { HostIp: string; HostPort: string }[] | null> | null };
}

/** Every container of the project (running or not), by service. */
async function containers(): Promise<Map<string, Inspect>> {
  const ids = (await dockerOk(["ps", "-aq", "--no-trunc", "--filter", `label=com.docker.compose.project=${project}`]))
    .split("\n")
    .filter(Boolean);
  const all = ids.length ? (JSON.parse(await dockerOk(["inspect", ...ids])) as Inspect[]) : [];
  return new Map(all.map((c) => [c.Config.Labels["com.docker.compose.service"]!, c]));
}

async function container(service: string): Promise<Inspect> {
  const c = (await containers()).get(service);
  if (!c) throw new Error(`no container for service ${service} in ${project}`);
  return c;
}

interface Event {
  status: string;
  id: string;
  timeNano: number;
  Actor: { Attributes: Record<string, string> };
}

/**
 * The engine's container events for the project, streamed from before the first `up`: the engine keeps only its
 * last 256 events, and every healthcheck adds three, so reading them afterwards loses the start of the stack.
 */
const eventLog: Event[] = [];
let eventStream: ChildProcess | undefined;
function streamEvents(): void {
  eventStream = spawn(
    "docker",
    [
      "events",
      "--filter",
      "type=container",
      "--filter",
      `label=com.docker.compose.project=${project}`,
      "--format",
      "{{json .}}",
    ],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  let buf = "";
  eventStream.stdout!.on("data", (d: Buffer) => {
    buf += d.toString();
    const lines = buf.split("\n");
    buf = lines.pop()!;
    for (const l of lines) if (l) eventLog.push(JSON.parse(l) as Event);
  });
}
/** The events since a time (ms), once the stream has caught up with now. */
async function events(sinceMs: number): Promise<Event[]> {
  await new Promise((r) => setTimeout(r, 1000));
  return eventLog.filter((e) => e.timeNano >= sinceMs * 1e6);
}

/** Prometheus's HTTP API on the published loopback port. */
async function promApi<T>(path: string): Promise<T | undefined> {
  try {
    const res = await fetch(`http://127.0.0.1:${env.PROMETHEUS_PORT}${path}`, { signal: AbortSignal.timeout(5_000) });
    if (!res.ok) return undefined;
    return ((await res.json()) as { data: T }).data;
  } catch {
    return undefined;
  }
}

interface Target {
  health: string;
  labels: Record<string, string>;
  discoveredLabels: Record<string, string>;
  scrapeUrl: string;
  lastError: string;
}

/**
 * Prometheus (whichever image runs) discovered node_exporter through /sd and scraped it through the proxy: the
 * target is up, `up` is 1 and node_exporter's own metrics are stored.
 */
async function assertScrapesThroughOverlay(version: string): Promise<void> {
  const t0 = Date.now();
  const build = await waitUntil(
    () =>
      promApi<{ version: string }>("/api/v1/status/buildinfo").then((b) =>
        b?.version.startsWith(version) ? b : undefined,
      ),
    60_000,
    `Prometheus ${version} answering on 127.0.0.1:${env.PROMETHEUS_PORT}`,
  );
  let last: unknown;
  const target = await waitUntil(
    async () => {
      const t = await promApi<{ activeTargets: Target[] }>("/api/v1/targets?state=active");
      last = t;
      return t?.activeTargets.find((a) => a.labels.job === "ziti" && a.health === "up");
    },
    90_000,
    `Prometheus ${version}: the ziti job's target up`,
    () => `${JSON.stringify(last)}\n`,
  );
  // Found by /sd (its label) and scraped through the proxy_url at the address /sd gives: service node on the
  // bind identity compose-bind (2.42 spells out the default port).
  expect(target.labels.service).toBe("node");
  expect(target.discoveredLabels.__meta_ziti_service).toBe("node");
  expect(target.scrapeUrl).toMatch(/^http:\/\/compose-bind~node(:80)?\/metrics$/);
  const q = (expr: string) =>
    promApi<{ result: { metric: Record<string, string>; value: [number, string] }[] }>(
      `/api/v1/query?query=${encodeURIComponent(expr)}`,
    );
  const up = await waitUntil(
    () => q('up{job="ziti"}').then((r) => (r?.result.length ? r.result : undefined)),
    30_000,
    "up{job=ziti}",
  );
  expect(up.map((s) => [s.metric.service, s.value[1]])).toEqual([["node", "1"]]);
  const info = await waitUntil(
    () => q('node_exporter_build_info{job="ziti"}').then((r) => (r?.result.length ? r.result : undefined)),
    30_000,
    "node_exporter_build_info{job=ziti}",
  );
  expect(info[0]!.metric.service).toBe("node");
  const series = await q('count({job="ziti", __name__=~"node_.+"})');
  expect(Number(series?.result[0]?.value[1])).toBeGreaterThan(100);
  console.log(
    `${tag} Prometheus ${build.version}: target up through the overlay ${Date.now() - t0} ms after start, ${series?.result[0]?.value[1]} node_* series`,
  );
}

const sha = (b: string) => createHash("sha256").update(b).digest("hex");

/** The identity files in the identities volume, read through scrapez bind (which mounts it read-only). */
async function identityFiles(): Promise<Record<string, string>> {
  const bind = await container("scrapez-bind");
  const ls = await dockerOk(["exec", bind.Id, "ls", "-A", "/identities"]);
  const files: Record<string, string> = {};
  for (const f of ls.split("\n").filter(Boolean))
    files[f] = sha(await dockerOk(["exec", bind.Id, "cat", `/identities/${f}`]));
  return files;
}

/** `[bootstrap] <prefix>...` lines of the bootstrap container's output (since a time, ms: `up` may re-run it). */
async function bootstrapLines(prefix: string, sinceMs = 0): Promise<string[]> {
  const since = sinceMs ? ["--since", (sinceMs / 1000).toFixed(3)] : [];
  const logs = await docker(["logs", ...since, (await container("bootstrap")).Id]);
  return `${logs.stdout}${logs.stderr}`
    .split("\n")
    .filter((l) => l.startsWith(`[bootstrap] ${prefix}`))
    .map((l) => l.slice(`[bootstrap] ${prefix}`.length).trim());
}

/**
 * Each container of the project started (since t0) only once what it depends on in the resolved file was healthy
 * (service_healthy) or had exited 0 (service_completed_successfully), read from the engine's events; prints when.
 */
async function assertStartOrder(t0: number, label: string, prometheusHealthy = true): Promise<void> {
  // prometheus is started last and nothing waits for its health (the others were waited for by compose); its
  // first healthcheck is 10 s after its start, so the second check of the order does not wait for it.
  if (prometheusHealthy)
    await waitUntil(
      async () => ((await container("prometheus")).State.Health?.Status === "healthy" ? true : undefined),
      60_000,
      "prometheus healthy",
    );
  const evs = await events(t0);
  const first = (service: string, pred: (e: Event) => boolean) =>
    evs
      .filter((e) => e.Actor.Attributes["com.docker.compose.service"] === service && pred(e))
      .map((e) => e.timeNano)
      .sort()[0];
  const started = (s: string) => first(s, (e) => e.status === "start");
  const healthy = (s: string) => first(s, (e) => e.status === "health_status: healthy");
  const completed = (s: string) => first(s, (e) => e.status === "die" && e.Actor.Attributes.exitCode === "0");
  for (const s of [...LONG_RUNNING, ...ONE_SHOT]) {
    expect(started(s), `${s} started`).toBeDefined();
    if (ONE_SHOT.includes(s)) expect(completed(s), `${s} completed`).toBeDefined();
    else if (s !== "prometheus" || prometheusHealthy) expect(healthy(s), `${s} healthy`).toBeDefined();
  }

  // The edges of the resolved file (docker-compose.yml's depends_on, which the override does not touch).
  const config = await composeOk(["config"]);
  const dependsOn = Object.entries(
    (YAML.parse(config.out) as { services: Record<string, { depends_on?: Record<string, { condition: string }> }> })
      .services,
  ).map(([s, c]) => [s, c.depends_on ?? {}] as const);
  let edges = 0;
  for (const [s, deps] of dependsOn) {
    for (const [d, { condition }] of Object.entries(deps)) {
      const ready = condition === "service_healthy" ? healthy(d) : completed(d);
      expect(ready, `${d} ${condition}`).toBeDefined();
      expect(started(s)! > ready!, `${s} started after ${d} was ${condition}`).toBe(true);
      edges++;
    }
  }
  expect(edges).toBe(8); // ziti, bootstrap x2, scrapez-bind x2, scrapez-proxy x2, prometheus
  const ms = (s: string, t: number | undefined) => `${s} +${Math.round((t! - t0 * 1e6) / 1e6)} ms`;
  console.log(
    `${tag} ${label} order: ${[
      ms("first container started", Math.min(...[...LONG_RUNNING, ...ONE_SHOT].map((s) => started(s)!))),
      ms("init done", completed("init")),
      ms("ziti healthy", healthy("ziti")),
      ms("bootstrap done", completed("bootstrap")),
      ms("node-exporter healthy", healthy("node-exporter")),
      ms("scrapez-bind healthy", healthy("scrapez-bind")),
      ms("scrapez-proxy healthy", healthy("scrapez-proxy")),
      ms("prometheus started", started("prometheus")),
      ...(prometheusHealthy ? [ms("prometheus healthy", healthy("prometheus"))] : []),
    ].join(", ")}`,
  );
}

describe("docker-compose.yml on a real engine", () => {
  const images: Record<string, string> = {};

  beforeAll(async () => {
    await requireEngine();
    const t0 = Date.now();
    const [scrapez, ziti, nodeExporter, prom3, prom2] = await Promise.all([
      scrapezImage(),
      // As openziti/ziti-cli and ziti-controller are made: ziggy 2171:2171 owning HOME /home/ziggy, ENTRYPOINT ziti.
      binaryImage("ziti", zitiBin(), {
        extra: [
          "RUN groupadd -g 2171 ziggy && useradd -u 2171 -g 2171 -d /home/ziggy -m -s /bin/bash ziggy",
          "ENV HOME=/home/ziggy",
          "WORKDIR /home/ziggy",
        ],
        user: "ziggy",
        entrypoint: ["ziti"],
      }),
      // prom/node-exporter runs as nobody, on busybox with glibc (as all prom/* images).
      binaryImage("node_exporter", nodeExporterBin(), { user: "65534:65534", base: "busybox" }),
      // prom/prometheus runs as nobody in /prometheus, its storage directory, which it owns.
      ...[prometheus3Bin(), prometheusBin()].map((bin) =>
        binaryImage("prometheus", bin, {
          extra: ["RUN mkdir /prometheus && chown 65534:65534 /prometheus", "WORKDIR /prometheus"],
          user: "65534:65534",
          base: "busybox",
        }),
      ),
    ]);
    Object.assign(images, { prom3: prom3!, prom2: prom2! });
    Object.assign(env, {
      SCRAPEZ_TEST_BASE_IMAGE: baseImage(),
      SCRAPEZ_TEST_BUSYBOX_IMAGE: busyboxImage(),
      SCRAPEZ_TEST_ZITI_IMAGE: ziti,
      SCRAPEZ_TEST_NODE_EXPORTER_IMAGE: nodeExporter,
      // The harness's build of this source tree (the same Dockerfile and context as the compose file's `build: .`,
      // NODE_IMAGE=<base>), named for both scrapez services; `up --no-build` uses it. Not `up --build`: a
      // compose build of the same context missed the engine's cache on a RUN step (60-100 s more per run here, seen
      // with 1.29) and re-tags the harness's shared tag with its result. Nor a `docker tag ... scrapez:0.1.0`: that name
      // is the user's, shared on this engine.
      SCRAPEZ_TEST_SCRAPEZ_IMAGE: scrapez,
      SCRAPEZ_TEST_PROMETHEUS_IMAGE: prom3!,
      PROMETHEUS_PORT: String(await freePort()),
    });
    streamEvents();
    console.log(`${tag} images ready in ${Date.now() - t0} ms; project ${project}`);
  }, 1_200_000);

  afterAll(async () => {
    eventStream?.kill();
    if (failed) {
      for (const [service, c] of await containers()) {
        if (c.State.Running && (c.State.Health?.Status ?? "healthy") === "healthy") continue;
        if (ONE_SHOT.includes(service) && c.State.ExitCode === 0) continue;
        const r = await compose(["logs", "--no-color", "--tail", "60", service], 60_000);
        console.log(`${tag} ${service} (${c.State.Status} ${c.State.Health?.Status ?? ""}):\n${r.out}`);
      }
    }
    const r = await compose(["down", "-v", "--remove-orphans", "-t", "15"], 180_000);
    if (r.code !== 0) console.log(`${tag} down -v failed:\n${r.out}`);
  }, 300_000);

  const up = { t0: 0 };

  it("comes up with `up -d`: each service started once what it depends on is healthy or completed", async () => {
    up.t0 = Date.now() - 1000;
    const r = await composeOk(["up", "-d", "--no-build"]);
    console.log(`${tag} up -d (cold volumes): ${r.ms} ms`);
    const cs = await containers();
    expect([...cs.keys()].sort()).toEqual([...LONG_RUNNING, ...ONE_SHOT].sort());
    for (const s of ONE_SHOT) expect(cs.get(s)!.State, s).toMatchObject({ Status: "exited", ExitCode: 0 });
    await assertStartOrder(up.t0, "up -d");
    // The bootstrap made the overlay model on this fresh controller.
    expect((await bootstrapLines("created:")).sort()).toEqual(
      [
        "edge-router-policies scrapez-identities-all-routers",
        "identity compose-bind, enrolled into /identities/compose-bind.json",
        "identity compose-prometheus, enrolled into /identities/compose-prometheus.json",
        "service-edge-router-policies scrapez-services-all-routers",
        "service-policies node-bind",
        "service-policies node-dial",
        "services node",
      ].sort(),
    );
  }, 900_000);

  it("publishes no exporter port: only Prometheus's UI, on the host's loopback", async () => {
    const published: string[] = [];
    for (const [s, c] of await containers()) {
      for (const [port, binds] of Object.entries(c.NetworkSettings.Ports ?? {}))
        for (const b of binds ?? []) published.push(`${s} ${port} ${b.HostIp}:${b.HostPort}`);
      for (const [port, binds] of Object.entries(c.HostConfig.PortBindings ?? {}))
        for (const b of binds ?? []) published.push(`${s} ${port} ${b.HostIp}:${b.HostPort} (config)`);
    }
    expect(published.sort()).toEqual(
      [
        `prometheus 9090/tcp 127.0.0.1:${env.PROMETHEUS_PORT}`,
        `prometheus 9090/tcp 127.0.0.1:${env.PROMETHEUS_PORT} (config)`,
      ].sort(),
    );
    const p = await dockerOk(["port", (await container("prometheus")).Id]);
    expect(p.trim()).toBe(`9090/tcp -> 127.0.0.1:${env.PROMETHEUS_PORT}`);
  }, 60_000);

  it("Prometheus 3.16 finds node_exporter through /sd and scrapes it through the overlay", async () => {
    await assertScrapesThroughOverlay("3.");
  }, 300_000);

  let before: Map<string, Inspect>;
  it("a second `up -d` changes nothing", async () => {
    before = await containers();
    const t0 = Date.now() - 1000;
    const r = await composeOk(["up", "-d", "--no-build"]);
    console.log(`${tag} second up -d: ${r.ms} ms`);
    const after = await containers();
    for (const s of LONG_RUNNING) {
      expect(after.get(s)!.Id, s).toBe(before.get(s)!.Id);
      expect(after.get(s)!.State.StartedAt, s).toBe(before.get(s)!.State.StartedAt);
      expect(after.get(s)!.RestartCount, s).toBe(0);
      expect(r.out).toMatch(new RegExp(`Container ${project}-${s}-1\\s+Running`));
    }
    const evs = await events(t0);
    // Compose may start an exited one-shot container again on `up` (1.29 does); the bootstrap, being idempotent,
    // then finds everything and creates nothing: the state is unchanged even so.
    const restarted = [
      ...new Set(evs.filter((e) => e.status === "start").map((e) => e.Actor.Attributes["com.docker.compose.service"])),
    ];
    expect(restarted.filter((s) => !ONE_SHOT.includes(s!))).toEqual([]);
    console.log(`${tag} second up -d started again: ${restarted.join(", ") || "nothing"}`);
    if (restarted.includes("bootstrap")) {
      expect(await bootstrapLines("created:", t0)).toEqual([]);
      expect(await bootstrapLines("exists:", t0)).toHaveLength(7);
    }
  }, 300_000);

  it("Prometheus 2.42 with the same config finds and scrapes node_exporter too (only prometheus swapped)", async () => {
    env.SCRAPEZ_TEST_PROMETHEUS_IMAGE = images.prom2!;
    const r = await composeOk(["up", "-d", "--no-deps", "prometheus"]);
    console.log(`${tag} up -d --no-deps prometheus (2.42): ${r.ms} ms`);
    const after = await containers();
    expect(after.get("prometheus")!.Id).not.toBe(before.get("prometheus")!.Id);
    for (const s of LONG_RUNNING.filter((s) => s !== "prometheus"))
      expect(after.get(s)!.State.StartedAt, s).toBe(before.get(s)!.State.StartedAt);
    await assertScrapesThroughOverlay("2.42.");
  }, 300_000);

  it("`down` then `up -d` keeps the enrolled identities in their volume", async () => {
    const files = await identityFiles();
    expect(Object.keys(files).sort()).toEqual(["compose-bind.json", "compose-prometheus.json"]);
    const modes = await dockerOk([
      "exec",
      (await container("scrapez-bind")).Id,
      "stat",
      "-c",
      "%a %u %n",
      "/identities/compose-bind.json",
      "/identities/compose-prometheus.json",
    ]);
    expect(modes.trim().split("\n")).toEqual([
      "600 10001 /identities/compose-bind.json",
      "600 10001 /identities/compose-prometheus.json",
    ]);
    // Removing a container on the vfs driver deletes its whole copy of the image; a rehearsal with other image builds on
    // the engine took over 300 s for this `down` (the ziti container's removal).
    const down = await composeOk(["down", "-t", "15"], 480_000);
    expect(await containers()).toHaveProperty("size", 0);
    const t0 = Date.now() - 1000;
    const r = await composeOk(["up", "-d", "--no-build"]);
    console.log(`${tag} down: ${down.ms} ms; up -d on the kept volumes: ${r.ms} ms`);
    await assertStartOrder(t0, "up -d after down", false);
    expect(await identityFiles()).toEqual(files);
    expect(await bootstrapLines("created:")).toEqual([]);
    expect(await bootstrapLines("exists:")).toHaveLength(7);
    // scrapez bind is ready again (probe --ready: its service bound on the overlay) with the kept identity.
    for (const s of ["scrapez-bind", "scrapez-proxy"])
      expect((await container(s)).State.Health?.Status, s).toBe("healthy");
  }, 900_000);

  it("`docker stop` of scrapez bind and proxy drains and exits 0", async () => {
    const cs = await containers();
    const stopped = await Promise.all(
      ["scrapez-proxy", "scrapez-bind"].map(async (s) => {
        const id = cs.get(s)!.Id;
        const t0 = Date.now();
        await dockerOk(["stop", "-t", "15", id], { timeoutMs: 60_000 });
        const ms = Date.now() - t0;
        const c = await container(s);
        const logs = await docker(["logs", "--tail", "20", id]);
        return { s, ms, exit: c.State.ExitCode, logs: `${logs.stdout}${logs.stderr}` };
      }),
    );
    for (const { s, ms, exit, logs } of stopped) {
      expect(exit, `${s}: ${logs}`).toBe(0);
      expect(logs, s).toContain("shutting down");
      expect(logs, s).toContain('"drained"');
      expect(ms, `${s} stopped on SIGTERM, not after the 15 s grace`).toBeLessThan(12_000);
    }
    console.log(`${tag} docker stop: ${stopped.map((x) => `${x.s} ${x.ms} ms exit ${x.exit}`).join(", ")}`);
  }, 120_000);
});

/**
 * config/compose/bootstrap.sh run on the host (bash + the pinned `ziti` CLI) against the test overlay: what the
 * stack above does not stage, the recovery of an identity whose file was lost from the volume (its enrollment token
 * is single-use, so the identity is re-created) without touching anything else.
 */
describe("config/compose/bootstrap.sh", () => {
  const dir = tempDir("compose-bootstrap");
  const ids = join(dir, "identities");
  const bin = join(dir, "bin");
  let overlay: Overlay;

  async function bootstrap(): Promise<{ code: number; out: string }> {
    const r = await runCommand("bash", [join(repoRoot, "config/compose/bootstrap.sh")], {
      timeoutMs: 180_000,
      env: {
        PATH: `${bin}:/usr/bin:/bin`,
        HOME: dir,
        TMPDIR: dir,
        ZITI_CTRL: new URL(overlay.ctrlUrl).host,
        ZITI_USER: "admin",
        ZITI_PWD: "admin",
        IDENTITY_DIR: ids,
      },
    });
    return { code: r.code, out: r.stdout + r.stderr };
  }

  async function entities(): Promise<Record<string, string[]>> {
    const state: Record<string, string[]> = {};
    for (const c of ["identities", "services", "service-policies"]) {
      const r = await overlay.api<{ data: { id: string; name: string; updatedAt: string }[] }>("GET", `${c}?limit=500`);
      state[c] = r.data.map((e) => `${e.name} ${e.id} ${e.updatedAt}`).sort();
    }
    return state;
  }

  beforeAll(async () => {
    mkdirSync(ids, { mode: 0o700, recursive: true });
    mkdirSync(bin, { recursive: true });
    symlinkSync(zitiBin(), join(bin, "ziti"));
    overlay = await Overlay.start();
  }, 120_000);

  afterAll(async () => {
    await overlay?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("recovers a lost identity file by re-creating only that identity", async () => {
    const first = await bootstrap();
    expect(first.code, first.out).toBe(0);
    const before = await entities();
    const bindFile = readFileSync(join(ids, "compose-bind.json"));
    rmSync(join(ids, "compose-prometheus.json"));
    const r = await bootstrap();
    expect(r.code, r.out).toBe(0);
    expect(r.out).toMatch(/identity compose-prometheus exists but .* does not: re-creating it/);
    expect(r.out.split("\n").filter((l) => l.startsWith("[bootstrap] created:"))).toEqual([
      `[bootstrap] created: identity compose-prometheus, enrolled into ${join(ids, "compose-prometheus.json")}`,
    ]);
    expect(readdirSync(ids).sort()).toEqual(["compose-bind.json", "compose-prometheus.json"]);
    expect(statSync(join(ids, "compose-prometheus.json")).mode & 0o777).toBe(0o600);
    expect(readFileSync(join(ids, "compose-bind.json")).equals(bindFile)).toBe(true);
    const after = await entities();
    expect(after.services).toEqual(before.services);
    expect(after["service-policies"]).toEqual(before["service-policies"]);
    const others = (s: Record<string, string[]>) => s.identities!.filter((l) => !l.startsWith("compose-prometheus "));
    expect(others(after)).toEqual(others(before));
    expect(after.identities!.find((l) => l.startsWith("compose-prometheus "))).not.toBe(
      before.identities!.find((l) => l.startsWith("compose-prometheus ")),
    );
  }, 300_000);
});
