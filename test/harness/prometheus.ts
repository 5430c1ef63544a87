/**
 * A real Prometheus (Debian's 2.42) with a given config, a temp storage dir and a loopback port, started with
 * --web.enable-lifecycle so reload() can apply a new config.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import YAML from "yaml";
import { prometheusBin } from "./binaries.js";
import { freePort } from "./ports.js";
import { ManagedProcess, tempDir } from "./process.js";

export interface TargetInfo {
  labels: Record<string, string>;
  discoveredLabels: Record<string, string>;
  scrapeUrl: string;
  health: "up" | "down" | "unknown";
  lastError: string;
  scrapePool: string;
}

/** One sample of an instant-query vector: labels and [unix seconds, value as text]. */
export interface Sample {
  metric: Record<string, string>;
  value: [number, string];
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
    try {
      p.writeConfig(config);
      p.proc.start();
      await p.proc.waitFor(() => p.#ready(), 60_000, "/-/ready");
    } catch (err) {
      await p.close();
      throw err;
    }
    return p;
  }

  /** Writes prometheus.yml (YAML text, or an object serialised to YAML); reload() applies it. */
  writeConfig(config: string | object): void {
    writeFileSync(join(this.dir, "prometheus.yml"), typeof config === "string" ? config : YAML.stringify(config));
  }

  async #ready(): Promise<boolean> {
    try {
      const r = await this.#get("/-/ready");
      await r.arrayBuffer();
      return r.ok;
    } catch {
      return false;
    }
  }

  async #get(path: string): Promise<Response> {
    return fetch(`${this.url}${path}`, { signal: AbortSignal.timeout(10_000) });
  }

  /** GET /api/v1/targets: the active targets. */
  async targets(): Promise<TargetInfo[]> {
    const res = await this.#get("/api/v1/targets?state=active");
    if (!res.ok) throw new Error(`GET /api/v1/targets: ${res.status} ${await res.text()}`);
    const r = (await res.json()) as { data: { activeTargets: TargetInfo[] } };
    return r.data.activeTargets;
  }

  /** GET /api/v1/query (instant query): the vector result. Throws with Prometheus's error for bad PromQL. */
  async query(promql: string): Promise<Sample[]> {
    const r = (await (await this.#get(`/api/v1/query?query=${encodeURIComponent(promql)}`)).json()) as {
      status: string;
      error?: string;
      data: { result: Sample[] };
    };
    if (r.status !== "success") throw new Error(`query ${promql}: ${r.error}`);
    return r.data.result;
  }

  /** Polls targets() until `pred` holds; throws with Prometheus's log tail on time-out. */
  async waitForTargets(
    pred: (t: TargetInfo[]) => boolean,
    timeoutMs: number,
    what = "the expected targets",
  ): Promise<TargetInfo[]> {
    return this.proc.waitFor(
      async () => {
        const t = await this.targets();
        return pred(t) ? t : undefined;
      },
      timeoutMs,
      `${what} (targets)`,
    );
  }

  /** Polls query(promql) until `pred` (default: non-empty) holds; returns that result. */
  async waitForQuery(
    promql: string,
    timeoutMs: number,
    pred: (r: Sample[]) => boolean = (r) => r.length > 0,
  ): Promise<Sample[]> {
    return this.proc.waitFor(
      async () => {
        const r = await this.query(promql);
        return pred(r) ? r : undefined;
      },
      timeoutMs,
      `query ${promql}`,
    );
  }

  /** POST /-/reload, after writing `config` when given. */
  async reload(config?: string | object): Promise<void> {
    if (config) this.writeConfig(config);
    const r = await fetch(`${this.url}/-/reload`, { method: "POST", signal: AbortSignal.timeout(30_000) });
    if (!r.ok) throw new Error(`reload failed: ${r.status} ${await r.text()}`);
  }

  async close(): Promise<void> {
    await this.proc.close();
  }
}
