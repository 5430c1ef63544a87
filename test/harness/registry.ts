/**
 * A real OCI registry on a loopback port: CNCF Distribution (the server of the `registry` image), built by
 * scripts/setup.sh from its Go module pinned in tools/registry (filesystem storage only) and linked as
 * .cache/registry. Its storage is a temp dir; it listens on 127.0.0.1:0 and the harness reads the port the kernel
 * gave it back from its log ("listening on 127.0.0.1:<port>"). Plain HTTP: Helm needs --plain-http for it, and the
 * Docker engine accepts plain HTTP registries on 127.0.0.0/8 without configuration.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { registryBin } from "./binaries.js";
import { ManagedProcess, tempDir } from "./process.js";

export { registryBin };

export class Registry {
  readonly proc: ManagedProcess;
  /** 127.0.0.1:<port>: what image and chart references start with. */
  host = "";
  /** http://127.0.0.1:<port> */
  url = "";
  /** Milliseconds from spawn to /v2/ answering 200. */
  startupMs = 0;

  private constructor(dir: string) {
    const data = join(dir, "data");
    mkdirSync(data);
    const config = join(dir, "config.yml");
    writeFileSync(
      config,
      [
        "version: 0.1",
        "log:",
        "  level: info",
        "  formatter: text",
        "  accesslog: { disabled: true }",
        "storage:",
        `  filesystem: { rootdirectory: ${JSON.stringify(data)} }`,
        "  delete: { enabled: true }",
        "http:",
        "  addr: 127.0.0.1:0",
        // One instance: a fixed secret only silences the warning about several instances behind a load balancer.
        "  secret: scrapez-test-registry",
        "",
      ].join("\n"),
    );
    this.proc = new ManagedProcess({ name: "registry", command: registryBin(), args: ["serve", config], ownDir: dir });
  }

  /** Starts it, reads its port back from its log and waits until GET /v2/ answers 200. */
  static async start(): Promise<Registry> {
    const r = new Registry(tempDir("registry"));
    const t0 = Date.now();
    try {
      r.proc.start();
      const port = await r.proc.waitFor(
        () => /listening on 127\.0\.0\.1:(\d+)/.exec(r.proc.logTail())?.[1],
        30_000,
        "its listening address in the log",
      );
      r.host = `127.0.0.1:${port}`;
      r.url = `http://${r.host}`;
      await r.proc.waitFor(
        async () => {
          const res = await fetch(`${r.url}/v2/`, { signal: AbortSignal.timeout(5_000) });
          await res.arrayBuffer();
          return res.ok;
        },
        30_000,
        "GET /v2/ answers 200",
      );
    } catch (err) {
      await r.close();
      throw err;
    }
    r.startupMs = Date.now() - t0;
    return r;
  }

  /** GET a registry API path (e.g. /v2/_catalog) as JSON, with an Accept header for manifests. */
  async json<T>(path: string, accept = "application/json"): Promise<T> {
    const res = await fetch(`${this.url}${path}`, { headers: { accept }, signal: AbortSignal.timeout(10_000) });
    if (!res.ok) throw new Error(`registry GET ${path}: ${res.status} ${await res.text()}`);
    return (await res.json()) as T;
  }

  async close(): Promise<void> {
    await this.proc.close();
  }
}
