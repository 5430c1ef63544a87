/** `scrapez bind --config F`: the sidecar that binds exporters onto the overlay. It listens on nothing. */
import { ConfigError, loadBindConfig, unpinnedCallers, type BindConfig } from "../bind/config.js";
import { BindServer } from "../bind/server.js";
import { STATUS_INTERVAL_MS, defaultStatusFile, writeStatus } from "../bind/status.js";
import { watchConfigFile } from "../bind/watch.js";
import { createLogger } from "./log.js";
import { configFlag, register } from "./registry.js";

const HELP = `Usage: scrapez bind --config <bind.yaml>

Binds each configured exporter onto the OpenZiti overlay as a service. Only dials out; listens on nothing.
Reloads the config on SIGHUP and when the file changes. See docs/bind.md.

Environment: SCRAPEZ_IDENTITY overrides \`identity\`, SCRAPEZ_LOG_LEVEL overrides \`logLevel\`.
`;

register("bind", {
  summary: "bind exporters onto the overlay (the sidecar; no listening ports)",
  async run(argv) {
    const flag = configFlag("bind", argv, HELP);
    if (typeof flag === "number") return flag;
    const configFile = flag;
    let config: BindConfig;
    try {
      config = loadBindConfig(configFile);
    } catch (err) {
      process.stderr.write(`scrapez bind: ${(err as Error).message}\n`);
      return 2;
    }
    const log = createLogger(config.logLevel, { component: "bind" });
    const warnUnpinned = (c: BindConfig) => {
      for (const u of unpinnedCallers(c)) {
        log.warn(
          "allow-listed caller has no pinned key (allow.keys): on OpenZiti v1.x routers it cannot be verified and " +
            "will be refused; pin it with `scrapez identity key --identity <its file>`",
          u,
        );
      }
    };
    warnUnpinned(config);
    const { ZitiContext } = await import("../ziti/index.js");
    let ctx;
    try {
      ctx = await ZitiContext.fromIdentityFile(config.identity);
    } catch (err) {
      const e = err as Error & { code?: string };
      log.error("cannot start: the identity did not authenticate", {
        identity: config.identity,
        code: e.code,
        reason: e.message,
      });
      return 1;
    }
    log.info("authenticated", { identity: ctx.identityName, targets: config.targets.map((t) => t.service) });
    const server = new BindServer(ctx, config, log);
    const statusFile = config.statusFile ?? defaultStatusFile(configFile);
    const saveStatus = () => {
      try {
        const s = server.status();
        writeStatus(statusFile, { pid: process.pid, updatedAt: new Date().toISOString(), authenticated: true, ...s });
      } catch (err) {
        log.warn("cannot write the status file", { statusFile, reason: (err as Error).message });
      }
    };
    server.onChange(saveStatus);
    await server.start();
    saveStatus();
    const statusTimer = setInterval(saveStatus, STATUS_INTERVAL_MS);

    let reloading = Promise.resolve();
    const reload = (why: string) => {
      reloading = reloading.then(async () => {
        let next: BindConfig;
        try {
          next = loadBindConfig(configFile);
        } catch (err) {
          log.error("new config rejected; keeping the running one", { why, reason: (err as ConfigError).message });
          return;
        }
        try {
          const d = await server.apply(next);
          log.info("config reloaded", { why, ...d });
          warnUnpinned(next);
        } catch (err) {
          log.error("reload failed; keeping the running config", { why, reason: (err as Error).message });
        }
      });
    };
    process.on("SIGHUP", () => reload("SIGHUP"));
    const stopWatching = watchConfigFile(configFile, () => reload("file changed"));

    await new Promise<void>((done) => {
      const stop = (sig: string) => {
        log.info("shutting down", { signal: sig });
        done();
      };
      process.once("SIGTERM", () => stop("SIGTERM"));
      process.once("SIGINT", () => stop("SIGINT"));
    });
    stopWatching();
    clearInterval(statusTimer);
    await reloading;
    await server.close();
    await ctx.close();
    return 0;
  },
});
