/**
 * Out through a corporate proxy (issue 24 item 3), with real parts in network namespaces the test makes and removes
 * (test/harness/netns.ts; addresses from 198.18.0.0/15 only):
 *
 *   transit  the overlay: controller and edge router on 198.18.0.1
 *   site     node_exporter and `scrapez bind`; its only route leads to the gateway's address (none to the overlay)
 *   gateway  tinyproxy (Debian's): CONNECT only to the controller's and router's ports, Basic auth, only from the site
 *   central  Prometheus and `scrapez proxy`, straight to the overlay
 *
 * The site's bind reaches the controller (REST, OIDC) and the router (TLS channel) only through tinyproxy, set by
 * HTTPS_PROXY with user:password; central's Prometheus scrapes the site's node_exporter over the overlay. tinyproxy's
 * own log shows the tunnels. Wrong credentials (407) and a stopped proxy each leave a bind unauthenticated with
 * the reason in its log and status file, naming the proxy and never the password.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DarkNet, OVERLAY_HOST, type Netns } from "../harness/netns.js";
import { NodeExporter } from "../harness/node-exporter.js";
import { Overlay } from "../harness/overlay.js";
import { freePort } from "../harness/ports.js";
import { ManagedProcess, removeDir, tempDir } from "../harness/process.js";
import { Prometheus } from "../harness/prometheus.js";
import { ScrapezProcess } from "../harness/scrapez.js";

const PASSWORD = "Pr0xy-s3cret-7Q";
const WRONG = "not-the-password-9Z";

let net: DarkNet;
let overlay: Overlay;
let dir = "";
let site: Netns;
let gatewayHost = "";
let proxyPort = 0;
let tinyproxy: ManagedProcess;
let exporter: NodeExporter;
let bind: ScrapezProcess;
let central: ScrapezProcess;
let prom: Prometheus;
const parts: { close(): Promise<unknown> }[] = [];

function say(line: string): void {
  process.stdout.write(`[egress-proxy] ${line}\n`);
}

const tinyproxyLog = () => readFileSync(join(dir, "tinyproxy.log"), "utf8");

function startTinyproxy(): ManagedProcess {
  const p = new ManagedProcess({
    name: "tinyproxy",
    command: "tinyproxy",
    args: ["-d", "-c", join(dir, "tinyproxy.conf")],
    dir,
    netns: net.site("gateway").name,
  });
  p.start();
  return p;
}

/** A `scrapez bind` in the site for node-site, with its own status file. */
function siteBind(name: string, extra: object, env: NodeJS.ProcessEnv): ScrapezProcess {
  const p = new ScrapezProcess(
    name,
    "bind",
    {
      identity: join(overlay.home, "site-bind.json"),
      statusFile: join(dir, `${name}.status`),
      targets: [{ service: "node-site", upstream: exporter.url }],
      ...extra,
    },
    tempDir(name),
    { netns: site, env },
  );
  parts.push(p);
  p.start();
  return p;
}

const status = (name: string) =>
  JSON.parse(readFileSync(join(dir, `${name}.status`), "utf8")) as { authenticated: boolean; reason?: string };

