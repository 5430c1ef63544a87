/** A real node_exporter (Debian's prometheus-node-exporter) on a loopback port. */
import { nodeExporterBin } from "./binaries.js";
import { canConnect, freePort } from "./ports.js";
import { ManagedProcess } from "./process.js";

export class NodeExporter {
  readonly port: number;
  readonly url: string;
  readonly proc: ManagedProcess;

  private constructor(port: number) {
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.proc = new ManagedProcess({
      name: "node_exporter",
      command: nodeExporterBin(),
      args: [
        `--web.listen-address=127.0.0.1:${port}`,
        "--collector.disable-defaults",
        "--collector.cpu",
        "--collector.meminfo",
        "--collector.loadavg",
        "--collector.time",
        "--collector.uname",
      ],
    });
  }

  static async start(): Promise<NodeExporter> {
    const n = new NodeExporter(await freePort());
    await n.start();
    return n;
  }

  async start(): Promise<void> {
    this.proc.start();
    await this.proc.waitFor(() => canConnect(this.port), 30_000, "/metrics port open");
  }

  async stop(): Promise<void> {
    await this.proc.stop();
  }

  async close(): Promise<void> {
    await this.proc.close();
  }
}

/** Metric family names in a text exposition (`# TYPE <name> ...` lines). */
export function metricNames(text: string): string[] {
  return [...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!).sort();
}
