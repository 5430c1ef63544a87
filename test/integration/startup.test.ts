/**
 * Issue 9, item 14 on the real overlay: `scrapez bind` and `scrapez proxy` started while the controller is down
 * stay up (no crash loop), say why they are not ready (status file + `scrapez probe --ready`, `/-/ready`, 503 with
 * X-Scrapez-Proxy-Error: not-ready), retry with back-off, and serve as soon as the controller is back. Also item 4
 * on the built CLI: what escapes is one structured fatal line and exit 70.
 */
import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import http from "node:http";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NodeExporter } from "../harness/node-exporter.js";
import { Overlay } from "../harness/overlay.js";
import { freePort } from "../harness/ports.js";
import { tempDir } from "../harness/process.js";
import { ScrapezProcess, cliPath } from "../harness/scrapez.js";

const execFileP = promisify(execFile);
const dir = tempDir("startup-test");
let overlay: Overlay;
let exporter: NodeExporter;
let bind: ScrapezProcess | undefined;
let proxy: ScrapezProcess | undefined;
let bindId: string;
let promIds: string[];

function get(port: number, target: string): Promise<{ status: number; text: string; error?: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: "127.0.0.1", port, path: target, timeout: 20_000 }, (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (text += d));
        res.on("end", () =>
          resolve({
            status: res.statusCode ?? 0,
            text,
            ...(res.headers["x-scrapez-proxy-error"] ? { error: String(res.headers["x-scrapez-proxy-error"]) } : {}),
          }),
        );
      })
      .on("error", reject);
  });
}