beforeAll(async () => {
  const t0 = Date.now();
  dir = tempDir("egress");
  net = await DarkNet.create(["site", "gateway", "central"]);
  site = net.site("site");
  gatewayHost = net.addressOf("gateway");
  // The site's only way out: a host route to the gateway (no route to 198.18.0.0/15, so none to the overlay).
  site.ip(["route", "del", "198.18.0.0/15"]);
  site.ip(["route", "add", `${gatewayHost}/32`, "via", "198.18.1.1"]);

  overlay = await Overlay.start({ host: OVERLAY_HOST, netns: net.transit.name });
  await overlay.service("node-site", { dial: ["#scrapers"], bind: ["#site"] });
  await overlay.identity("site-bind", ["site"]);
  await overlay.identity("central", ["scrapers"]);

  proxyPort = await freePort();
  // A corporate proxy's usual rules: CONNECT to listed ports only, from the site only, with Basic auth.
  writeFileSync(
    join(dir, "tinyproxy.conf"),
    [
      `Port ${proxyPort}`,
      `Listen ${gatewayHost}`,
      "Timeout 600",
      `LogFile "${join(dir, "tinyproxy.log")}"`,
      "LogLevel Info",
      "MaxClients 100",
      `Allow ${net.addressOf("site")}`,
      `BasicAuth scrape ${PASSWORD}`,
      `ConnectPort ${overlay.ctrlPort}`,
      `ConnectPort ${overlay.routerPort}`,
      "DisableViaHeader Yes",
      "",
    ].join("\n"),
  );
  tinyproxy = startTinyproxy();
  await tinyproxy.waitFor(
    () => existsSync(join(dir, "tinyproxy.log")) && tinyproxyLog().includes("Accepting connections"),
    15_000,
    "tinyproxy accepting connections",
  );

  exporter = await NodeExporter.start({ netns: site });
  parts.push(exporter);
  bind = siteBind("bind-site", {}, { HTTPS_PROXY: `http://scrape:${PASSWORD}@${gatewayHost}:${proxyPort}` });
  await bind.waitFor(() => bind.logLines().some((l) => l.msg === "service bound"), 90_000, "service bound");

  const centralNs = net.site("central");
  const centralPort = await freePort();
  central = new ScrapezProcess(
    "proxy-central",
    "proxy",
    { identities: [join(overlay.home, "central.json")], listen: `127.0.0.1:${centralPort}` },
    tempDir("proxy-central"),
    { netns: centralNs },
  );
  parts.push(central);
  central.start();
  await central.waitFor(() => central.logLines().some((l) => l.msg === "listening"), 60_000, "listening");
  prom = await Prometheus.start(
    {
      global: { scrape_interval: "2s", scrape_timeout: "2s" },
      scrape_configs: [
        {
          job_name: "egress",
          proxy_url: `http://127.0.0.1:${centralPort}`,
          static_configs: [{ targets: ["node-site"] }],
        },
      ],
    },
    { version: "3", netns: centralNs, port: await freePort() },
  );
  parts.push(prom);
  say(`namespaces, overlay, tinyproxy, bind (through it), proxy and Prometheus up in ${Date.now() - t0} ms`);
}, 300_000);

afterAll(async () => {
  for (const p of parts.reverse()) await p.close().catch(() => undefined);
  await tinyproxy?.close().catch(() => undefined);
  await overlay?.close().catch(() => undefined);
  await net?.close();
  if (dir) removeDir(dir);
});

