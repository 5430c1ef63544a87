/**
 * config/compose/bootstrap.sh, the compose file's one-shot `bootstrap` service, run here as it is (bash + the
 * pinned `ziti` CLI) against the real test overlay: it builds the model, a second run changes nothing, a lost
 * identity file is recovered, and the identities it enrolls are the ones the compose configs use: a real
 * scrapez bind and scrapez proxy with them let a scrape of node_exporter through.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync } from "node:fs";
import http from "node:http";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { repoRoot, zitiBin } from "../harness/binaries.js";
import { NodeExporter } from "../harness/node-exporter.js";
import { Overlay } from "../harness/overlay.js";
import { freePort, waitUntil } from "../harness/ports.js";
import { tempDir } from "../harness/process.js";
import { ScrapezProcess } from "../harness/scrapez.js";

const script = join(repoRoot, "config/compose/bootstrap.sh");
const dir = tempDir("compose-bootstrap");
const ids = join(dir, "identities");
const bin = join(dir, "bin");
let overlay: Overlay;
let exporter: NodeExporter;
const procs: ScrapezProcess[] = [];

interface Run {
  code: number;
  out: string;
}

/** The script as the compose service runs it: bash, `ziti` on PATH, its own HOME, the controller address. */
function bootstrap(): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      "bash",
      [script],
      {
        timeout: 180_000,
        env: {
          PATH: `${bin}:/usr/bin:/bin`,
          HOME: dir,
          TMPDIR: dir,
          ZITI_CTRL: new URL(overlay.ctrlUrl).host,
          ZITI_USER: "admin",
          ZITI_PWD: "admin",
          IDENTITY_DIR: ids,
        },
      },
      (err, stdout, stderr) =>
        resolve({ code: err ? (typeof err.code === "number" ? err.code : -1) : 0, out: stdout + stderr }),
    );
  });
}

/** Everything the script may touch on the controller (ids and update times) and the identity files' contents. */
async function snapshot(): Promise<unknown> {
  const state: Record<string, unknown> = {};
  for (const c of [
    "identities",
    "services",
    "service-policies",
    "edge-router-policies",
    "service-edge-router-policies",
  ]) {
    const r = await overlay.api<{ data: { id: string; name: string; updatedAt: string }[] }>("GET", `${c}?limit=500`);
    state[c] = r.data.map((e) => `${e.name} ${e.id} ${e.updatedAt}`).sort();
  }
  state.files = readdirSync(ids)
    .sort()
    .map(
      (f) =>
        `${f} ${createHash("sha256")
          .update(readFileSync(join(ids, f)))
          .digest("hex")}`,
    );
  return state;
}

const lines = (r: Run, prefix: string) =>
  r.out
    .split("\n")
    .filter((l) => l.startsWith(`[bootstrap] ${prefix}`))
    .map((l) => l.slice(`[bootstrap] ${prefix}`.length).trim());

beforeAll(async () => {
  mkdirSync(ids, { mode: 0o700 });
  mkdirSync(bin);
  symlinkSync(zitiBin(), join(bin, "ziti"));
  overlay = await Overlay.start();
  exporter = await NodeExporter.start();
}, 120_000);

afterAll(async () => {
  await Promise.allSettled(procs.map((p) => p.close()));
  await exporter?.stop();
  await overlay?.close();
});

describe("config/compose/bootstrap.sh", () => {
  it("creates the service, the policies and two enrolled identities (mode 0600)", async () => {
    const r = await bootstrap();
    expect(r.code, r.out).toBe(0);
    expect(lines(r, "created:").sort()).toEqual(
      [
        "edge-router-policies scrapez-identities-all-routers",
        "identity compose-bind, enrolled into " + join(ids, "compose-bind.json"),
        "identity compose-prometheus, enrolled into " + join(ids, "compose-prometheus.json"),
        "service-edge-router-policies scrapez-services-all-routers",
        "service-policies node-bind",
        "service-policies node-dial",
        "services node",
      ].sort(),
    );
    expect(readdirSync(ids).sort()).toEqual(["compose-bind.json", "compose-prometheus.json"]);
    for (const f of readdirSync(ids)) expect(statSync(join(ids, f)).mode & 0o777).toBe(0o600);
  }, 200_000);

  it("a second run finds everything and changes nothing", async () => {
    const before = await snapshot();
    const r = await bootstrap();
    expect(r.code, r.out).toBe(0);
    expect(lines(r, "created:")).toEqual([]);
    expect(lines(r, "exists:")).toHaveLength(7);
    expect(await snapshot()).toEqual(before);
  }, 200_000);

  it("recovers a lost identity file by re-creating only that identity", async () => {
    const before = (await snapshot()) as Record<string, string[]>;
    rmSync(join(ids, "compose-prometheus.json"));
    const r = await bootstrap();
    expect(r.code, r.out).toBe(0);
    expect(r.out).toMatch(/identity compose-prometheus exists but .* does not: re-creating it/);
    expect(lines(r, "created:")).toEqual([
      `identity compose-prometheus, enrolled into ${join(ids, "compose-prometheus.json")}`,
    ]);
    const after = (await snapshot()) as Record<string, string[]>;
    expect(after.services).toEqual(before.services);
    expect(after["service-policies"]).toEqual(before["service-policies"]);
    const keep = (s: Record<string, string[]>) => s.identities!.filter((l) => !l.startsWith("compose-prometheus "));
    expect(keep(after)).toEqual(keep(before));
  }, 200_000);

  it("its identities are the compose model: scrapez bind and proxy with them scrape node_exporter", async () => {
    // config/compose/bind.yaml and proxy.yaml with this machine's paths instead of the containers'.
    const bind = new ScrapezProcess("compose-bind", "bind", {
      identity: join(ids, "compose-bind.json"),
      targets: [{ service: "node", upstream: exporter.url }],
    });
    procs.push(bind);
    bind.start();
    await bind.waitFor(() => bind.logLines().some((l) => l.msg === "service bound"), 60_000, "node bound");
    const port = await freePort();
    const proxy = new ScrapezProcess("compose-proxy", "proxy", {
      identities: [join(ids, "compose-prometheus.json")],
      listen: `127.0.0.1:${port}`,
    });
    procs.push(proxy);
    proxy.start();
    const body = await waitUntil(
      () =>
        new Promise<string | undefined>((resolve) => {
          http
            .get({ host: "127.0.0.1", port, path: "http://node/metrics", agent: false }, (res) => {
              let b = "";
              res.on("data", (d: Buffer) => (b += d.toString()));
              res.on("end", () => resolve(res.statusCode === 200 ? b : undefined));
            })
            .on("error", () => resolve(undefined));
        }),
      60_000,
      "node_exporter through the compose identities",
      () => proxy.logTail(4096),
    );
    expect(body).toMatch(/^node_exporter_build_info\{/m);
  }, 150_000);
});
