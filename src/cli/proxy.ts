/** `scrapez proxy --config F`: the HTTP proxy and service discovery a stock Prometheus scrapes overlay services through. */
import { loadProxyConfig, type ProxyConfig } from "../proxy/config.js";
import { OverlayOpenError, openOverlays } from "../proxy/overlay.js";
import { ProxyServer } from "../proxy/server.js";
import type { DialOverlay } from "../proxy/types.js";
import { createLogger } from "./log.js";
import { configFlag, register, type Command } from "./registry.js";

const HELP = `Usage: scrapez proxy --config <proxy.yaml>

An HTTP proxy for Prometheus's proxy_url (absolute-form requests and CONNECT), path mode
(/scrape/<service>/<path>), HTTP service discovery (/sd), /-/healthy, /-/ready and /metrics.
Only overlay services are reachable. See docs/proxy.md.

Starts without the controller: it listens at once, each identity authenticates in the background (with back-off),
and /-/ready, /sd and scrapes answer 503 with the reason until one has. Only an unreadable or invalid identity
file stops it at start.
`;

function authMode(config: ProxyConfig): string {
  const modes = [
    config.auth?.bearerTokenFile ? "bearer" : "",
    config.auth?.basic ? "basic" : "",
    config.tls?.clientCA ? "client-cert" : "",
  ].filter(Boolean);
  return modes.join("+") || "none";
}

export const proxyCommand: Command = {
  summary: "HTTP proxy + service discovery for Prometheus (proxy_url, http_sd_configs)",
  async run(argv) {
    const flag = configFlag("proxy", argv, HELP);
    if (typeof flag === "number") return flag;
    let config: ProxyConfig;
    try {
      config = loadProxyConfig(flag);
    } catch (err) {
      process.stderr.write(`scrapez proxy: ${(err as Error).message}\n`);
      return 2;
    }
    const log = createLogger(config.logLevel, { component: "proxy" });
    let overlays: DialOverlay[];
    try {
      overlays = await openOverlays(config.identities, log, {
        zitiAuth: config.zitiAuth,
        renewCertBeforeDays: config.renewCertBeforeDays,
      });
    } catch (err) {
      const e = err as Error;
      log.error("cannot start: an identity file is invalid", {
        identity: e instanceof OverlayOpenError ? e.identityFile : undefined,
        code: e instanceof OverlayOpenError ? e.code : undefined,
        reason: e.message,
      });
      return 1;
    }
    const closeOverlays = () => Promise.allSettled(overlays.map((o) => o.close()));
    let proxy: ProxyServer;
    let addr;
    try {
      proxy = new ProxyServer(overlays, config, log);
      addr = await proxy.start();
    } catch (err) {
      log.error("cannot start", { listen: config.listen, reason: (err as Error).message });
      await closeOverlays();
      return 1;
    }
    log.info("listening", {
      address: `${addr.host}:${addr.port}`,
      tls: !!config.tls,
      auth: authMode(config),
      identities: overlays.map((c) => c.identityName),
      ready: proxy.catalog.ready,
    });
    await new Promise<void>((done) => {
      process.once("SIGTERM", () => done());
      process.once("SIGINT", () => done());
    });
    log.info("shutting down");
    await proxy.close();
    await closeOverlays();
    return 0;
  },
};

register("proxy", proxyCommand);
