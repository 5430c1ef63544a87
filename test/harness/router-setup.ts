/**
 * An edge router as both overlay harnesses make one (test/harness/overlay.ts, one controller; test/harness/ha.ts, a
 * cluster): created on the management API (role `public`), its config written (edge and link listeners on `host`,
 * runtime ports) and enrolled with `ziti router enroll`. Running it and waiting for it online is the harness's part.
 */
import { execFile } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { freePort } from "./ports.js";

const execFileP = promisify(execFile);

/** The harness's management API call. */
export type ManagementApi = <T = unknown>(method: string, path: string, body?: unknown) => Promise<T>;

export interface RouterSetup {
  /** `ziti` to enroll with. */
  zitiBin: string;
  api: ManagementApi;
  /** The router's directory is `<home>/<name>`. */
  home: string;
  name: string;
  /** The address its listeners bind and advertise. */
  host: string;
  /** Its `ctrl:` section: one endpoint, or (HA) every member's and a file the router keeps them in. */
  ctrl: { endpoint: string } | { endpoints: string[] };
}

/** Creates, configures and enrolls the router; returns its edge port and its config file (for `ziti router run`). */
export async function setUpRouter(o: RouterSetup): Promise<{ port: number; config: string; dir: string }> {
  const [port, linkPort] = [await freePort(), await freePort()];
  const dir = join(o.home, o.name);
  mkdirSync(dir, { recursive: true });
  const created = await o.api<{ data: { id: string } }>("POST", "edge-routers", {
    name: o.name,
    roleAttributes: ["public"],
    isTunnelerEnabled: false,
  });
  const detail = await o.api<{ data: { enrollmentJwt: string } }>("GET", `edge-routers/${created.data.id}`);
  const jwtFile = join(dir, `${o.name}.jwt`);
  writeFileSync(jwtFile, detail.data.enrollmentJwt);
  const config = join(dir, `${o.name}.yaml`);
  const ctrl =
    "endpoint" in o.ctrl
      ? [`  endpoint: ${o.ctrl.endpoint}`]
      : ["  endpoints:", ...o.ctrl.endpoints.map((e) => `    - ${e}`), `  endpointsFile: "${join(dir, "endpoints")}"`];
  writeFileSync(
    config,
    [
      "v: 3",
      ...("endpoints" in o.ctrl ? ["ha:", "  enabled: true"] : []),
      "identity:",
      `  cert: "${join(dir, "router.cert")}"`,
      `  server_cert: "${join(dir, "router.server.chain.cert")}"`,
      `  key: "${join(dir, "router.key")}"`,
      `  ca: "${join(dir, "router.cas")}"`,
      "ctrl:",
      ...ctrl,
      "link:",
      "  dialers:",
      "    - binding: transport",
      "  listeners:", // only matters with two or more routers
      "    - binding: transport",
      `      bind: tls:${o.host}:${linkPort}`,
      `      advertise: tls:${o.host}:${linkPort}`,
      "listeners:",
      "  - binding: edge",
      `    address: tls:${o.host}:${port}`,
      "    options:",
      `      advertise: ${o.host}:${port}`,
      "      connectTimeoutMs: 5000",
      "edge:",
      "  heartbeatIntervalSeconds: 60",
      "  csr:",
      "    country: US",
      "    organization: scrapez-test",
      "    sans:",
      "      dns: [localhost]",
      `      ip: ["${o.host}"]`,
      "forwarder:",
      "  latencyProbeInterval: 0",
      "",
    ].join("\n"),
  );
  try {
    await execFileP(o.zitiBin, ["router", "enroll", config, "--jwt", jwtFile], {
      cwd: dir,
      env: { ...process.env, TMPDIR: dir },
      timeout: 60_000,
    });
  } catch (err) {
    const e = err as Error & { stderr?: string; stdout?: string };
    throw new Error(`ziti router enroll ${o.name} failed: ${e.message}\n${e.stdout ?? ""}\n${e.stderr ?? ""}`);
  }
  return { port, config, dir };
}
