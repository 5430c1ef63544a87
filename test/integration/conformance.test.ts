/**
 * Scrape-format conformance (issue 24 item 1): one real exporter (tools/format-exporter: client_golang's promhttp,
 * static metrics) scraped by a real Prometheus, 3.16 and 2.42, both directly and through scrapez proxy + scrapez
 * bind on a real overlay, job by job across the formats Prometheus negotiates: protobuf with native histograms,
 * OpenMetrics 1.0.0 with exemplars and created timestamps, text 0.0.4 and 1.0.0, UTF-8 names under each escaping
 * scheme, gzip on and off, honor_timestamps off, and scheme: https through CONNECT.
 *
 * For each case it shows:
 * - bytes: the exporter records every scrape (request headers; response status, headers and body as written). The
 *   direct and the overlay scrape of a case asked with the same Accept/Accept-Encoding/User-Agent/timeout headers
 *   and were answered with the same Content-Type, Content-Encoding and body bytes. Prometheus's exact request
 *   headers are then replayed through the overlay (absolute-form GET, or CONNECT + TLS) and directly: the answer
 *   that comes out of scrapez is byte for byte what the exporter wrote for that request and what it writes directly;
 * - TSDB: the same series and values (classic and native histograms included) and the same exemplars land for the
 *   direct and the overlay job (the query API, job and instance left out);
 * - honor_timestamps: the exporter's own timestamp is kept, or replaced by the scrape time when the job says so.
 * docs/proxy.md "Scrape formats" is the matrix of these cases and their results.
 */
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import { join } from "node:path";
import tls from "node:tls";
import { gunzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FormatExporter, type ScrapeRecord } from "../harness/format-exporter.js";
import { Overlay } from "../harness/overlay.js";
import { makePki } from "../harness/pki.js";
import { freePort } from "../harness/ports.js";
import { tempDir } from "../harness/process.js";
import { Prometheus, prometheusVersionOf, type PrometheusVersion, type Sample } from "../harness/prometheus.js";
import { ScrapezProcess } from "../harness/scrapez.js";

const dir = tempDir("conformance");
const pki = join(dir, "pki");
const token = "conformance-proxy-token";
const tokenFile = join(dir, "token");
let overlay: Overlay;
let exporter: FormatExporter;
let bind: ScrapezProcess;
let proxy: ScrapezProcess;
let proxyPort: number;

/** One scrape case: a direct and an overlay job that differ only in how they reach the exporter. */
interface Case {
  name: string;
  /** The exporter's path (which formats it offers: see tools/format-exporter/main.go). */
  path: string;
  https?: boolean;
  /** Scrape-config fields of this case (both jobs). */
  job: Record<string, unknown>;
  /** The Content-Type the exporter must answer with (what Prometheus negotiated). */
  contentType: RegExp;
  gzip: boolean;
  /** Exemplars must land in the TSDB (not only match between the two jobs). */
  exemplars: boolean;
  /** Native histogram samples must land. */
  nativeHistograms: boolean;
  /** A metric name that must land (shows the escaping scheme at work). */
  mustHave: string;
}

const PROTO = /^application\/vnd\.google\.protobuf; proto=io\.prometheus\.client\.MetricFamily; encoding=delimited/;
const OM1 = /^application\/openmetrics-text; version=1\.0\.0; charset=utf-8/;
const TEXT = /^text\/plain; version=0\.0\.4; charset=utf-8/;

