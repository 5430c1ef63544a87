/**
 * exporter-toolkit's conventions on scrapez proxy's listener, with real binaries: a real Prometheus 3.16 scrapes a
 * real node_exporter bound on the real overlay by scrapez bind, through scrapez proxy configured by a web config
 * file (--web.config.file) in the toolkit's format:
 *  - bcrypt basic_auth_users: Prometheus's basic_auth passes; the password changed in the file is refused at the
 *    next scrape and the new one accepted, with no signal;
 *  - tls_server_config with RequireAndVerifyClientCert and client_allowed_sans: Prometheus's client certificate with
 *    an allowed SAN scrapes, one without is refused, and the list changed in the file applies to the next handshake;
 *  - POST /-/reload with --web.enable-lifecycle, as the Prometheus Operator's config-reloader sends it: a proxy
 *    config change takes effect and the answer says so; a bad config is answered 500 with why, the old one kept;
 *  - --log.format logfmt on both commands: every line a logfmt record.
 */
import { execFileSync } from "node:child_process";
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import bcrypt from "bcryptjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseLogfmt } from "../harness/logfmt.js";
import { NodeExporter } from "../harness/node-exporter.js";
import { Overlay } from "../harness/overlay.js";
import { issueLeaf, makePki } from "../harness/pki.js";
import { freePort, waitUntil } from "../harness/ports.js";
import { runCommand, tempDir } from "../harness/process.js";
import { Prometheus, prometheusVersionOf, type TargetInfo } from "../harness/prometheus.js";
import { ScrapezProcess } from "../harness/scrapez.js";

const dir = tempDir("web-config");
const SERVICE = "wc-node";
let overlay: Overlay;
let exporter: NodeExporter;
let promId: string;
let bind: ScrapezProcess;
let pki: Record<string, string>;
const procs: ScrapezProcess[] = [];
const proms: Prometheus[] = [];

/** Replaces a file by renaming a new one over it, as an editor or a Kubernetes Secret update does. */
function replace(path: string, text: string): void {
  writeFileSync(`${path}.new`, text, { mode: 0o600 });
  renameSync(`${path}.new`, path);
}

/** A client certificate from the test CA carrying `san` (e.g. DNS:prometheus.monitoring). */
function clientCert(name: string, san: string): { cert: string; key: string } {
  const leaf = issueLeaf(dir, name, "ca", { san });
  return { cert: leaf.crt, key: leaf.key };
}

/** Every stderr line of a process as logfmt records (throws on a line that is not logfmt). */
function logfmtLines(p: ScrapezProcess): Record<string, string>[] {
  return p
    .logTail()
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => parseLogfmt(l));
}

async function startProxy(
  name: string,
  args: string[],
  config: object = {},
): Promise<{ p: ScrapezProcess; port: number }> {
  const port = await freePort();
  const p = new ScrapezProcess(name, "proxy", { identities: [promId], ...config }, tempDir(name), {
    args: ["--web.listen-address", `127.0.0.1:${port}`, "--log.format", "logfmt", ...args],
  });
  procs.push(p);
  p.start();
  await p.waitFor(() => /msg=listening/.test(p.logTail()), 30_000, "listening");
  return { p, port };
}

const target = (ts: TargetInfo[], job: string) => ts.find((t) => t.labels.job === job);

beforeAll(async () => {
  pki = makePki(dir);
  overlay = await Overlay.start();
  exporter = await NodeExporter.start();
  await overlay.service(SERVICE, { dial: ["#clients"], bind: ["#servers"] });
  const bindId = await overlay.identity("wc-bind", ["servers"]);
  promId = await overlay.identity("wc-prom", ["clients"]);
  bind = new ScrapezProcess(
    "wc-bind",
    "bind",
    { identity: bindId, targets: [{ service: SERVICE, upstream: exporter.url }] },
    tempDir("wc-bind"),
    { args: ["--log.format", "logfmt"] },
  );
  procs.push(bind);
  bind.start();
  await bind.waitFor(() => /msg="service bound"/.test(bind.logTail()), 60_000, "service bound");
}, 180_000);

afterAll(async () => {
  await Promise.allSettled(proms.map((p) => p.close()));
  await Promise.allSettled(procs.map((p) => p.close()));
  await exporter?.close();
  await overlay?.close();
});

