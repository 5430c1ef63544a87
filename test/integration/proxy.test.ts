/**
 * An unmodified Prometheus discovering and scraping overlay services through `scrapez proxy`, with node_exporter
 * behind `scrapez bind`, all real processes on a real overlay. The Prometheus parts run against Debian's 2.42 and
 * against Prometheus 3 (test/harness/prometheus.ts); the proxy-only parts once.
 */
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import net from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NodeExporter } from "../harness/node-exporter.js";
import { Overlay } from "../harness/overlay.js";
import { freePort } from "../harness/ports.js";
import { tempDir } from "../harness/process.js";
import { PROMETHEUS_VERSIONS, Prometheus, prometheusVersionOf, type PrometheusVersion } from "../harness/prometheus.js";
import { makePki } from "../harness/pki.js";
import { ScrapezProcess } from "../harness/scrapez.js";

let overlay: Overlay;
let exporter: NodeExporter;
let app: http.Server;
let tlsApp: https.Server;
let bind: ScrapezProcess;
let proxy: ScrapezProcess;
let tlsProxy: ScrapezProcess;
let proxyPort: number;
let tlsProxyPort: number;
let deadPort: number;
const dir = tempDir("proxy-test");
const token = "s3cret-token-for-tests";
const tokenFile = join(dir, "token");
const pki = join(dir, "pki");

function viaProxy(
  port: number,
  target: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: "127.0.0.1", port, path: target, headers, timeout: 20_000 }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (body += d));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on("error", reject);
  });
}

async function proxyMetric(name: string): Promise<number> {
  const r = await viaProxy(proxyPort, "/metrics", { authorization: `Bearer ${token}` });
  return r.body
    .split("\n")
    .filter((l) => l.startsWith(name))
    .reduce((sum, l) => sum + Number(l.split(" ").pop()), 0);
}

beforeAll(async () => {
  makePki(pki);
  writeFileSync(tokenFile, `${token}\n`);
  overlay = await Overlay.start();
  exporter = await NodeExporter.start();
  app = http.createServer((req, res) => {
    // /bare: an exporter that sends no Content-Type (which Prometheus 3 no longer guesses).
    if (req.url !== "/bare") res.setHeader("content-type", "text/plain; version=0.0.4");
    res.end("# TYPE app_requests_total counter\napp_requests_total 42\n");
  });
  await new Promise<void>((r) => app.listen(0, "127.0.0.1", r));
  tlsApp = https.createServer({ cert: readPki("server.crt"), key: readPki("server.key") }, (_req, res) => {
    res.setHeader("content-type", "text/plain; version=0.0.4");
    res.end("# TYPE tls_app_up gauge\ntls_app_up 1\n");
  });
  await new Promise<void>((r) => tlsApp.listen(0, "127.0.0.1", r));
  deadPort = await freePort();
  for (const s of ["node", "app", "down", "tls-app"])
    await overlay.service(s, { dial: ["#clients"], bind: ["#servers"] });
  await overlay.service("hidden", { dial: ["#nobody"], bind: ["#servers"] });
  const bindId = await overlay.identity("bind-a", ["servers"]);
  const promId = await overlay.identity("prometheus-central", ["clients"]);
  bind = new ScrapezProcess("scrapez-bind", "bind", {
    identity: bindId,
    statusFile: join(dir, "bind-status.json"),
    targets: [
      { service: "node", upstream: exporter.url },
      {
        service: "app",
        upstream: `http://127.0.0.1:${(app.address() as net.AddressInfo).port}`,
        paths: ["/metrics", "/bare"],
        bindUsingEdgeIdentity: false,
      },
      { service: "down", upstream: `http://127.0.0.1:${deadPort}`, bindUsingEdgeIdentity: false },
      {
        service: "tls-app",
        upstream: `https://127.0.0.1:${(tlsApp.address() as net.AddressInfo).port}`,
        passthrough: true,
        bindUsingEdgeIdentity: false,
      },
    ],
  });
  bind.start();
  await bind.waitFor(
    () => bind.logLines().filter((l) => l.msg === "service bound").length >= 4,
    60_000,
    "all services bound",
  );
  proxyPort = await freePort();
  proxy = new ScrapezProcess("scrapez-proxy", "proxy", {
    identities: [promId],
    listen: `127.0.0.1:${proxyPort}`,
    auth: { bearerTokenFile: tokenFile },
  });
  proxy.start();
  await proxy.waitFor(() => proxy.logLines().some((l) => l.msg === "listening"), 30_000, "proxy listening");
  tlsProxyPort = await freePort();
  tlsProxy = new ScrapezProcess("scrapez-proxy-tls", "proxy", {
    identities: [promId],
    listen: `127.0.0.1:${tlsProxyPort}`,
    tls: { cert: join(pki, "server.crt"), key: join(pki, "server.key"), clientCA: join(pki, "ca.crt") },
  });
  tlsProxy.start();
  await tlsProxy.waitFor(() => tlsProxy.logLines().some((l) => l.msg === "listening"), 30_000, "TLS proxy listening");
}, 240_000);