function cases(version: PrometheusVersion): Case[] {
  const base = { gzip: true, exemplars: false, nativeHistograms: false, mustHave: "fe_requests_total" };
  if (version === "2") {
    // 2.42: --enable-feature=native-histograms makes every job ask protobuf first; the paths that offer fewer
    // formats give OpenMetrics and text (no scrape_protocols, enable_compression or UTF-8 names in 2.42).
    return [
      { ...base, name: "proto-native", path: "/metrics", job: {}, contentType: PROTO, nativeHistograms: true },
      { ...base, name: "openmetrics", path: "/metrics/om", job: {}, contentType: OM1, exemplars: true },
      { ...base, name: "text-0.0.4", path: "/metrics/text", job: {}, contentType: TEXT },
      { ...base, name: "uncompressed", path: "/metrics/identity", job: {}, contentType: PROTO, gzip: false },
      { ...base, name: "honor-ts-off", path: "/metrics/om", job: { honor_timestamps: false }, contentType: OM1 },
      {
        ...base,
        name: "https-proto",
        path: "/metrics",
        https: true,
        job: {},
        contentType: PROTO,
        nativeHistograms: true,
      },
      { ...base, name: "https-om", path: "/metrics/om", https: true, job: {}, contentType: OM1, exemplars: true },
    ];
  }
  const proto = { scrape_protocols: ["PrometheusProto"], scrape_native_histograms: true };
  const om = { scrape_protocols: ["OpenMetricsText1.0.0"] };
  const utf8 = (scheme: string, mustHave: string, contentType: RegExp): Case => ({
    ...base,
    name: `utf8-${scheme}`,
    path: "/metrics",
    job: { scrape_protocols: ["PrometheusText1.0.0"], metric_name_escaping_scheme: scheme },
    contentType,
    mustHave,
  });
  return [
    // Prometheus's own q-weighted Accept lists: its defaults, and proto first when native histograms are on.
    { ...base, name: "default", path: "/metrics", job: {}, contentType: OM1, exemplars: true },
    {
      ...base,
      name: "default-native",
      path: "/metrics",
      job: { scrape_native_histograms: true },
      contentType: PROTO,
      nativeHistograms: true,
    },
    { ...base, name: "proto-native", path: "/metrics", job: proto, contentType: PROTO, nativeHistograms: true },
    { ...base, name: "openmetrics", path: "/metrics", job: om, contentType: OM1, exemplars: true },
    {
      ...base,
      name: "text-0.0.4",
      path: "/metrics",
      job: { scrape_protocols: ["PrometheusText0.0.4"] },
      contentType: TEXT,
    },
    {
      ...base,
      name: "text-1.0.0",
      path: "/metrics",
      job: { scrape_protocols: ["PrometheusText1.0.0"] },
      contentType: /^text\/plain; version=(0\.0\.4|1\.0\.0); charset=utf-8/,
    },
    utf8("allow-utf-8", "fe.utf8.requests_total", /; escaping=allow-utf-8$/),
    utf8("underscores", "fe_utf8_requests_total", /; escaping=underscores$/),
    utf8("dots", "fe_dot_utf8_dot_requests__total", /; escaping=dots$/),
    utf8("values", "U__fe_2e_utf8_2e_requests__total", /; escaping=values$/),
    {
      ...base,
      name: "uncompressed",
      path: "/metrics",
      job: { ...om, enable_compression: false },
      contentType: OM1,
      gzip: false,
      exemplars: true,
    },
    {
      ...base,
      name: "honor-ts-off",
      path: "/metrics",
      job: { ...om, honor_timestamps: false },
      contentType: OM1,
      exemplars: true,
    },
    {
      ...base,
      name: "https-proto",
      path: "/metrics",
      https: true,
      job: proto,
      contentType: PROTO,
      nativeHistograms: true,
    },
    { ...base, name: "https-om", path: "/metrics", https: true, job: om, contentType: OM1, exemplars: true },
  ];
}

const jobName = (c: Case, via: "direct" | "overlay") => `${c.name}-${via}`;

function promConfig(version: PrometheusVersion): object {
  const tlsConfig = { ca_file: join(pki, "ca.crt"), server_name: "localhost" };
  const jobs = cases(version).flatMap((c) =>
    (["direct", "overlay"] as const).map((via) => {
      const j: Record<string, unknown> = {
        job_name: jobName(c, via),
        metrics_path: c.path,
        params: { case: [c.name], via: [via] },
        ...c.job,
      };
      if (c.https) {
        j.scheme = "https";
        j.tls_config = tlsConfig;
      }
      if (via === "direct") {
        j.static_configs = [{ targets: [`127.0.0.1:${c.https ? exporter.tlsPort : exporter.port}`] }];
      } else if (c.https) {
        // CONNECT carries only the proxy URL's userinfo: the password is the bearer token.
        j.proxy_url = `http://prometheus:${token}@127.0.0.1:${proxyPort}`;
        j.static_configs = [{ targets: ["fe-tls"] }];
      } else {
        j.proxy_url = `http://127.0.0.1:${proxyPort}`;
        j.authorization = { type: "Bearer", credentials: token };
        j.static_configs = [{ targets: ["fe"] }];
      }
      return j;
    }),
  );
  return { global: { scrape_interval: "1s", scrape_timeout: "1s", evaluation_interval: "1s" }, scrape_configs: jobs };
}

