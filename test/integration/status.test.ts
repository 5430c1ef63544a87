/**
 * The status page on the real overlay (issue 14): three exporters behind a real `scrapez bind` (a healthy
 * node_exporter, one whose exporter is down, one slow exporter that answers after SLOW_MS, within the timeout),
 * discovered and scraped by an unmodified Prometheus through a real `scrapez proxy`. Then `/status.json` must show
 * the three rows with their states, the bind side's error text and the slow one's latency; `scrapez status` (the
 * real CLI process, piped) prints them and exits 1; and a real headless Chromium loads `/status`, runs its live
 * refresh, is queried over the DevTools protocol for the rows and takes a screenshot.
 *
 * Set SCRAPEZ_STATUS_SCREENSHOT=<file> to keep the screenshot, taken after 90 s more of scraping so the sparklines
 * have some history (docs/status.png is made that way).
 */
import { execFile } from "node:child_process";
import { copyFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import type net from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { StatusDocument, TargetRow } from "../../src/proxy/status/json.js";
import { Chromium, pngSize } from "../harness/chromium.js";
import { NodeExporter } from "../harness/node-exporter.js";
import { Overlay } from "../harness/overlay.js";
import { freePort, waitUntil } from "../harness/ports.js";
import { removeDir, tempDir } from "../harness/process.js";
import { Prometheus } from "../harness/prometheus.js";
import { ScrapezProcess, cliPath } from "../harness/scrapez.js";

const execFileP = promisify(execFile);
/** How long the slow exporter takes: far above a healthy scrape, well within the 4 s scrape timeout. */
const SLOW_MS = 1_500;
const dir = tempDir("status-test");
const token = "status-test-token";
const basicUser = "ops";
const basicPassword = "ops-password";
let overlay: Overlay;
let exporter: NodeExporter;
let slow: http.Server;
let bind: ScrapezProcess;
let proxy: ScrapezProcess;
let prom: Prometheus;
let proxyPort: number;
let deadPort: number;

async function getJson(path: string): Promise<StatusDocument> {
  const r = await fetch(`http://127.0.0.1:${proxyPort}${path}`, {
    headers: { authorization: `Bearer ${token}` },
    signal: AbortSignal.timeout(10_000),
  });
  expect(r.status).toBe(200);
  return (await r.json()) as StatusDocument;
}

beforeAll(async () => {
  writeFileSync(join(dir, "token"), `${token}\n`);
  writeFileSync(join(dir, "password"), `${basicPassword}\n`);
  overlay = await Overlay.start();
  exporter = await NodeExporter.start();
  slow = http.createServer((_req, res) => {
    const t = setTimeout(() => {
      res.setHeader("content-type", "text/plain; version=0.0.4");
      res.end("# TYPE slow_exporter_up gauge\nslow_exporter_up 1\n");
    }, SLOW_MS);
    res.once("close", () => clearTimeout(t));
  });
  await new Promise<void>((r) => slow.listen(0, "127.0.0.1", r));
  deadPort = await freePort();
  for (const s of ["node", "down", "slow"]) await overlay.service(s, { dial: ["#clients"], bind: ["#servers"] });
  const bindId = await overlay.identity("bind-a", ["servers"]);
  const promId = await overlay.identity("prometheus-central", ["clients"]);
  bind = new ScrapezProcess("scrapez-bind", "bind", {
    identity: bindId,
    statusFile: join(dir, "bind-status.json"),
    targets: [
      { service: "node", upstream: exporter.url },
      { service: "down", upstream: `http://127.0.0.1:${deadPort}`, bindUsingEdgeIdentity: false },
      {
        service: "slow",
        upstream: `http://127.0.0.1:${(slow.address() as net.AddressInfo).port}`,
        bindUsingEdgeIdentity: false,
      },
    ],
  });
  bind.start();
  await bind.waitFor(
    () => bind.logLines().filter((l) => l.msg === "service bound").length >= 3,
    60_000,
    "all services bound",
  );
  proxyPort = await freePort();
  proxy = new ScrapezProcess("scrapez-proxy", "proxy", {
    identities: [promId],
    listen: `127.0.0.1:${proxyPort}`,
    auth: {
      bearerTokenFile: join(dir, "token"),
      basic: { username: basicUser, passwordFile: join(dir, "password") },
    },
  });
  proxy.start();
  await proxy.waitFor(() => proxy.logLines().some((l) => l.msg === "listening"), 30_000, "proxy listening");
  const auth = { type: "Bearer", credentials: token };
  prom = await Prometheus.start({
    global: { scrape_interval: "4s", scrape_timeout: "4s", evaluation_interval: "4s" },
    scrape_configs: [
      {
        job_name: "overlay",
        proxy_url: `http://127.0.0.1:${proxyPort}`,
        authorization: auth,
        http_sd_configs: [{ url: `http://127.0.0.1:${proxyPort}/sd`, refresh_interval: "2s", authorization: auth }],
        relabel_configs: [
          { source_labels: ["__meta_ziti_service"], target_label: "service" },
          { source_labels: ["__meta_ziti_replica"], target_label: "replica" },
        ],
      },
    ],
  });
}, 240_000);

afterAll(async () => {
  await prom?.close();
  await proxy?.close();
  await bind?.close();
  slow?.close();
  await exporter?.close();
  await overlay?.close();
  removeDir(dir);
});

const row = (doc: StatusDocument, service: string): TargetRow => {
  const r = doc.targets.find((t) => t.service === service);
  if (!r) throw new Error(`no row for ${service} in ${JSON.stringify(doc.targets.map((t) => t.service))}`);
  return r;
};

describe("the status page on the real overlay, scraped by a real Prometheus", () => {
  it("/status.json: the healthy, the down and the slow target with their states, errors and latency", async () => {
    // Prometheus's own view first: all three scraped at least once (node and slow up, down down).
    await prom.waitForTargets(
      (t) =>
        t.length === 3 &&
        t.every((x) => x.health !== "unknown") &&
        t.find((x) => x.labels.service === "down")?.health === "down" &&
        t.filter((x) => x.health === "up").length === 2,
      90_000,
      "node and slow up, down down",
    );
    const doc = await waitUntil(
      async () => {
        const d = await getJson("/status.json");
        return d.targets.every((t) => t.state !== "never") ? d : undefined;
      },
      30_000,
      "every row scraped",
    );
    expect(doc.version).toBe(1);
    expect(doc.summary).toMatchObject({ targets: 3, ok: 2, failing: 1, never: 0 });
    // Failing sorts first.
    expect(doc.targets.map((t) => [t.state, t.service, t.replica])).toEqual([
      ["failing", "down", null],
      ["ok", "node", "bind-a"],
      ["ok", "slow", null],
    ]);
    const down = row(doc, "down");
    expect(down.lastStatus).toBe(502);
    expect(down.lastError).toMatch(
      new RegExp(
        `^scrapez bind: service "down": upstream http://127\\.0\\.0\\.1:${deadPort} refused the connection ` +
          "\\(is the exporter running\\?\\) \\(ECONNREFUSED\\)$",
      ),
    );
    expect(down.attributes).toEqual(["down"]);
    const node = row(doc, "node");
    expect(node).toMatchObject({
      host: "bind-a~node",
      lastStatus: 200,
      lastError: null,
      identity: "prometheus-central",
    });
    expect(node.scrapedBy).toMatchObject({ principal: "bearer", address: "127.0.0.1" });
    expect(node.scrapedBy!.userAgent).toMatch(/^Prometheus\//);
    expect(node.lastBytes).toBeGreaterThan(1000); // node_exporter's page (gzip-encoded as Prometheus asks)
    expect(node.window.scrapes).toBeGreaterThanOrEqual(1);
    expect(node.spark.ms.filter((v) => v !== null).length).toBeGreaterThanOrEqual(1);
    // The slow one is ok, and its latency shows why it is worth a look.
    const slowRow = row(doc, "slow");
    expect(slowRow.lastStatus).toBe(200);
    expect(slowRow.window.p50Ms!).toBeGreaterThanOrEqual(SLOW_MS);
    expect(slowRow.lastDurationMs!).toBeGreaterThanOrEqual(SLOW_MS);
    // The header: the proxy's identity, its controller, and the router it is connected to.
    expect(doc.proxy.identities).toHaveLength(1);
    const id = doc.proxy.identities[0]!;
    expect(id.name).toBe("prometheus-central");
    expect(id.controller).toContain(`127.0.0.1:${overlay.ctrlPort}`);
    expect(id.routers).toHaveLength(1);
    expect(id.routers[0]).toMatchObject({ url: `tls://127.0.0.1:${overlay.routerPorts[0]}`, state: "open" });
    expect(id.routers[0]!.routerId).not.toBe("");
    expect(id.routers[0]!.latencyMs).toBeGreaterThanOrEqual(0);
    expect(doc.proxy.serviceList).toMatchObject({ loaded: true, ready: true, error: null });
    expect(doc.proxy.serviceList.ageSeconds).toBeGreaterThanOrEqual(0);
    process.stdout.write(
      `[status.test] p50: node ${node.window.p50Ms} ms, slow ${slowRow.window.p50Ms} ms; router latency ` +
        `${id.routers[0]!.latencyMs} ms\n`,
    );
  });

  it("`scrapez status` (the real CLI, piped): a plain table of the three rows, exit 1 because one is failing", async () => {
    const tokenFile = join(dir, "token");
    const run = (args: string[]) =>
      execFileP(process.execPath, [cliPath, "status", "--proxy", `http://127.0.0.1:${proxyPort}`, ...args], {
        timeout: 30_000,
      }).then(
        (r) => ({ code: 0, ...r }),
        (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
      );
    const r = await run(["--token-file", tokenFile]);
    expect(r.code).toBe(1);
    expect(r.stdout).not.toContain("\x1b");
    const rows = r.stdout.split("\n").filter((l) => /^(failing|ok|never) /.test(l));
    expect(rows).toHaveLength(3);
    expect(rows[0]).toMatch(/^failing +down +- .* 502 .* refused the connection/);
    expect(rows.slice(1).map((l) => l.split(/\s+/).slice(0, 3).join(" "))).toEqual(["ok node bind-a", "ok slow -"]);
    expect(r.stdout).toMatch(/^identity prometheus-central {2}controller https:\/\/127\.0\.0\.1:\d+/);
    expect(r.stdout).toMatch(/routers: \S+ open/);
    expect((await run(["--token-file", tokenFile, "--filter", "slow"])).code).toBe(0);
    const noCreds = await run([]);
    expect(noCreds.code).toBe(3);
    expect(noCreds.stderr).toMatch(/refused our credentials \(HTTP 401\)/);
  });

  it("a real headless Chromium loads /status, refreshes it live, shows the three rows and takes a screenshot", async () => {
    const chrome = await Chromium.launch();
    try {
      const problems: string[] = [];
      chrome.on((m) => {
        if (m.method === "Runtime.exceptionThrown") problems.push(JSON.stringify(m.params));
        if (m.method === "Log.entryAdded") {
          const e = m.params.entry as { level: string; text: string };
          if (e.level === "error") problems.push(e.text);
        }
      });
      await chrome.send("Runtime.enable");
      await chrome.send("Log.enable");
      await chrome.send("Network.enable");
      await chrome.send("Page.enable");
      // A browser user authenticates with basic auth; the page's own fetches carry it too.
      const basic = Buffer.from(`${basicUser}:${basicPassword}`).toString("base64");
      await chrome.send("Network.setExtraHTTPHeaders", { headers: { Authorization: `Basic ${basic}` } });
      await chrome.send("Emulation.setDeviceMetricsOverride", {
        width: 1440,
        height: 560,
        deviceScaleFactor: 1,
        mobile: false,
      });
      const loaded = chrome.waitForEvent("Page.loadEventFired", 30_000);
      await chrome.send("Page.navigate", { url: `http://127.0.0.1:${proxyPort}/status` });
      await loaded;
      const first = await chrome.evaluate<{ generated: string; refreshes: string; live: string }>(
        `({ generated: document.getElementById("generated").dateTime, refreshes: document.body.dataset.refreshes,
            live: document.getElementById("live").textContent })`,
      );
      expect(first.refreshes).toBe("0");
      // The script ran (it replaces the no-JS hint) ...
      expect(first.live).toBe("live: refreshes every 5 s");
      // ... and refreshes the page by itself: the generation time changes with no reload.
      const after = await waitUntil(
        async () => {
          const v = await chrome.evaluate<{ generated: string; refreshes: number }>(
            `({ generated: document.getElementById("generated").dateTime,
                refreshes: Number(document.body.dataset.refreshes) })`,
          );
          return v.refreshes >= 1 && v.generated !== first.generated ? v : undefined;
        },
        30_000,
        "a live refresh of /status",
      );
      expect(Date.parse(after.generated)).toBeGreaterThan(Date.parse(first.generated));
      const rows = await chrome.evaluate<
        { state: string; service: string; replica: string; error: string; p50: string }[]
      >(
        `[...document.querySelectorAll("#rows tr.target")].map((tr) => ({
            state: tr.dataset.state,
            service: tr.querySelector("td.service").textContent,
            replica: tr.querySelector("td.replica").textContent,
            error: tr.querySelector("td.error").textContent,
            p50: tr.querySelector("td.p50").textContent,
            badge: tr.querySelector(".badge").textContent }))`,
      );
      expect(rows.map((r) => [r.state, r.service, r.replica])).toEqual([
        ["failing", "down", "–"],
        ["ok", "node", "bind-a"],
        ["ok", "slow", "–"],
      ]);
      expect(rows[0]!.error).toMatch(/^scrapez bind: service "down": upstream .* refused the connection/);
      expect(rows[2]!.p50).toMatch(/^\d\.\d\d s$/);
      const header = await chrome.evaluate<string>(`document.getElementById("proxy").textContent`);
      expect(header).toContain("prometheus-central");
      expect(header).toMatch(/open/);
      expect(header).toMatch(/service list refreshed \d+ (s|min) ago/);
      // Filtering in the page (no reload): typing "slow" leaves one visible row.
      const visible = await chrome.evaluate<number>(`(() => {
          const q = document.getElementById("q");
          q.value = "slow";
          q.dispatchEvent(new Event("input"));
          return [...document.querySelectorAll("#rows tr.target")].filter((tr) => !tr.hidden).length; })()`);
      expect(visible).toBe(1);
      await chrome.evaluate<void>(`(() => { const q = document.getElementById("q"); q.value = "";
          q.dispatchEvent(new Event("input")); })()`);
      await waitUntil(
        () =>
          chrome.evaluate<boolean>(
            `[...document.querySelectorAll("#rows tr.target")].filter((tr) => !tr.hidden).length === 3`,
          ),
        15_000,
        "the filter cleared",
      );
      if (process.env.SCRAPEZ_STATUS_SCREENSHOT) {
        // For the README: let Prometheus scrape a while longer so the sparklines have some history.
        await new Promise((r) => setTimeout(r, 90_000));
      }
      const shot = (await chrome.send("Page.captureScreenshot", { format: "png" })) as { data: string };
      const png = Buffer.from(shot.data, "base64");
      const file = join(dir, "status.png");
      writeFileSync(file, png);
      expect(pngSize(png)).toEqual({ width: 1440, height: 560 });
      expect(png.length).toBeGreaterThan(20_000); // a rendered page, not a blank one
      if (process.env.SCRAPEZ_STATUS_SCREENSHOT) copyFileSync(file, process.env.SCRAPEZ_STATUS_SCREENSHOT);
      expect(problems).toEqual([]);
    } finally {
      await chrome.close();
    }
  }, 240_000);
});