/**
 * The same config for either version (proxy_url, http_sd_configs, static targets and TLS settings), plus for
 * Prometheus 3 a job with fallback_scrape_protocol (a field 2.42 rejects).
 */
function promConfig(version: PrometheusVersion): object {
  const auth = { type: "Bearer", credentials: token };
  const bare = (name: string, extra: object = {}) => ({
    job_name: name,
    metrics_path: "/bare",
    proxy_url: `http://127.0.0.1:${proxyPort}`,
    authorization: auth,
    static_configs: [{ targets: ["app"] }],
    ...extra,
  });
  return {
    global: { scrape_interval: "1s", scrape_timeout: "1s", evaluation_interval: "1s" },
    scrape_configs: [
      {
        job_name: "overlay",
        proxy_url: `http://127.0.0.1:${proxyPort}`,
        authorization: auth,
        http_sd_configs: [
          {
            url: `http://127.0.0.1:${proxyPort}/sd?service=node&service=app&service=down`,
            refresh_interval: "2s",
            authorization: auth,
          },
        ],
        relabel_configs: [
          { source_labels: ["__meta_ziti_service"], target_label: "service" },
          { source_labels: ["__meta_ziti_replica"], target_label: "replica" },
        ],
      },
      {
        job_name: "overlay-tls-proxy",
        proxy_url: `https://127.0.0.1:${tlsProxyPort}`,
        tls_config: {
          ca_file: join(pki, "ca.crt"),
          cert_file: join(pki, "client.crt"),
          key_file: join(pki, "client.key"),
        },
        static_configs: [{ targets: ["app"] }],
      },
      {
        job_name: "overlay-https",
        scheme: "https",
        // CONNECT carries only the proxy URL's userinfo: the password is the bearer token.
        proxy_url: `http://prometheus:${token}@127.0.0.1:${proxyPort}`,
        tls_config: { ca_file: join(pki, "ca.crt"), server_name: "localhost" },
        static_configs: [{ targets: ["tls-app"] }],
      },
      bare("overlay-bare"),
      ...(version === "3" ? [bare("overlay-bare-fallback", { fallback_scrape_protocol: "PrometheusText0.0.4" })] : []),
    ],
  };
}

function readPki(f: string): Buffer {
  return execFileSync("cat", [join(pki, f)]);
}

afterAll(async () => {
  await proxy?.close();
  await tlsProxy?.close();
  await bind?.close();
  app?.close();
  tlsApp?.close();
  await exporter?.close();
  await overlay?.close();
  execFileSync("rm", ["-rf", dir]);
});