/** The request headers that decide an exporter's answer, as Prometheus sent them. */
const DECIDING = ["accept", "accept-encoding", "user-agent", "x-prometheus-scrape-timeout-seconds"];
const header = (h: Record<string, string[]>, name: string): string | undefined =>
  Object.entries(h)
    .find(([k]) => k.toLowerCase() === name)?.[1]
    ?.join(", ");
const deciding = (r: ScrapeRecord): Record<string, string | undefined> =>
  Object.fromEntries(DECIDING.map((n) => [n, header(r.requestHeaders, n)]));

interface RawAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

function collect(req: http.ClientRequest): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    req.on("response", (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (d: Buffer) => chunks.push(d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.setTimeout(20_000, () => req.destroy(new Error("timed out")));
    req.end();
  });
}

/** A GET with exactly these headers, its body as raw bytes (never decompressed). */
function rawGet(opts: {
  host: string;
  port: number;
  path: string;
  headers: Record<string, string>;
}): Promise<RawAnswer> {
  return collect(http.request({ ...opts, method: "GET", agent: false }));
}

/** A GET over TLS through the proxy's CONNECT tunnel to `authority`, raw bytes as above. */
async function rawGetThroughConnect(
  authority: string,
  path: string,
  headers: Record<string, string>,
): Promise<RawAnswer> {
  const socket = await new Promise<import("node:net").Socket>((resolve, reject) => {
    const req = http.request({
      host: "127.0.0.1",
      port: proxyPort,
      method: "CONNECT",
      path: authority,
      headers: { host: authority, "proxy-authorization": `Bearer ${token}` },
      agent: false,
    });
    req.on("connect", (res, s) =>
      res.statusCode === 200 ? resolve(s) : reject(new Error(`CONNECT ${authority}: ${res.statusCode}`)),
    );
    req.on("error", reject);
    req.end();
  });
  const tlsSocket = tls.connect({ socket, servername: "localhost", ca: readFileSync(join(pki, "ca.crt")) });
  await new Promise<void>((resolve, reject) => tlsSocket.once("secureConnect", resolve).once("error", reject));
  return collect(
    http.request({ host: authority.split(":")[0], path, method: "GET", headers, createConnection: () => tlsSocket }),
  );
}

/** A GET over TLS straight to the exporter's TLS port, raw bytes (the direct side of the https cases). */
async function rawTlsGet(path: string, headers: Record<string, string>): Promise<RawAnswer> {
  const tlsSocket = tls.connect({
    host: "127.0.0.1",
    port: exporter.tlsPort,
    servername: "localhost",
    ca: readFileSync(join(pki, "ca.crt")),
  });
  await new Promise<void>((resolve, reject) => tlsSocket.once("secureConnect", resolve).once("error", reject));
  return collect(http.request({ host: "127.0.0.1", path, method: "GET", headers, createConnection: () => tlsSocket }));
}

/** What a query answered, job and instance left out, sorted: comparable across the two jobs. */
function comparable(samples: Sample[]): string[] {
  return samples
    .map((s) => {
      const { job: _j, instance: _i, ...metric } = s.metric;
      const h = (s as Sample & { histogram?: [number, unknown] }).histogram;
      return JSON.stringify({ metric, value: h ? { histogram: h[1] } : s.value[1] });
    })
    .sort();
}

interface ExemplarSeries {
  seriesLabels: Record<string, string>;
  exemplars: { labels: Record<string, string>; value: string; timestamp: number }[];
}

