/** `scrapez probe --ready|--live`: Kubernetes exec probes for `scrapez bind`, with no port to probe. */
import { parseArgs } from "node:util";
import { loadBindConfig } from "../bind/config.js";
import { defaultStatusFile, probe } from "../bind/status.js";
import { register } from "./registry.js";

const HELP = `Usage: scrapez probe (--ready | --live) [--status-file F | --config bind.yaml]

Exits 0 when the running scrapez bind is live (running, status fresh) or ready (authenticated and every
service bound), 1 otherwise (also when --config cannot be read), printing why; 2 on a usage error. Reads the
status file scrapez bind keeps up to date.
`;

register("probe", {
  summary: "exec probe for scrapez bind (--ready or --live)",
  async run(argv) {
    const { values } = parseArgs({
      args: argv,
      options: {
        ready: { type: "boolean" },
        live: { type: "boolean" },
        "status-file": { type: "string" },
        config: { type: "string", short: "c" },
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
    let file = values["status-file"];
    if (!file && values.config) {
      try {
        file = loadBindConfig(values.config).statusFile ?? defaultStatusFile(values.config);
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
    const r = probe(file, values.ready ? "ready" : "live");
    (r.ok ? process.stdout : process.stderr).write(`${r.detail}\n`);
    return r.ok ? 0 : 1;
  },
});