describe.each(PROMETHEUS_VERSIONS)(
  "scrapez proxy with an unmodified Prometheus %s (http_sd_configs + proxy_url)",
  (version: PrometheusVersion) => {
    let prom: Prometheus;

    beforeAll(async () => {
      prom = await Prometheus.start(promConfig(version), { version });
      process.stdout.write(`[proxy.test] Prometheus ${prometheusVersionOf(version)}\n`);
    }, 120_000);

    afterAll(async () => {
      await prom?.close();
    });

    it("discovers the bound node_exporter and a second service by itself and scrapes them: up == 1", async () => {
      const up = await prom.waitForQuery('up{job="overlay"} == 1', 60_000, (r) => r.length >= 2);
      const services = up.map((s) => s.metric.service).sort();
      expect(services).toEqual(["app", "node"]);
      // node is bound by edge identity: discovered as its replica, addressable on its own.
      const node = up.find((s) => s.metric.service === "node")!;
      expect(node.metric.replica).toBe("bind-a");
      // /sd gives targets without a port: Prometheus 3 keeps them as they are, 2.x adds the scheme's port.
      expect(node.metric.instance).toBe(version === "3" ? "bind-a~node" : "bind-a~node:80");
      const cpu = await prom.waitForQuery(
        'node_cpu_seconds_total{job="overlay",service="node",replica="bind-a"}',
        30_000,
      );
      expect(cpu.length).toBeGreaterThan(0);
      const appMetric = await prom.waitForQuery('app_requests_total{service="app"}', 30_000);
      expect(appMetric[0]!.value[1]).toBe("42");
    });

    it("shows up == 0 with the bind side's message as lastError when the exporter is down", async () => {
      const targets = await prom.waitForTargets(
        (t) => t.some((x) => x.labels.service === "down" && x.health === "down"),
        60_000,
        "the down target",
      );
      const down = targets.find((x) => x.labels.service === "down")!;
      expect(down.lastError).toMatch(/502/);
      const direct = await viaProxy(proxyPort, "http://down/metrics", { authorization: `Bearer ${token}` });
      expect(direct.status).toBe(502);
      expect(direct.body).toMatch(
        /^scrapez bind: service "down": upstream http:\/\/127\.0\.0\.1:\d+ refused the connection/,
      );
    });

    it("a TLS listener with a client CA: Prometheus's tls_config works, a client without a certificate is refused", async () => {
      const up = await prom.waitForQuery('up{job="overlay-tls-proxy"} == 1', 60_000);
      expect(up).toHaveLength(1);
      const noCert = await new Promise<string>((resolve) => {
        https
          .get(
            { host: "127.0.0.1", port: tlsProxyPort, path: "/-/healthy", ca: readPki("ca.crt"), timeout: 10_000 },
            (res) => resolve(String(res.statusCode)),
          )
          .on("error", (e) => resolve(e.message));
      });
      expect(noCert).not.toBe("200");
    });

    it("passes the exporter's Content-Type through as it is, so a missing one is seen as Prometheus sees it", async () => {
      const r = await viaProxy(proxyPort, "http://app/bare", { authorization: `Bearer ${token}` });
      expect(r.status).toBe(200);
      const withType = await new Promise<http.IncomingHttpHeaders>((resolve, reject) =>
        http
          .get(
            {
              host: "127.0.0.1",
              port: proxyPort,
              path: "http://app/metrics",
              headers: { authorization: `Bearer ${token}` },
            },
            (res) => resolve(res.resume().headers),
          )
          .on("error", reject),
      );
      expect(withType["content-type"]).toBe("text/plain; version=0.0.4");
      if (version === "2") {
        // 2.x assumes the classic text format when there is no Content-Type.
        await prom.waitForQuery('up{job="overlay-bare"} == 1', 60_000);
        return;
      }
      // 3.x refuses to guess: the target is down with a message naming the Content-Type, until the job says
      // which format to assume (fallback_scrape_protocol).
      const targets = await prom.waitForTargets(
        (t) => t.some((x) => x.labels.job === "overlay-bare" && x.health === "down"),
        60_000,
        "the bare target down",
      );
      expect(targets.find((x) => x.labels.job === "overlay-bare")!.lastError).toMatch(/Content-Type/);
      await prom.waitForQuery('up{job="overlay-bare-fallback"} == 1', 60_000);
      const v = await prom.waitForQuery('app_requests_total{job="overlay-bare-fallback"}', 30_000);
      expect(v[0]!.value[1]).toBe("42");
    });

    it("a scheme: https target goes through CONNECT to a TLS exporter behind scrapez bind", async () => {
      const up = await prom.waitForQuery('up{job="overlay-https"} == 1', 60_000);
      expect(up).toHaveLength(1);
      const v = await prom.waitForQuery('tls_app_up{job="overlay-https"}', 30_000);
      expect(v[0]!.value[1]).toBe("1");
    });
  },
);

