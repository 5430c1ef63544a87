/**
 * `scrapez probe --ready|--live`: Kubernetes exec probes for `scrapez bind`, with no port to probe, and for a
 * `scrapez proxy` that listens only on the pod's loopback (where the kubelet's httpGet probes cannot reach it).
 */
import http from "node:http";
import { parseArgs } from "node:util";
import { defaultStatusFile, probe } from "../bind/status.js";
import { type Command } from "./registry.js";

/** A proxy probe gives up after this; the kubelet's own exec timeout should be longer. */
const PROXY_TIMEOUT_MS = 3_000;

const HELP = `Usage: scrapez probe (--ready | --live) [--status-file F | --config bind.yaml]
       scrapez probe (--ready | --live) --proxy http://127.0.0.1:9480

Exits 0 when the running scrapez bind is live (running, status fresh) or ready (authenticated and every
service bound), 1 otherwise (also when --config cannot be read), printing why; 2 on a usage error. Reads the
status file scrapez bind keeps up to date.

With --proxy: asks a scrapez proxy's /-/ready (--ready) or /-/healthy (--live) at that http:// base URL, for a
proxy that listens only on the pod's loopback. Exits 0 on 200, 1 otherwise (within ${PROXY_TIMEOUT_MS / 1000} s).
`;

/** GET <base>/-/ready or /-/healthy: ok on 200, with the body's first line (the proxy says why it is not ready). */
export async function probeProxy(
  base: string,
  kind: "ready" | "live",
  timeoutMs = PROXY_TIMEOUT_MS,
): Promise<{ ok: boolean; detail: string }> {
  let url: URL;
  try {
    url = new URL(kind === "ready" ? "/-/ready" : "/-/healthy", base);
  } catch {
    return { ok: false, detail: `--proxy ${base} is not a URL (expected http://host:port)` };
  }
  if (url.protocol !== "http:") {
    return {
      ok: false,
      detail: `--proxy ${base}: only http:// (for a TLS listener use an httpGet probe, scheme HTTPS)`,
    };
  }
  // node:http, not fetch: fetch refuses the "bad ports" of the Fetch standard (6000, 6665-6669, ...).
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: timeoutMs }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => {
        if (text.length < 2048) text += d;
      });
      res.on("end", () => {
        const line = text.trim().split("\n")[0] ?? "";
        resolve({ ok: res.statusCode === 200, detail: `${url.href}: ${res.statusCode}${line ? ` ${line}` : ""}` });
      });
      res.on("error", (err) => resolve({ ok: false, detail: `${url.href}: ${err.message}` }));
    });
    req.on("timeout", () => req.destroy(new Error(`no answer within ${timeoutMs / 1000} s`)));
    req.on("error", (err: NodeJS.ErrnoException) =>
      resolve({ ok: false, detail: `${url.href}: ${err.code ?? err.message}` }),
    );
  });
}

export const command: Command = {
  async run(argv) {
    const { values } = parseArgs({
      args: argv,
      options: {
        ready: { type: "boolean" },
        live: { type: "boolean" },
        "status-file": { type: "string" },
        config: { type: "string", short: "c" },
        proxy: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    });
    if (values.help) {
      process.stdout.write(HELP);
      return 0;
    }
    if (values.ready === values.live) {
      process.stderr.write(`scrapez probe: give exactly one of --ready or --live\n\n${HELP}`);
      return 2;
    }
    const kind = values.ready ? "ready" : "live";
    if (values.proxy !== undefined) {
      if (values["status-file"] || values.config) {
        process.stderr.write(`scrapez probe: --proxy probes a proxy; drop --status-file and --config\n\n${HELP}`);
        return 2;
      }
      const r = await probeProxy(values.proxy, kind);
      (r.ok ? process.stdout : process.stderr).write(`${r.detail}\n`);
      return r.ok ? 0 : 1;
    }
    let file = values["status-file"];
    /** The default place: its directory must be this user's private one (src/bind/status.ts). */
    let privateDir = false;
    if (!file && values.config) {
      try {
        // Loaded only here: the config schema (zod, yaml) would triple the cost of every exec probe.
        const { loadBindConfig } = await import("../bind/config.js");
        file = loadBindConfig(values.config).statusFile;
        if (file === undefined) {
          file = defaultStatusFile(values.config);
          privateDir = true;
        }
      } catch (err) {
        // An input file that cannot be used is a failure (1), like in every command; 2 is for the command line.
        process.stderr.write(`scrapez probe: ${(err as Error).message}\n`);
        return 1;
      }
    }
    if (!file) {
      process.stderr.write(`scrapez probe: give --status-file or --config\n\n${HELP}`);
      return 2;
    }
    const r = probe(file, kind, Date.now(), { privateDir });
    (r.ok ? process.stdout : process.stderr).write(`${r.detail}\n`);
    return r.ok ? 0 : 1;
  },
};
