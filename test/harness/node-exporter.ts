/** A real node_exporter (Debian's prometheus-node-exporter) on a loopback port chosen at run time. */
import { nodeExporterBin } from "./binaries.js";
import type { Netns } from "./netns.js";
import { freePort } from "./ports.js";
import { ManagedProcess } from "./process.js";

export class NodeExporter {
  readonly port: number;
  /** http://127.0.0.1:<port> (metrics at `${url}/metrics`). */
  readonly url: string;
  readonly proc: ManagedProcess;
  readonly #netns: Netns | undefined;

  private constructor(port: number, netns?: Netns) {
    this.port = port;
    this.#netns = netns;
    this.url = `http://127.0.0.1:${port}`;
    this.proc = new ManagedProcess({
      name: netns ? `node_exporter-${netns.site}` : "node_exporter",
      netns: netns?.name,
      command: nodeExporterBin(),
      args: [
        `--web.listen-address=127.0.0.1:${port}`,
        // A few cheap collectors: ~1 ms scrapes, stable metric families.
        "--collector.disable-defaults",
        "--collector.cpu",
        "--collector.meminfo",
        "--collector.loadavg",
        "--collector.time",
        "--collector.uname",
      ],
    });
  }

  /**
   * Starts node_exporter on a free loopback port (the loopback of `netns` when given) and waits until /metrics
   * answers 200.
   */
  static async start(opts: { netns?: Netns } = {}): Promise<NodeExporter> {
    const n = new NodeExporter(await freePort(), opts.netns);
    try {
      await n.start();
    } catch (err) {
      await n.close();
      throw err;
    }
    return n;
  }

  /** (Re)starts it on the same port (after stop()); resolves once /metrics answers 200. */
  async start(): Promise<void> {
    this.proc.start();
    await this.proc.waitFor(() => this.#ready(), 30_000, `GET ${this.url}/metrics answers 200`);
  }

  async #ready(): Promise<boolean> {
    try {
      const r = this.#netns
        ? await this.#netns.fetch(`${this.url}/metrics`, { timeoutMs: 5_000 })
        : await fetch(`${this.url}/metrics`, { signal: AbortSignal.timeout(5_000) });
      await r.arrayBuffer();
      return r.ok;
    } catch {
      return false;
    }
  }

  /** GET /metrics directly (not through any overlay). */
  async metrics(): Promise<string> {
    const r = await fetch(`${this.url}/metrics`, { signal: AbortSignal.timeout(10_000) });
    if (!r.ok) throw new Error(`node_exporter /metrics: ${r.status}`);
    return r.text();
  }

  /** Stops it; the port stays reserved for start() ("exporter down" tests). */
  async stop(): Promise<void> {
    await this.proc.stop();
  }

  async close(): Promise<void> {
    await this.proc.close();
  }
}

/** Metric family names in a text exposition (`# TYPE <name> ...` lines), sorted. */
export function metricNames(text: string): string[] {
  return [...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!).sort();
}