async function exemplars(prom: Prometheus, job: string): Promise<string[]> {
  const end = Date.now() / 1000;
  const q = new URLSearchParams({ query: `{job="${job}"}`, start: String(end - 3600), end: String(end + 60) });
  const r = (await (await prom.get(`/api/v1/query_exemplars?${q}`)).json()) as {
    status: string;
    error?: string;
    data: ExemplarSeries[];
  };
  if (r.status !== "success") throw new Error(`query_exemplars ${job}: ${r.error}`);
  return r.data
    .flatMap((s) => {
      const { job: _j, instance: _i, ...series } = s.seriesLabels;
      return s.exemplars.map((e) =>
        JSON.stringify({ series, labels: e.labels, value: e.value, timestamp: e.timestamp }),
      );
    })
    .sort()
    .filter((x, i, a) => a.indexOf(x) === i);
}

/** The exporter's own timestamp on fe_timestamped_value (ms), read from its text exposition. */
async function exporterTimestamp(): Promise<number> {
  const r = await rawGet({ host: "127.0.0.1", port: exporter.port, path: "/metrics/text?via=probe", headers: {} });
  const m = /^fe_timestamped_value 42 (\d+)$/m.exec(r.body.toString("utf8"));
  if (!m) throw new Error(`no timestamped sample in the exporter's text exposition:\n${r.body.toString("utf8")}`);
  return Number(m[1]);
}

beforeAll(async () => {
  makePki(pki);
  writeFileSync(tokenFile, `${token}\n`);
  exporter = await FormatExporter.start({ cert: join(pki, "server.crt"), key: join(pki, "server.key") });
  overlay = await Overlay.start();
  await overlay.service("fe", { dial: ["#clients"], bind: ["#servers"] });
  await overlay.service("fe-tls", { dial: ["#clients"], bind: ["#servers"] });
  const bindId = await overlay.identity("fe-bind", ["servers"]);
  const promId = await overlay.identity("prometheus-conformance", ["clients"]);
  bind = new ScrapezProcess("scrapez-bind", "bind", {
    identity: bindId,
    statusFile: join(dir, "bind-status.json"),
    targets: [
      {
        service: "fe",
        upstream: exporter.url,
        paths: ["/metrics", "/metrics/om", "/metrics/text", "/metrics/identity"],
        bindUsingEdgeIdentity: false,
      },
      { service: "fe-tls", upstream: exporter.tlsUrl, passthrough: true, bindUsingEdgeIdentity: false },
    ],
  });
  bind.start();
  await bind.waitFor(
    () => bind.logLines().filter((l) => l.msg === "service bound").length >= 2,
    60_000,
    "both services bound",
  );
  proxyPort = await freePort();
  proxy = new ScrapezProcess("scrapez-proxy", "proxy", {
    identities: [promId],
    listen: `127.0.0.1:${proxyPort}`,
    auth: { bearerTokenFile: tokenFile },
  });
  proxy.start();
  await proxy.waitFor(() => proxy.logLines().some((l) => l.msg === "listening"), 30_000, "proxy listening");
}, 240_000);

afterAll(async () => {
  await proxy?.close();
  await bind?.close();
  await exporter?.close();
  await overlay?.close();
  execFileSync("rm", ["-rf", dir]);
});

