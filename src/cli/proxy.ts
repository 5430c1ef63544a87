/** `scrapez proxy --config F`: the HTTP proxy and service discovery a stock Prometheus scrapes overlay services through. */
import { existsSync } from "node:fs";
import { ConfigError, type LoadOptions } from "../common/config/errors.js";
import { overridesHelp, PROXY_OVERRIDES } from "../common/config/overrides.js";
import { loadProxyConfig, parseProxyConfig, type ProxyConfig } from "../proxy/config.js";
import { OverlayOpenError, openOverlays } from "../overlay/open.js";
import { ProxyServer, type ReloadOutcome } from "../proxy/server.js";
import type { DialOverlay } from "../overlay/types.js";
import { registerProcessMetrics } from "./build-info.js";
import { createLogger } from "../common/log.js";
import {
  ensureIdentity,
  identityAdvice,
  ONBOARD_OPTIONS,
  onboardHelp,
  stateDirOf,
  stateIdentityFile,
} from "./onboard.js";
import { ProxyReport } from "./onboard-report.js";
import { runFlags, UsageError, type Command } from "./registry.js";
import { untilStopSignal } from "./shutdown.js";
import { defaultWorkers } from "./workers/default-workers.js";
import { runPrimary } from "./workers/primary.js";
import { WorkerLink } from "./workers/worker.js";

const HELP = `Usage: scrapez proxy --config <proxy.yaml> [options]
       scrapez proxy --jwt <token.jwt> [options]

An HTTP proxy for Prometheus's proxy_url (absolute-form requests and CONNECT), path mode
(/scrape/<service>/<path>), HTTP service discovery (/sd), /-/healthy, /-/ready and /metrics.
Only overlay services are reachable. See docs/proxy.md.

Starts without the controller: it listens at once, each identity authenticates in the background (with back-off),
and /-/ready, /sd and scrapes answer 503 with the reason until one has. Only an unreadable or invalid identity
file stops it at start.

Options (a flag wins over its environment variable, which wins over the config file; docs/configuration.md):
  -c, --config F       SCRAPEZ_CONFIG         the config file
${overridesHelp(PROXY_OVERRIDES)}
${onboardHelp("proxy")}
Prometheus conventions (exporter-toolkit): --web.listen-address, --web.config.file (tls_server_config,
basic_auth_users with bcrypt hashes, http_server_config.headers; re-read on each request and connection),
--web.enable-lifecycle (POST /-/reload does what SIGHUP does and answers how it went), --log.level, --log.format.

Signals: SIGHUP reloads the config (an invalid one is refused and the running one kept; listen, identities and
turning TLS on or off need a restart). SIGTERM/SIGINT stop listening, let requests in flight finish for up to
drainSeconds (default 10), then exit 0; a second signal ends the wait.

With --workers N (default: the CPUs it may use) N processes share the port, each with its own overlay contexts;
/metrics, /sd and /status answer for all of them, signals go to the first process (docs/proxy.md, Workers).
`;

function authMode(config: ProxyConfig): string {
  const modes = [
    config.auth?.bearerTokenFile ? "bearer" : "",
    config.auth?.basic ? "basic" : "",
    config.tls?.clientCA ? "client-cert" : "",
  ].filter(Boolean);
  return modes.join("+") || "none";
}