describe("a site whose only way out is an HTTP CONNECT proxy", () => {
  it("has no route to the overlay: a direct connection to the controller fails in the site", async () => {
    expect(site.routes()).toEqual([
      "198.18.1.0/30 dev eth0 proto kernel scope link src 198.18.1.2",
      `${gatewayHost} via 198.18.1.1 dev eth0`,
    ]);
    await expect(site.fetch(`http://${OVERLAY_HOST}:${overlay.ctrlPort}/`, { timeoutMs: 5_000 })).rejects.toThrow(
      /ENETUNREACH/,
    );
  });

  it("binds through the proxy, and central's Prometheus scrapes the site's node_exporter over the overlay", async () => {
    const up = await prom.waitForQuery('up{job="egress"} == 1', 60_000);
    expect(up[0]?.metric.instance).toBe("node-site");
    const built = await prom.waitForQuery('node_exporter_build_info{job="egress"}', 30_000);
    expect(built.length).toBe(1);
    expect(status("bind-site").authenticated).toBe(true);
  });

  it("tinyproxy's log shows the site's tunnels to the controller and the edge router", () => {
    const log = tinyproxyLog();
    expect(log).toMatch(
      new RegExp(`Connect \\(file descriptor \\d+\\): ${net.addressOf("site").replace(/\./g, "\\.")}`),
    );
    expect(log).toContain(`Request (file descriptor`);
    expect(log).toContain(`CONNECT ${OVERLAY_HOST}:${overlay.ctrlPort} HTTP/1.1`);
    expect(log).toContain(`CONNECT ${OVERLAY_HOST}:${overlay.routerPort} HTTP/1.1`);
    say(
      `tinyproxy log, CONNECT lines:\n  ${log
        .split("\n")
        .filter((l) => l.includes("CONNECT "))
        .slice(0, 4)
        .join("\n  ")}`,
    );
  });

  it("the bind's log names the proxy it uses, without the password", () => {
    const line = bind.logLines().find((l) => l.msg === "controller and routers through an egress proxy");
    expect(line?.egressProxy).toBe(`http://${gatewayHost}:${proxyPort} (from HTTPS_PROXY)`);
    expect(bind.logTail()).not.toContain(PASSWORD);
  });

  it("wrong credentials in egressProxy: the log and status file say proxy authentication is required", async () => {
    const name = "bind-wrong-password";
    const p = siteBind(name, { egressProxy: `http://scrape:${WRONG}@${gatewayHost}:${proxyPort}` }, {});
    await p.waitFor(
      () => p.logLines().find((l) => l.msg === "identity not authenticated yet; retrying"),
      60_000,
      "authFailed",
    );
    const line = p.logLines().find((l) => l.msg === "identity not authenticated yet; retrying")!;
    expect(line.reason).toContain(`egress proxy http://${gatewayHost}:${proxyPort} (from egressProxy)`);
    expect(line.reason).toContain("proxy authentication required");
    expect(line.reason).toContain("check the user and password");
    // The status file follows within its interval.
    const st = await p.waitFor(
      () => (status(name).reason?.includes("proxy authentication required") ? status(name) : undefined),
      30_000,
      "the status file's reason",
    );
    expect(st.authenticated).toBe(false);
    expect(p.logTail()).not.toContain(WRONG);
    expect(readFileSync(join(dir, `${name}.status`), "utf8")).not.toContain(WRONG);
    await p.close();
  });

  it("with the proxy stopped, a new bind and the running one state the reason: the proxy cannot be reached", async () => {
    await tinyproxy.stop();
    const name = "bind-proxy-down";
    const p = siteBind(name, {}, { HTTPS_PROXY: `http://scrape:${PASSWORD}@${gatewayHost}:${proxyPort}` });
    await p.waitFor(
      () => p.logLines().find((l) => l.msg === "identity not authenticated yet; retrying"),
      60_000,
      "authFailed",
    );
    const line = p.logLines().find((l) => l.msg === "identity not authenticated yet; retrying")!;
    expect(line.reason).toContain(`cannot reach egress proxy http://${gatewayHost}:${proxyPort} (from HTTPS_PROXY)`);
    expect(line.reason).toContain("ECONNREFUSED");
    expect(line.reason).toContain("check that the proxy runs");
    const st = await p.waitFor(
      () => (status(name).reason?.includes("cannot reach egress proxy") ? status(name) : undefined),
      30_000,
      "the status file's reason",
    );
    expect(st.authenticated).toBe(false);
    expect(p.logTail()).not.toContain(PASSWORD);
    await p.close();
    // The bind that was running: its channel went with the tunnel; its re-binds say why they fail.
    const rebinding = await bind.waitFor(
      () =>
        bind
          .logLines()
          .find((l) => l.msg === "service rebinding" && String(l.reason).includes("cannot reach egress proxy")),
      60_000,
      "the running bind's reason",
    );
    expect(rebinding.reason).toContain(`http://${gatewayHost}:${proxyPort} (from HTTPS_PROXY)`);
    const running = await bind.waitFor(
      () => {
        const st = JSON.parse(readFileSync(join(dir, "bind-site.status"), "utf8")) as {
          services: Record<string, { state: string; lastError?: string }>;
        };
        return st.services["node-site"]?.lastError?.includes("cannot reach egress proxy") ? st : undefined;
      },
      30_000,
      "the running bind's status",
    );
    expect(running.services["node-site"]?.state).toBe("rebinding");
    expect(bind.logTail()).not.toContain(PASSWORD);
  });
});