describe(`Prometheus ${prometheusVersionOf("3")} through a proxy with a web config`, () => {
  it("scrapes with bcrypt basic_auth_users; a password changed in the file applies at the next scrape", async () => {
    const web = join(dir, "web-basic.yml");
    const pwFile = join(dir, "prom-password");
    writeFileSync(pwFile, "first-secret", { mode: 0o600 });
    // Cost 10, what htpasswd -B and the toolkit's docs use.
    replace(web, `basic_auth_users:\n  prometheus: '${bcrypt.hashSync("first-secret", 10)}'\n`);
    const { p, port } = await startProxy("wc-proxy-basic", ["--web.config.file", web]);
    const prom = await Prometheus.start(
      {
        global: { scrape_interval: "1s", scrape_timeout: "1s" },
        scrape_configs: [
          {
            job_name: "node",
            proxy_url: `http://127.0.0.1:${port}`,
            basic_auth: { username: "prometheus", password_file: pwFile },
            static_configs: [{ targets: [SERVICE] }],
          },
        ],
      },
      { version: "3" },
    );
    proms.push(prom);
    await prom.waitForTargets((ts) => target(ts, "node")?.health === "up", 90_000, "node up through the proxy");
    const cpu = await prom.waitForQuery('count(node_cpu_seconds_total{job="node"})', 30_000);
    expect(Number(cpu[0]!.value[1])).toBeGreaterThan(0);

    // The web config gets a new password: the next scrape is refused (401) ...
    replace(web, `basic_auth_users:\n  prometheus: '${bcrypt.hashSync("second-secret", 10)}'\n`);
    const down = await prom.waitForTargets(
      (ts) => target(ts, "node")?.health === "down" && /401/.test(target(ts, "node")!.lastError),
      30_000,
      "node refused with 401 after the password changed",
    );
    expect(target(down, "node")!.lastError).toMatch(/401/);
    // ... and Prometheus's new password (its password_file is read per scrape) is accepted.
    writeFileSync(pwFile, "second-secret");
    await prom.waitForTargets((ts) => target(ts, "node")?.health === "up", 30_000, "node up with the new password");

    // Every line the proxy logged is logfmt; it said the web config was reloaded, without the hash.
    const lines = logfmtLines(p);
    expect(lines.find((l) => l.msg === "listening")).toMatchObject({ level: "info", component: "proxy" });
    const reloaded = lines.filter((l) => l.msg === "web config reloaded");
    expect(reloaded.length).toBeGreaterThanOrEqual(1);
    expect(reloaded[0]).toMatchObject({ users: "1", tls: "false" });
    expect(p.logTail()).not.toMatch(/\$2[aby]\$/);
  }, 240_000);

  it("mTLS with client_allowed_sans: an allowed SAN scrapes, another is refused; a new list applies to the next handshake", async () => {
    const allowed = clientCert("prom-allowed", "DNS:prometheus.monitoring");
    const other = clientCert("prom-other", "DNS:grafana.monitoring");
    const web = join(dir, "web-mtls.yml");
    const mtls = (sans: string) =>
      [
        "tls_server_config:",
        `  cert_file: ${pki["server.crt"]}`,
        `  key_file: ${pki["server.key"]}`,
        "  client_auth_type: RequireAndVerifyClientCert",
        `  client_ca_file: ${pki["ca.crt"]}`,
        `  client_allowed_sans: [${sans}]`,
        "http_server_config:",
        "  headers:",
        "    Strict-Transport-Security: max-age=31536000",
        "",
      ].join("\n");
    replace(web, mtls("prometheus.monitoring"));
    const { p, port } = await startProxy("wc-proxy-mtls", ["--web.config.file", web]);
    // Path mode over HTTPS: Prometheus scrapes https://<proxy>/scrape/<service>/metrics with its client certificate.
    const job = (name: string, cert: { cert: string; key: string }) => ({
      job_name: name,
      scheme: "https",
      metrics_path: `/scrape/${SERVICE}/metrics`,
      tls_config: { ca_file: pki["ca.crt"], cert_file: cert.cert, key_file: cert.key },
      static_configs: [{ targets: [`127.0.0.1:${port}`] }],
    });
    const prom = await Prometheus.start(
      {
        global: { scrape_interval: "1s", scrape_timeout: "1s" },
        scrape_configs: [job("allowed", allowed), job("other", other)],
      },
      { version: "3" },
    );
    proms.push(prom);
    const ts = await prom.waitForTargets(
      (t) => target(t, "allowed")?.health === "up" && target(t, "other")?.health === "down",
      90_000,
      "allowed up, other refused",
    );
    expect(target(ts, "other")!.lastError).not.toBe("");
    await prom.waitForQuery('node_load1{job="allowed"}', 30_000);
    expect(
      logfmtLines(p).some((l) => l.msg === "TLS client refused" && /grafana\.monitoring/.test(l.reason ?? "")),
    ).toBe(true);
    // The response headers of the web config reach the scraper: ask as Prometheus would.
    const curl = execFileSync(
      "curl",
      [
        "-sS",
        "-o",
        "/dev/null",
        "-D",
        "-",
        "--cacert",
        pki["ca.crt"]!,
        "--cert",
        allowed.cert,
        "--key",
        allowed.key,
        `https://127.0.0.1:${port}/scrape/${SERVICE}/metrics`,
      ],
      { encoding: "utf8" },
    );
    expect(curl).toMatch(/^strict-transport-security: max-age=31536000\r?$/im);

    // The list now names the other SAN: its next connection is accepted (the toolkit checks at each handshake).
    replace(web, mtls("grafana.monitoring"));
    await prom.waitForTargets((t) => target(t, "other")?.health === "up", 30_000, "other up after the list changed");
    // Prometheus stops, so that what the proxy logs from here on is about curl's connections only.
    await prom.close();
    const before = p.logTail();
    /** The proxy's log records since `before`. */
    const since = () => {
      const now = p.logTail();
      const mark = before.slice(-400);
      return now
        .slice(now.lastIndexOf(mark) + mark.length)
        .split("\n")
        .filter((l) => l.trim() !== "")
        .map((l) => parseLogfmt(l));
    };
    const curlWith = (cert: { cert: string; key: string }) =>
      runCommand("curl", [
        "-sS",
        "-v",
        "--max-time",
        "20",
        "--cacert",
        pki["ca.crt"]!,
        "--cert",
        cert.cert,
        "--key",
        cert.key,
        `https://127.0.0.1:${port}/-/healthy`,
      ]);
    // A new connection with the first certificate: the listener is there (not "connection refused", curl's 7) and
    // its certificate checks out for curl (not 60), the TLS handshake completes, and then the proxy closes the
    // connection without an answer (Node has no hook to fail the handshake itself): curl's 52 "Empty reply from
    // server", or 56 "Connection reset by peer" when its request had arrived already.
    const refused = await curlWith(allowed);
    expect([52, 56], refused.stderr).toContain(refused.code);
    expect(refused.stderr).toMatch(/SSL connection using TLSv1\.[23]/);
    expect(refused.stderr).toMatch(
      /curl: \((52|56)\) (Empty reply from server|Recv failure: Connection reset by peer)/,
    );
    expect(refused.stdout).toBe("");
    // The proxy says why, naming that certificate's SAN and the setting that refuses it.
    const why = await waitUntil(
      () => since().find((l) => l.msg === "TLS client refused"),
      10_000,
      "the proxy logs the refusal of curl's connection",
    );
    expect(why).toMatchObject({
      level: "warn",
      remote: "127.0.0.1",
      reason: "client certificate SANs (DNS:prometheus.monitoring) include none of client_allowed_sans",
    });
    // The second certificate on the same listener: accepted, answered.
    const accepted = await curlWith(other);
    expect(accepted.code, accepted.stderr).toBe(0);
    expect(accepted.stderr).toMatch(/< HTTP\/1\.1 200/);
    expect(accepted.stdout).not.toBe("");
    expect(since().filter((l) => l.msg === "TLS client refused")).toHaveLength(1);
  }, 240_000);

  it("POST /-/reload (--web.enable-lifecycle), as the Operator's config-reloader sends it: a change applies, a bad config is refused and the old kept", async () => {
    const web = join(dir, "web-reload.yml");
    replace(web, `basic_auth_users:\n  reloader: '${bcrypt.hashSync("r3load", 10)}'\n`);
    const auth = { authorization: `Basic ${Buffer.from("reloader:r3load").toString("base64")}` };
    const base = { identities: [promId], discovery: { include: ["wc-*"], refreshSeconds: 1 } };
    const { p, port } = await startProxy("wc-proxy-reload", ["--web.config.file", web, "--web.enable-lifecycle"], base);
    const sd = async () => {
      const r = await fetch(`http://127.0.0.1:${port}/sd`, { headers: auth });
      return ((await r.json()) as { targets: string[] }[]).flatMap((g) => g.targets);
    };
    await waitUntil(
      async () => (await sd().catch((): string[] => [])).some((t) => t.includes(SERVICE)),
      60_000,
      "/sd lists the service",
    );
    const reload = () => fetch(`http://127.0.0.1:${port}/-/reload`, { method: "POST", headers: auth });

    // Without credentials: the reload endpoint is behind the web config's users like everything else.
    expect((await fetch(`http://127.0.0.1:${port}/-/reload`, { method: "POST" })).status).toBe(401);
    expect((await fetch(`http://127.0.0.1:${port}/-/reload`, { headers: auth })).status).toBe(405);

    // The config is rewritten (as the Operator's reloader does with a mounted ConfigMap), then POST /-/reload.
    const cfg = p.configFile;
    replace(cfg, JSON.stringify({ ...base, discovery: { include: ["nothing-*"], refreshSeconds: 1 } }));
    const ok = await reload();
    expect([ok.status, await ok.text()]).toEqual([200, "config reloaded; changed: discovery\n"]);
    expect(await sd()).toEqual([]);

    // A bad config: 500 with the reason naming the field; the running config stays.
    replace(cfg, JSON.stringify({ ...base, timeouts: { dialSeconds: -1 } }));
    const bad = await reload();
    expect(bad.status).toBe(500);
    expect(await bad.text()).toMatch(/^failed to reload config: .*timeouts\.dialSeconds/);
    expect(await sd()).toEqual([]);
    const lines = logfmtLines(p);
    expect(lines.find((l) => l.msg === "config reloaded")).toMatchObject({ why: "/-/reload" });
    expect(lines.find((l) => l.msg === "new config rejected; keeping the running one")).toMatchObject({
      why: "/-/reload",
    });

    // A proxy without --web.enable-lifecycle refuses it as Prometheus does.
    const { port: plain } = await startProxy("wc-proxy-nolifecycle", []);
    const refused = await fetch(`http://127.0.0.1:${plain}/-/reload`, { method: "POST" });
    expect([refused.status, await refused.text()]).toEqual([
      403,
      expect.stringMatching(/^Lifecycle API is not enabled/),
    ]);
  }, 180_000);

  it("POST /-/reload with --workers 2 reloads every worker, not only the one the request reached", async () => {
    const base = { identities: [promId], discovery: { include: ["wc-*"], refreshSeconds: 1 } };
    const { p, port } = await startProxy("wc-proxy-workers", ["--workers", "2", "--web.enable-lifecycle"], base);
    await waitUntil(
      async () => (await fetch(`http://127.0.0.1:${port}/-/ready`).catch(() => undefined))?.status === 200,
      60_000,
      "ready",
    );
    replace(p.configFile, JSON.stringify({ ...base, discovery: { include: ["nothing-*"], refreshSeconds: 1 } }));
    // Until every worker listens the primary cannot reload them all: 503 with the reason, which a config-reloader
    // retries (as it does any failed reload).
    const post = () =>
      fetch(`http://127.0.0.1:${port}/-/reload`, { method: "POST" }).catch((e: Error) => {
        throw new Error(`${e.message}\n${p.logTail()}`);
      });
    const ok = await waitUntil(
      async () => {
        const r = await post();
        if (r.status !== 503) return r;
        expect(await r.text()).toMatch(/^failed to reload config: the proxy is still starting/);
        return undefined;
      },
      60_000,
      "a reload answered other than 503",
    );
    expect([ok.status, await ok.text()]).toEqual([200, expect.stringMatching(/^config reloaded/)]);
    const workers = await waitUntil(
      () => {
        const w = new Set(
          logfmtLines(p)
            .filter((l) => l.msg === "config reloaded" && l.worker)
            .map((l) => l.worker),
        );
        return w.size === 2 ? [...w].sort() : undefined;
      },
      30_000,
      "both workers reloaded",
    );
    expect(workers).toEqual(["1", "2"]);
    replace(p.configFile, JSON.stringify({ ...base, timeouts: { dialSeconds: -1 } }));
    const bad = await post();
    expect([bad.status, await bad.text()]).toEqual([
      500,
      expect.stringMatching(/^failed to reload config: .*timeouts\.dialSeconds/),
    ]);
  }, 180_000);

  it("scrapez bind logs logfmt too (--log.format logfmt)", () => {
    const lines = logfmtLines(bind);
    expect(lines.find((l) => l.msg === "service bound")).toMatchObject({ level: "info", component: "bind" });
    expect(readFileSync(bind.configFile, "utf8")).not.toMatch(/logFormat/); // from the flag, not the file
  });
});
