/** `scrapez proxy --config F`: the HTTP proxy and service discovery a stock Prometheus scrapes overlay services through. */
import { loadProxyConfig, type ProxyConfig } from "../proxy/config.js";
import { ProxyServer } from "../proxy/server.js";
import { createLogger } from "./log.js";
import { configFlag, register } from "./registry.js";

const HELP = `Usage: scrapez proxy --config <proxy.yaml>

An HTTP proxy for Prometheus's proxy_url (absolute-form requests and CONNECT), path mode
(/scrape/<service>/<path>), HTTP service discovery (/sd), /-/healthy, /-/ready and /metrics.
Only overlay services are reachable. See docs/proxy.md.
`;

register("proxy", {
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
    const { ZitiContext } = await import("../ziti/index.js");
    const contexts = [];
    for (const file of config.identities) {
      try {
        contexts.push(await ZitiContext.fromIdentityFile(file));
      } catch (err) {
        const e = err as Error & { code?: string };
        log.error("cannot start: an identity did not authenticate", {
          identity: file,
          code: e.code,
          reason: e.message,
        });
        for (const c of contexts) await c.close();
        return 1;
      }
    }
    const proxy = new ProxyServer(contexts, config, log);
    let addr;
    try {
      addr = await proxy.start();
    } catch (err) {
      log.error("cannot listen", { listen: config.listen, reason: (err as Error).message });
      for (const c of contexts) await c.close();
      return 1;
    }
    log.info("listening", {
      address: `${addr.host}:${addr.port}`,
      tls: !!config.tls,
      auth: config.auth?.bearerTokenFile
        ? "bearer"
        : config.auth?.basic
          ? "basic"
          : config.tls?.clientCA
            ? "client-cert"
            : "none",
      identities: contexts.map((c) => c.identityName),
    });
    await new Promise<void>((done) => {
      process.once("SIGTERM", () => done());
      process.once("SIGINT", () => done());
    });
    log.info("shutting down");
    await proxy.close();
    for (const c of contexts) await c.close();
    return 0;
  },
});
