/** A real Prometheus (Debian's 2.42) with a given config, a temp storage dir and a loopback port. */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import YAML from "yaml";
import { prometheusBin } from "./binaries.js";
import { freePort, waitUntil } from "./ports.js";
import { ManagedProcess, tempDir } from "./process.js";

export interface TargetInfo {
  labels: Record<string, string>;
  discoveredLabels: Record<string, string>;
  scrapeUrl: string;
  health: "up" | "down" | "unknown";
  lastError: string;
  scrapePool: string;
}

export class Prometheus {
  readonly port: number;
  readonly url: string;
  readonly dir: string;
  readonly proc: ManagedProcess;

  private constructor(port: number, dir: string) {
    this.port = port;
    this.dir = dir;
    this.url = `http://127.0.0.1:${port}`;
    this.proc = new ManagedProcess({
      name: "prometheus",
      command: prometheusBin(),
      args: [
        `--config.file=${join(dir, "prometheus.yml")}`,
        `--storage.tsdb.path=${join(dir, "data")}`,
        `--web.listen-address=127.0.0.1:${port}`,
        "--web.enable-lifecycle",
      ],
      ownDir: dir,
    });
  }

  /** Starts Prometheus with `config` (YAML text or an object). */
  static async start(config: string | object, opts: { port?: number } = {}): Promise<Prometheus> {
    const p = new Prometheus(opts.port ?? (await freePort()), tempDir("prometheus"));
    p.writeConfig(config);
    p.proc.start();
    await p.proc.waitFor(() => p.#ready(), 60_000, "/-/ready");
    return p;
  }

  writeConfig(config: string | object): void {
    writeFileSync(join(this.dir, "prometheus.yml"), typeof config === "string" ? config : YAML.stringify(config));
  }

  async #ready(): Promise<boolean> {
    try {
      return (await fetch(`${this.url}/-/ready`)).ok;
    } catch {
      return false;
    }
  }

  async targets(): Promise<TargetInfo[]> {
    const r = (await (await fetch(`${this.url}/api/v1/targets?state=active`)).json()) as {
      data: { activeTargets: TargetInfo[] };
    };
    return r.data.activeTargets;
  }

  async query(promql: string): Promise<{ metric: Record<string, string>; value: [number, string] }[]> {
    const r = (await (await fetch(`${this.url}/api/v1/query?query=${encodeURIComponent(promql)}`)).json()) as {
      status: string;
      error?: string;
      data: { result: { metric: Record<string, string>; value: [number, string] }[] };
    };
    if (r.status !== "success") throw new Error(`query ${promql}: ${r.error}`);
    return r.data.result;
  }

  async waitForTargets(pred: (t: TargetInfo[]) => boolean, timeoutMs: number, what: string): Promise<TargetInfo[]> {
    return this.proc.waitFor(
      async () => {
        const t = await this.targets();
        return pred(t) ? t : undefined;
      },
      timeoutMs,
      `${what} (targets)`,
    );
  }

  async waitForQuery(promql: string, timeoutMs: number, pred = (r: unknown[]) => r.length > 0) {
    return waitUntil(
      async () => {
        const r = await this.query(promql);
        return pred(r) ? r : undefined;
      },
      timeoutMs,
      `query ${promql}`,
      () => this.proc.logTail(4096),
    );
  }

  async reload(config?: string | object): Promise<void> {
    if (config) this.writeConfig(config);
    const r = await fetch(`${this.url}/-/reload`, { method: "POST" });
    if (!r.ok) throw new Error(`reload failed: ${r.status} ${await r.text()}`);
  }

  async close(): Promise<void> {
    await this.proc.close();
  }
}