export const command: Command = {
  async run(argv) {
    const parsed = runFlags("proxy", argv, HELP, PROXY_OVERRIDES, process.env, {
      options: ONBOARD_OPTIONS,
      configOptional: true,
    });
    if (typeof parsed === "number") return parsed;
    const { configFile, flags } = parsed;
    // --jwt, or no config file: one-command onboarding (docs/proxy.md#one-command-onboarding).
    const jwt = flags.jwt as string | undefined;
    const stateDirFlag = flags["state-dir"] as string | undefined;
    if (configFile && stateDirFlag !== undefined) {
      throw new UsageError(
        "--state-dir is for a run without --config: with a config file, --jwt enrolls into its `identities`",
      );
    }
    const stateFile = stateIdentityFile(stateDirOf(stateDirFlag), "proxy");
    const raw = configFile ? undefined : { identities: [stateFile] };
    if (raw && jwt === undefined && !flags.identity && !process.env.SCRAPEZ_IDENTITY && !existsSync(stateFile)) {
      process.stderr.write(
        `scrapez proxy: give --config (or SCRAPEZ_CONFIG), or --jwt <token> to enroll an identity into ${stateFile}\n\n${HELP}`,
      );
      return 2;
    }
    const load = (opts?: LoadOptions) =>
      raw
        ? parseProxyConfig(raw, "the command line", process.cwd(), process.env, flags, opts)
        : loadProxyConfig(configFile, process.env, flags, opts);
    const onboarding = !configFile || jwt !== undefined;
    let config: ProxyConfig;
    try {
      if (onboarding) {
        const early = load({ checkFiles: false });
        const identities = early.identities;
        if (identities.length !== 1) {
          throw new UsageError(
            `--jwt enrolls one identity; there are ${identities.length}: enroll each with scrapez enroll`,
          );
        }
        // With --workers the first process enrolls; its workers find the identity (and say nothing of it).
        const ensured = await ensureIdentity(identities[0]!, jwt, {
          egressProxy: early.egressProxy,
          ...identityAdvice("proxy", configFile, flags),
        });
        if (!WorkerLink.current()) {
          process.stdout.write(`scrapez proxy: ${ensured.message}\n`);
          for (const w of ensured.warnings) process.stderr.write(`scrapez proxy: warning: ${w}\n`);
        }
      }
      config = load();
    } catch (err) {
      if (err instanceof UsageError) throw err;
      const e = err as Error & { code?: string };
      process.stderr.write(
        `scrapez proxy: ${e.code && !(err instanceof ConfigError) ? `[${e.code}] ` : ""}${e.message}\n`,
      );
      return err instanceof ConfigError && err.fromFlag ? 2 : 1;
    }
    // --workers N: this process starts N workers (src/cli/workers/), each of which runs what follows.
    const link = WorkerLink.current();
    const log = createLogger(
      config.logLevel,
      { component: "proxy", ...(link ? { worker: link.slot } : {}) },
      undefined,
      config.logFormat,
    );
    const workers = config.workers ?? defaultWorkers();
    if (!link && workers > 1) {
      return runPrimary({
        load: load,
        config,
        workers,
        log,
        describe: (c) => ({ tls: !!c.tls, auth: authMode(c), identities: c.identities }),
      });
    }
    let overlays: DialOverlay[];
    try {
      overlays = await openOverlays(config.identities, log, {
        zitiAuth: config.zitiAuth,
        renewCertBeforeDays: link && link.slot > 1 ? 0 : config.renewCertBeforeDays,
        egressProxy: config.egressProxy,
      });
    } catch (err) {
      const e = err as Error;
      log.error("cannot start: an identity file is invalid", {
        identity: e instanceof OverlayOpenError ? e.identityFile : undefined,
        code: e instanceof OverlayOpenError ? e.zitiCode : undefined,
        reason: e.message,
      });
      link?.fatal(e.message, e instanceof OverlayOpenError ? { identity: e.identityFile, code: e.zitiCode } : {});
      return 1;
    }
    const closeOverlays = () => Promise.allSettled(overlays.map((o) => o.close()));
    let proxy: ProxyServer;
    let addr;
    try {
      proxy = new ProxyServer(overlays, config, log);
      registerProcessMetrics(proxy.metrics.registry, "proxy");
      await link?.beforeListen(overlays);
      addr = await proxy.start();
    } catch (err) {
      log.error("cannot start", { listen: config.listen, reason: (err as Error).message });
      link?.fatal(`cannot listen on ${config.listen}: ${(err as Error).message}`);
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
    const report = onboarding && (!link || link.slot === 1) ? new ProxyReport() : undefined;
    report?.start(addr, { tls: !!config.tls, auth: authMode(config) !== "none" }, proxy.catalog, () =>
      overlays.map((o) => o.identityName),
    );

    // SIGHUP or POST /-/reload (--web.enable-lifecycle): reload, one at a time; a config that is invalid or needs a
    // restart is refused as a whole. The outcome is what /-/reload answers.
    let reloading: Promise<ReloadOutcome> = Promise.resolve({ ok: true, changed: [] });
    const reloadNow = (why: string): Promise<ReloadOutcome> => {
      reloading = reloading.then((): ReloadOutcome => {
        let next: ProxyConfig;
        try {
          next = load();
        } catch (err) {
          log.error("new config rejected; keeping the running one", { why, reason: (err as Error).message });
          return { ok: false, reason: (err as Error).message };
        }
        try {
          const changed = proxy.reconfigure(next);
          log.setLevel(next.logLevel);
          log.setFormat(next.logFormat);
          config = next;
          log.info("config reloaded", { why, changed, auth: authMode(next) });
          return { ok: true, changed };
        } catch (err) {
          log.error("new config rejected; keeping the running one", { why, reason: (err as Error).message });
          return { ok: false, reason: (err as Error).message };
        }
      });
      return reloading;
    };
    const reload = () => void reloadNow("SIGHUP");
    // With --workers a POST /-/reload reaches one worker: the primary reloads them all, as on SIGHUP.
    proxy.setReloader(() => (link ? link.reloadAll("/-/reload") : reloadNow("/-/reload")));
    if (!link) process.on("SIGHUP", reload);
    // A worker reloads when the primary says so (it got SIGHUP) and tells it whether the new config was taken.
    link?.attach(proxy, overlays, addr);
    link?.onReload(async () => {
      const before = config;
      reload();
      await reloading;
      return config !== before ? { ok: true } : { ok: false, reason: "the new config was rejected (see the log)" };
    });

    const stop = await (link ? link.untilStop() : untilStopSignal());
    process.off("SIGHUP", reload);
    report?.stop();
    await reloading;
    log.info("shutting down: draining requests in flight", {
      signal: stop.signal,
      inFlight: proxy.inFlight,
      drainSeconds: config.drainSeconds,
    });
    const started = Date.now();
    const { unfinished } = await Promise.race([
      proxy.drain(config.drainSeconds * 1000),
      stop.again.then(() => ({ unfinished: proxy.inFlight })),
    ]);
    if (unfinished > 0) log.warn("drain deadline reached; closing what is left", { unfinished });
    else log.info("drained", { ms: Date.now() - started });
    await proxy.close();
    await closeOverlays();
    link?.done(0);
    return 0;
  },
};
