/**
 * The conformance test's exporter (tools/format-exporter, built by scripts/setup.sh and linked as
 * .cache/format-exporter): client_golang's promhttp serving static metrics in whatever format the request
 * negotiates, on a plain and a TLS loopback port (127.0.0.1:0; the harness reads the ports back from its log), and
 * recording every scrape: the request's headers and the response's status, headers and body exactly as written
 * (GET /-/records).
 */
import { formatExporterBin } from "./binaries.js";
import { ManagedProcess, tempDir } from "./process.js";

export { formatExporterBin };

/** One scrape as the exporter saw and answered it. */
export interface ScrapeRecord {
  seq: number;
  tls: boolean;
  /** Path and query, e.g. /metrics?case=proto&via=overlay. */
  url: string;
  /** The scrape's `case` and `via` query parameters. */
  case: string;
  via: string;
  requestHeaders: Record<string, string[]>;
  status: number;
  responseHeaders: Record<string, string[]>;
  /** The body bytes as written onto the connection (gzip-compressed when Content-Encoding says so). */
  body: Buffer;
}

export class FormatExporter {
  readonly proc: ManagedProcess;
  /** http://127.0.0.1:<port> */
  url = "";
  /** https://127.0.0.1:<port> (the same handlers over TLS). */
  tlsUrl = "";
  port = 0;
  tlsPort = 0;

  private constructor(dir: string, tls: { cert: string; key: string }) {
    this.proc = new ManagedProcess({
      name: "format-exporter",
      command: formatExporterBin(),
      args: ["--listen=127.0.0.1:0", "--tls-listen=127.0.0.1:0", `--tls-cert=${tls.cert}`, `--tls-key=${tls.key}`],
      ownDir: dir,
    });
  }

  /**
   * Starts it with a TLS listener on `tls` (PEM files, e.g. test/harness/pki.ts's server.crt/key), reads both
   * ports back from its log and waits until /-/ready answers 200.
   */
  static async start(tls: { cert: string; key: string }): Promise<FormatExporter> {
    const e = new FormatExporter(tempDir("format-exporter"), tls);
    try {
      e.proc.start();
      const port = (kind: string) =>
        e.proc.waitFor(
          () => new RegExp(`listening ${kind} 127\\.0\\.0\\.1:(\\d+)`).exec(e.proc.logTail())?.[1],
          30_000,
          `its ${kind} address in the log`,
        );
      e.port = Number(await port("http"));
      e.tlsPort = Number(await port("https"));
      e.url = `http://127.0.0.1:${e.port}`;
      e.tlsUrl = `https://127.0.0.1:${e.tlsPort}`;
      await e.proc.waitFor(
        async () => {
          const r = await fetch(`${e.url}/-/ready`, { signal: AbortSignal.timeout(5_000) });
          await r.arrayBuffer();
          return r.ok;
        },
        30_000,
        "GET /-/ready answers 200",
      );
    } catch (err) {
      await e.close();
      throw err;
    }
    return e;
  }

  /** The newest recorded scrapes first, filtered by the scrapes' `case`/`via` query parameters; at most `last`. */
  async records(filter: { case?: string; via?: string; last?: number } = {}): Promise<ScrapeRecord[]> {
    const q = new URLSearchParams();
    if (filter.case) q.set("case", filter.case);
    if (filter.via) q.set("via", filter.via);
    if (filter.last) q.set("last", String(filter.last));
    const r = await fetch(`${this.url}/-/records?${q}`, { signal: AbortSignal.timeout(10_000) });
    if (!r.ok) throw new Error(`format-exporter /-/records: ${r.status} ${await r.text()}`);
    const raw = (await r.json()) as (Omit<ScrapeRecord, "body"> & { body: string })[];
    return raw.map((x) => ({ ...x, body: Buffer.from(x.body, "base64") }));
  }

  async close(): Promise<void> {
    await this.proc.close();
  }
}