/** Runs the built CLI; resolves to its exit code and output (never rejects on a non-zero exit). */
async function cli(args: string[], nodeArgs: string[] = []): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await execFileP(process.execPath, [...nodeArgs, cliPath, ...args], { timeout: 30_000 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as Error & { code?: number; stdout?: string; stderr?: string };
    if (typeof e.code !== "number") throw err;
    return { code: e.code, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

function figure(text: string): void {
  process.stdout.write(`[startup figures] ${text}\n`);
}

beforeAll(async () => {
  overlay = await Overlay.start();
  exporter = await NodeExporter.start();
  await overlay.service("node", { dial: ["#clients"], bind: ["#servers"] });
  bindId = await overlay.identity("bind-startup", ["servers"], dir);
  promIds = [
    await overlay.identity("prom-startup-1", ["clients"], dir),
    await overlay.identity("prom-startup-2", ["clients"], dir),
  ];
});

afterAll(async () => {
  await bind?.close();
  await proxy?.close();
  await exporter?.close();
  await overlay?.close();
});

describe("starting while the controller is down", () => {
  it("bind and proxy stay up, say why, back off, and serve within seconds once the controller is back", async () => {
    await overlay.stopController();
    const statusFile = join(dir, "bind-status.json");
    bind = new ScrapezProcess("scrapez-bind-startup", "bind", {
      identity: bindId,
      statusFile,
      targets: [{ service: "node", upstream: exporter.url }],
    });
    const proxyPort = await freePort();
    proxy = new ScrapezProcess("scrapez-proxy-startup", "proxy", {
      identities: promIds,
      listen: `127.0.0.1:${proxyPort}`,
    });
    bind.start();
    proxy.start();
    const b = bind;
    const p = proxy;
    await p.waitFor(() => p.logLines().some((l) => l.msg === "listening"), 30_000, "proxy listening");
    const retries = (proc: ScrapezProcess) => proc.logLines().filter((l) => /retrying/.test(String(l.msg)));
    // Both keep running through several failed attempts (bind: 1 identity; proxy: 2, each on its own).
    await b.waitFor(() => retries(b).length >= 4, 60_000, "bind retried 4 times");
    await p.waitFor(() => retries(p).length >= 8, 60_000, "proxy retried 4 times per identity");
    expect(b.running && p.running).toBe(true);

    // Back-off, from what each process logged: attempt n waits 0.5 s * 2^(n-1), ±25 %.
    for (const line of [...retries(b), ...retries(p)]) {
      const n = line.attempts as number;
      const base = Math.min(500 * 2 ** (n - 1), 30_000);
      expect(line.retryInMs).toBeGreaterThanOrEqual(Math.floor(base * 0.75));
      expect(line.retryInMs).toBeLessThanOrEqual(Math.ceil(base * 1.25));
      expect(line.reason).toMatch(/cannot authenticate to the controller \(attempt \d+, next in [\d.]+ s\)/);
      expect(line.reason).toMatch(/cannot reach the controller at https:\/\/127\.0\.0\.1:\d+: connect ECONNREFUSED/);
    }
    figure(
      `bind retry delays (ms): ${retries(b)
        .map((l) => l.retryInMs)
        .join(", ")}`,
    );

    // bind: live, not ready, and why.
    expect((await cli(["probe", "--live", "--status-file", statusFile])).code).toBe(0);
    const notReady = await cli(["probe", "--ready", "--status-file", statusFile]);
    expect(notReady.code).toBe(1);
    expect(notReady.stderr).toMatch(
      /^not authenticated to the controller yet: cannot authenticate to the controller \(attempt \d+, next in .*ECONNREFUSED/,
    );

    // proxy: /-/ready, /sd and scrapes answer 503 with the reason.
    const ready = await get(proxyPort, "/-/ready");
    expect(ready.status).toBe(503);
    expect(ready.text).toMatch(/^scrapez proxy is not ready: no identity is authenticated to the controller yet: /);
    expect(ready.text).toMatch(/cannot reach the controller .* ECONNREFUSED/);
    expect(ready.text.match(/ not ready \(/g)).toHaveLength(2); // both identities listed with their state
    for (const target of ["/sd", "http://node/metrics", "/scrape/node/metrics"]) {
      const r = await get(proxyPort, target);
      expect(r.status, target).toBe(503);
      expect(r.error, target).toBe("not-ready");
      expect(r.text, target).toMatch(/no identity is authenticated to the controller yet: .*ECONNREFUSED/);
    }

    // The controller comes back: both become ready and a scrape through proxy + bind answers.
    const t0 = Date.now();
    await overlay.startController();
    const back = Date.now();
    figure(`controller restart took ${back - t0} ms`);
    await p.waitFor(async () => (await get(proxyPort, "/-/ready")).status === 200, 60_000, "proxy ready");
    const proxyReady = Date.now() - back;
    await b.waitFor(
      async () => (await cli(["probe", "--ready", "--status-file", statusFile])).code === 0,
      60_000,
      "bind ready",
    );
    const bindReady = Date.now() - back;
    let scrape = { status: 0, text: "" };
    await p.waitFor(
      async () => (scrape = await get(proxyPort, "http://node/metrics")).status === 200,
      60_000,
      "a scrape through proxy and bind",
    );
    const firstScrape = Date.now() - back;
    const at = (msg: string) => Date.parse(String(b.logLines().find((l) => l.msg === msg)?.time)) - back;
    figure(
      `bind: authenticated ${at("authenticated")} ms, service bound ${at("service bound")} ms after the controller`,
    );
    expect(scrape.text).toMatch(/^node_exporter_build_info\{/m);
    figure(
      `after the controller answered: proxy ready ${proxyReady} ms, bind ready ${bindReady} ms, first 200 ${firstScrape} ms`,
    );
    // Bounded by one back-off step (the largest delay logged so far, +25 %) plus the overlay's own start-up.
    expect(proxyReady).toBeLessThan(30_000);
    // Each identity retries on its own schedule: the second may still be inside one back-off step (at most
    // 30 s + 25 %) when the first has already made the proxy ready. Wait for both, bounded by that step.
    let readyText = "";
    await p.waitFor(
      async () =>
        /"prom-startup-\d" ready, "prom-startup-\d" ready/.test((readyText = (await get(proxyPort, "/-/ready")).text)),
      40_000,
      "both proxy identities authenticated",
    );
    expect(readyText).toMatch(
      /^scrapez proxy is ready; identities: "prom-startup-\d" ready, "prom-startup-\d" ready\n$/,
    );
    const ok = await cli(["probe", "--ready", "--status-file", statusFile]);
    expect(ok.stdout).toBe("ready: 1 service(s) bound\n");
    expect(b.running && p.running).toBe(true);
    expect(b.logLines().some((l) => l.level === "fatal")).toBe(false);
  });

  it("an identity file that is not valid is still an error at once (exit 1, no retrying)", async () => {
    const bad = join(dir, "not-an-identity.json");
    writeFileSync(bad, JSON.stringify({ ztAPI: overlay.ctrlUrl, id: { cert: "pem:nope" } }), { mode: 0o600 });
    const cfg = join(dir, "bad-bind.yaml");
    writeFileSync(cfg, `identity: ${bad}\ntargets:\n  - service: node\n    upstream: ${exporter.url}\n`);
    const r = await cli(["bind", "--config", cfg]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/"msg":"cannot start: the identity file is invalid"/);
    expect(r.stderr).toMatch(/ZITI_IDENTITY_INVALID/);
  });
});

describe("what escapes (item 4): the built CLI", () => {
  // The throw is injected with --import from the test, so the product has no crash hook.
  const inject = (code: string) => ["--import", `data:text/javascript,${encodeURIComponent(code)}`];
  const statusFile = join(dir, "none.json");

  it("an uncaught exception: one structured fatal line with context, exit 70", async () => {
    const r = await cli(
      ["probe", "--live", "--status-file", statusFile],
      inject(
        'setInterval(() => {}, 1000); setTimeout(() => { throw Object.assign(new Error("boom from a timer"), { code: "E_INJECTED" }); }, 300);',
      ),
    );
    expect(r.code).toBe(70);
    const fatal = r.stderr.split("\n").filter((l) => l.includes('"level":"fatal"'));
    expect(fatal).toHaveLength(1);
    expect(JSON.parse(fatal[0]!)).toMatchObject({
      component: "probe",
      origin: "uncaughtException",
      code: "E_INJECTED",
      reason: "boom from a timer",
      exitCode: 70,
      stack: expect.stringMatching(/boom from a timer\n\s+at /),
    });
  });

  it("an unhandled rejection: the same, exit 70", async () => {
    const r = await cli(
      ["probe", "--live", "--status-file", statusFile],
      inject(
        'setInterval(() => {}, 1000); setTimeout(() => { Promise.reject(new TypeError("nobody caught me")); }, 300);',
      ),
    );
    expect(r.code).toBe(70);
    const rec = JSON.parse(r.stderr.split("\n").find((l) => l.includes('"level":"fatal"'))!) as Record<string, unknown>;
    expect(rec).toMatchObject({ component: "probe", origin: "unhandledRejection", error: "TypeError" });
    expect(rec.reason).toBe("nobody caught me");
  });
});