describe.each(["3", "2"] as const)("scrape formats through scrapez with Prometheus %s", (version) => {
  let prom: Prometheus;
  const all = cases(version);

  beforeAll(async () => {
    prom = await Prometheus.start(promConfig(version), {
      version,
      // 2.42: native histograms (and so protobuf) are a feature flag; exemplars are stored only with one, in 3.16 too.
      args: [
        version === "2" ? "--enable-feature=native-histograms,exemplar-storage" : "--enable-feature=exemplar-storage",
      ],
    });
    process.stdout.write(`[conformance.test] Prometheus ${prometheusVersionOf(version)}: ${all.length} cases\n`);
  }, 120_000);

  afterAll(async () => {
    await prom?.close();
  });

  it("every job is up, directly and through scrapez", async () => {
    const up = await prom.waitForQuery("up == 1", 90_000, (r) => r.length === all.length * 2);
    expect(up.map((s) => s.metric.job).sort()).toEqual(
      all.flatMap((c) => [jobName(c, "direct"), jobName(c, "overlay")]).sort(),
    );
  });

  it.each(all.map((c) => [c.name, c] as const))(
    "%s: Prometheus's request and the exporter's answer (Content-Type, Content-Encoding, body bytes) are the same through scrapez as directly",
    async (_name, c) => {
      const [o] = await prom.proc.waitFor(
        async () => {
          const r = await exporter.records({ case: c.name, via: "overlay", last: 1 });
          return r.length ? r : undefined;
        },
        60_000,
        `an overlay scrape of ${c.name}`,
      );
      const [d] = await exporter.records({ case: c.name, via: "direct", last: 1 });
      expect(d, `a direct scrape of ${c.name}`).toBeDefined();
      // What Prometheus asked for arrived unchanged.
      expect(deciding(o!)).toEqual(deciding(d!));
      expect(header(o!.requestHeaders, "user-agent")).toMatch(/^Prometheus\//);
      expect(header(o!.requestHeaders, "accept-encoding")).toBe(c.gzip || version === "2" ? "gzip" : "identity");
      // And was answered alike: the negotiated format, the encoding, the bytes.
      for (const r of [o!, d!]) {
        expect(r.status).toBe(200);
        expect(header(r.responseHeaders, "content-type")).toMatch(c.contentType);
        expect(header(r.responseHeaders, "content-encoding")).toBe(c.gzip ? "gzip" : undefined);
      }
      expect(header(o!.responseHeaders, "content-type")).toBe(header(d!.responseHeaders, "content-type"));
      expect(o!.body.equals(d!.body)).toBe(true);

      // Prometheus's exact request headers replayed: through scrapez (absolute-form GET, or CONNECT + TLS) and directly.
      const headers = Object.fromEntries(
        DECIDING.map((n) => [n, header(o!.requestHeaders, n)]).filter((e): e is [string, string] => e[1] !== undefined),
      );
      const path = (via: string) => `${c.path}?case=${c.name}&via=${via}`;
      const through = c.https
        ? await rawGetThroughConnect("fe-tls:443", path("replay-overlay"), { ...headers, host: "fe-tls" })
        : await rawGet({
            host: "127.0.0.1",
            port: proxyPort,
            path: `http://fe${path("replay-overlay")}`,
            headers: { ...headers, authorization: `Bearer ${token}` },
          });
      const direct = c.https
        ? await rawTlsGet(path("replay-direct"), headers)
        : await rawGet({ host: "127.0.0.1", port: exporter.port, path: path("replay-direct"), headers });
      const [sent] = await exporter.records({ case: c.name, via: "replay-overlay", last: 1 });
      expect(deciding(sent!)).toEqual(deciding(o!));
      for (const r of [through, direct]) {
        expect(r.status).toBe(200);
        expect(r.headers["content-type"]).toBe(header(o!.responseHeaders, "content-type"));
        expect(r.headers["content-encoding"]).toBe(header(o!.responseHeaders, "content-encoding"));
      }
      // Every end-to-end header the exporter wrote (Vary included) comes out of scrapez as it was written.
      for (const [name, values] of Object.entries(sent!.responseHeaders)) {
        if (/^(date|content-length|transfer-encoding|connection|keep-alive)$/i.test(name)) continue;
        expect(through.headers[name.toLowerCase()], name).toBe(values.join(", "));
      }
      expect(through.body.equals(sent!.body), "what came out of scrapez is what the exporter wrote").toBe(true);
      expect(through.body.equals(direct.body), "through scrapez and directly: the same bytes").toBe(true);
      expect(through.body.equals(o!.body), "and the same bytes Prometheus's own scrape was sent").toBe(true);
      // The body carries what the case is about: OpenMetrics' exemplars and created timestamps, the escaped name.
      const text = (c.gzip ? gunzipSync(through.body) : through.body).toString("utf8");
      if (OM1.test(through.headers["content-type"] ?? "")) {
        expect(text).toMatch(/^fe_requests_total\{code="200"\} 7\.0 # \{trace_id="4bf92f3577b34da6"\} 7\.0 \d/m);
        expect(text).toMatch(/^fe_requests_created\{code="200"\} \d/m);
        expect(text.endsWith("# EOF\n")).toBe(true);
      }
      if (!PROTO.test(through.headers["content-type"] ?? "")) expect(text).toContain(c.mustHave);
      process.stdout.write(
        `[conformance.test] ${version} ${c.name}: Accept ${headers.accept}; Accept-Encoding ${headers["accept-encoding"]} -> ` +
          `${through.headers["content-type"]}, ${through.headers["content-encoding"] ?? "identity"}, ${through.body.length} bytes identical\n`,
      );
    },
  );

  it.each(all.map((c) => [c.name, c] as const))(
    "%s: the same series, values, histograms and exemplars land in the TSDB through scrapez as directly",
    async (_name, c) => {
      const q = (via: "direct" | "overlay") => `{job="${jobName(c, via)}",__name__!~"up|scrape_.+"}`;
      const [direct, over] = await prom.proc
        .waitFor(
          async () => {
            const a = comparable(await prom.query(q("direct")));
            const b = comparable(await prom.query(q("overlay")));
            return a.length > 0 && a.join("\n") === b.join("\n") ? [a, b] : undefined;
          },
          60_000,
          `the same series for ${jobName(c, "direct")} and ${jobName(c, "overlay")}`,
        )
        .catch(async (err: Error) => {
          const a = comparable(await prom.query(q("direct")));
          const b = comparable(await prom.query(q("overlay")));
          expect(b, `${err.message}`).toEqual(a);
          throw err;
        });
      expect(over).toEqual(direct);
      const names = direct!.map((s) => (JSON.parse(s) as { metric: Record<string, string> }).metric.__name__ ?? "");
      expect(names).toContain(c.mustHave);
      // OpenMetrics' created timestamps land as the `_created` series (created-timestamp-zero-ingestion is off).
      if (c.contentType === OM1) expect(names).toContain("fe_requests_created");
      if (c.nativeHistograms) {
        const h = direct!.map((s) => JSON.parse(s) as { value: { histogram?: { buckets?: unknown[] } } });
        expect(h.some((x) => typeof x.value === "object" && (x.value.histogram?.buckets?.length ?? 0) > 0)).toBe(true);
      }
      const [ed, eo] = await prom.proc.waitFor(
        async () => {
          const a = await exemplars(prom, jobName(c, "direct"));
          const b = await exemplars(prom, jobName(c, "overlay"));
          return (!c.exemplars || a.length > 0) && a.join("\n") === b.join("\n") ? [a, b] : undefined;
        },
        30_000,
        `the same exemplars for ${jobName(c, "direct")} and ${jobName(c, "overlay")}`,
      );
      expect(eo).toEqual(ed);
      const native = direct!.filter((x) => x.includes('"histogram"')).length;
      process.stdout.write(
        `[conformance.test] ${version} ${c.name}: ${direct!.length} series alike (${native} native histograms), ${ed!.length} exemplars alike; e.g. ${names.filter((n) => /utf8/.test(n)).join(" ")}\n`,
      );
    },
  );

  it("honor_timestamps: the exporter's own timestamp is kept through scrapez, and replaced by the scrape time when the job turns it off", async () => {
    const ts = (await exporterTimestamp()) / 1000;
    const at = async (job: string) =>
      Number((await prom.waitForQuery(`timestamp(fe_timestamped_value{job="${job}"})`, 30_000))[0]!.value[1]);
    for (const c of all.filter((x) => !("honor_timestamps" in x.job))) {
      expect(await at(jobName(c, "overlay"))).toBe(ts);
      expect(await at(jobName(c, "direct"))).toBe(ts);
    }
    const off = all.find((x) => x.name === "honor-ts-off")!;
    for (const via of ["direct", "overlay"] as const) expect(await at(jobName(off, via))).toBeGreaterThan(ts);
  });
});