describe("scrapez proxy (no Prometheus needed)", () => {
  it("refuses a host that is not an overlay service and never connects to it", async () => {
    let touched = 0;
    const trap = net.createServer((s) => {
      touched++;
      s.destroy();
    });
    await new Promise<void>((r) => trap.listen(0, "127.0.0.1", r));
    const port = (trap.address() as net.AddressInfo).port;
    for (const target of [`http://127.0.0.1:${port}/metrics`, `http://localhost:${port}/`, "http://hidden/metrics"]) {
      const r = await viaProxy(proxyPort, target, { authorization: `Bearer ${token}` });
      expect(r.status).toBe(502);
      expect(r.body).toMatch(/is not dialable by identity "prometheus-central".*only overlay services are reachable/);
    }
    const connect = await new Promise<string>((resolve) => {
      const s = net.connect(proxyPort, "127.0.0.1", () =>
        s.write(
          `CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nProxy-Authorization: Bearer ${token}\r\n\r\n`,
        ),
      );
      let got = "";
      s.on("data", (d) => (got += d.toString()));
      s.on("close", () => resolve(got));
    });
    expect(connect).toMatch(/^HTTP\/1\.1 502/);
    trap.close();
    expect(touched).toBe(0);
  });

  it("requires the bearer token: 401 without it or with a wrong one, and /sd answers with it", async () => {
    const r = await viaProxy(proxyPort, "http://node/metrics");
    expect(r.status).toBe(401);
    expect((await viaProxy(proxyPort, "/sd")).status).toBe(401);
    expect((await viaProxy(proxyPort, "http://node/metrics", { authorization: "Bearer wrong" })).status).toBe(401);
    const sd = await viaProxy(proxyPort, "/sd?service=app", { authorization: `Bearer ${token}` });
    expect(JSON.parse(sd.body)).toEqual([
      {
        targets: ["app"],
        labels: expect.objectContaining({
          __meta_ziti_service: "app",
          __meta_ziti_identity: "prometheus-central",
          __meta_ziti_service_attributes: ",app,",
        }),
      },
    ]);
  });

  it("serves path mode: /scrape/<service>/<path>", async () => {
    const r = await viaProxy(proxyPort, "/scrape/app/metrics", { authorization: `Bearer ${token}` });
    expect(r).toEqual({ status: 200, body: "# TYPE app_requests_total counter\napp_requests_total 42\n" });
  });

  it("keep-alive: 100 sequential scrapes of one service use far fewer overlay dials", async () => {
    const before = await proxyMetric('scrapez_proxy_dials_total{service="app",result="ok"}');
    for (let i = 0; i < 100; i++) {
      const r = await viaProxy(proxyPort, "http://app/metrics", { authorization: `Bearer ${token}` });
      expect(r.status).toBe(200);
    }
    const after = await proxyMetric('scrapez_proxy_dials_total{service="app",result="ok"}');
    expect(after - before).toBeLessThanOrEqual(4);
  });
});
