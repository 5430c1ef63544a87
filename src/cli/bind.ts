/** `scrapez bind --config F`: the sidecar that binds exporters onto the overlay. It listens on nothing. */
import { unlinkSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import {
  ConfigError,
  loadBindConfig,
  parseBindConfig,
  unpinnedCallers,
  unpinnedWarning,
  type BindConfig,
} from "../bind/config.js";
import { ReloadNeedsRestart, restartFields } from "../bind/reload.js";
import { BindServer } from "../bind/server.js";
import { STATUS_COALESCE_MS, STATUS_INTERVAL_MS, defaultStatusFile, writeStatus } from "../bind/status.js";
import { watchConfigFile } from "../bind/watch.js";
import type { LoadOptions } from "../common/config/errors.js";
import { BIND_OVERRIDES, overridesHelp } from "../common/config/overrides.js";
import { openOverlay, type OverlayOpenError } from "../overlay/open.js";
import type { ZitiContext as ZitiContextType } from "../ziti/index.js";
import { registerProcessMetrics } from "./build-info.js";
import { createLogger } from "../common/log.js";
import { BindReport } from "./onboard-report.js";
import {
  BIND_ONBOARD_OPTIONS,
  ensureIdentity,
  identityAdvice,
  onboardHelp,
  prepareDir,
  proxyUrlFlag,
  stateDirOf,
  stateIdentityFile,
  targetsFromFlags,
} from "./onboard.js";
import { runFlags, UsageError, type Command } from "./registry.js";
import { untilStopSignal } from "./shutdown.js";

const HELP = `Usage: scrapez bind --config <bind.yaml> [options]
       scrapez bind --jwt <token.jwt> --service <name> --upstream <http://host:port> [...] [options]

Binds each configured exporter onto the OpenZiti overlay as a service. Only dials out; listens on nothing
(so there is no --listen: its own metrics are the overlay service \`self\`). Starts without the controller: it
keeps retrying (with back-off) and binds once authenticated; \`scrapez probe --ready\` says why until then.
See docs/bind.md.

Options (a flag wins over its environment variable, which wins over the config file; docs/configuration.md):
  -c, --config F       SCRAPEZ_CONFIG         the config file
${overridesHelp(BIND_OVERRIDES)}
${onboardHelp("bind")}
Signals: SIGHUP (and a change of the file) reloads the config (an invalid one is refused and the running one
kept; so is one changing identity, zitiAuth or renewCertBeforeDays, which need a restart). SIGTERM/SIGINT unbind every service at once, let requests in flight
finish for up to drainSeconds (default 10), then exit 0; a second signal ends the wait.
`;

export const command: Command = {
  async run(argv) {
    if (argv.some((a) => a === "--listen" || a.startsWith("--listen="))) {
      throw new UsageError(
        "scrapez bind listens on nothing, so it has no --listen (its own metrics are the overlay service `self`: " +
          "docs/bind.md); --listen is a scrapez proxy flag",
      );
    }
    const parsed = runFlags("bind", argv, HELP, BIND_OVERRIDES, process.env, {
      options: BIND_ONBOARD_OPTIONS,
      configOptional: true,
    });
    if (typeof parsed === "number") return parsed;
    const { configFile, flags } = parsed;
    const services = (flags.service as string[] | undefined) ?? [];
    const upstreams = (flags.upstream as string[] | undefined) ?? [];
    const jwt = flags.jwt as string | undefined;
    const stateDirFlag = flags["state-dir"] as string | undefined;
    if (configFile && (services.length > 0 || upstreams.length > 0)) {
      throw new UsageError(
        "--service and --upstream are for a run without --config: with a config file, its targets say what to bind",
      );
    }
    if (configFile && stateDirFlag !== undefined) {
      throw new UsageError(
        "--state-dir is for a run without --config: with a config file, --jwt enrolls into the file its `identity` names",
      );
    }
    if (!configFile && services.length === 0 && upstreams.length === 0) {
      process.stderr.write(
        `scrapez bind: give --config (or SCRAPEZ_CONFIG), or the exporters as --service and --upstream\n\n${HELP}`,
      );
      return 2;
    }
    // Without a config file the targets come from the flags, and the identity and status file live in the state
    // directory (docs/bind.md#one-command-onboarding). Reloads read the same flags again.
    let load: (opts?: LoadOptions) => BindConfig;
    let stateDir: string | undefined;
    if (configFile) {
      load = (opts) => loadBindConfig(configFile, process.env, flags, opts);
    } else {
      const dir = stateDirOf(stateDirFlag);
      stateDir = dir;
      const raw = {
        identity: stateIdentityFile(dir, "bind"),
        statusFile: join(dir, "bind-status.json"),
        targets: targetsFromFlags(services, upstreams),
      };
      load = (opts) => parseBindConfig(raw, "the command line", process.cwd(), process.env, flags, opts);
    }
    const onboarding = !configFile || jwt !== undefined;
    const warnings: string[] = [];
    let config: BindConfig;
    try {
      if (onboarding) {
        const early = load({ checkFiles: false });
        const ensured = await ensureIdentity(early.identity, jwt, {
          egressProxy: early.egressProxy,
          ...identityAdvice("bind", configFile, flags),
        });
        process.stdout.write(`scrapez bind: ${ensured.message}\n`);
        // The status file goes there too (the identity may be elsewhere, with --identity). Enrolling into it has
        // prepared it already, and warned of it.
        const prepared = ensured.enrolled && stateDir !== undefined && resolve(dirname(ensured.file)) === stateDir;
        warnings.push(...new Set([...ensured.warnings, ...(stateDir && !prepared ? prepareDir(stateDir) : [])]));
      }
      config = load();
    } catch (err) {
      const e = err as Error & { code?: string };
      process.stderr.write(
        `scrapez bind: ${e.code && !(err instanceof ConfigError) ? `[${e.code}] ` : ""}${e.message}\n`,
      );
      return err instanceof ConfigError && err.fromFlag ? 2 : 1;
    }
    const log = createLogger(config.logLevel, { component: "bind" }, undefined, config.logFormat);
    for (const w of warnings) log.warn(w);
    const report = onboarding
      ? new BindReport(config.targets, proxyUrlFlag(flags["proxy-url"] as string | undefined))
      : undefined;
    const warnUnpinned = (c: BindConfig) => {
      for (const u of unpinnedCallers(c)) log.warn(unpinnedWarning(u), u);
    };
    warnUnpinned(config);
    let ctx: ZitiContextType;
    try {
      // Without waiting for the controller: a controller that is down at start is retried with back-off (exiting
      // would be a crash loop under Kubernetes). Only an unreadable or invalid identity file stops us here.
      ctx = await openOverlay(config.identity, log, {
        zitiAuth: config.zitiAuth,
        renewCertBeforeDays: config.renewCertBeforeDays,
        egressProxy: config.egressProxy,
      });
    } catch (err) {
      const e = err as OverlayOpenError;
      log.error("cannot start: the identity file is invalid", {
        identity: config.identity,
        code: e.zitiCode,
        reason: e.message,
      });
      return 1;
    }
    let server: BindServer | undefined;
    // The default place is this user's private directory under the temp dir (src/bind/status.ts).
    const statusFileOf = (c: BindConfig) => c.statusFile ?? defaultStatusFile(configFile);
    let statusFile = statusFileOf(config);
    const saveStatus = () => {
      try {
        const s = server
          ? server.status()
          : {
              ready: false,
              services: Object.fromEntries(config.targets.map((t) => [t.service, { state: "waiting" }])),
            };
        const reason = ctx.notReadyReason;
        writeStatus(
          statusFile,
          {
            pid: process.pid,
            updatedAt: new Date().toISOString(),
            authenticated: ctx.ready,
            ...(reason ? { reason } : {}),
            ...(ctx.authMode ? { authMode: ctx.authMode } : {}),
            certExpiresAt: ctx.certExpiresAt.toISOString(),
            ...s,
          },
          { privateDir: config.statusFile === undefined },
        );
      } catch (err) {
        log.warn("cannot write the status file", { statusFile, reason: (err as Error).message });
      }
    };
    // A service's state change is written within STATUS_COALESCE_MS, once for all the changes in that time: a bind
    // with 1,000 services changes state ~2,000 times while binding, and writing the whole file for each one
    // allocated ~450 MiB and held the event loop (found with an allocation profile of that bind).
    let coalescing: NodeJS.Timeout | undefined;
    const saveStatusSoon = () => {
      coalescing ??= setTimeout(() => {
        coalescing = undefined;
        saveStatus();
      }, STATUS_COALESCE_MS);
    };
    // openOverlay logs authentication and renewal; the status file follows them.
    ctx.on("authFailed", saveStatus);
    ctx.on("certRenewed", saveStatus);
    saveStatus();
    const statusTimer = setInterval(saveStatus, STATUS_INTERVAL_MS);

    let stopping = false;
    // Listeners start binding once authenticated (with the config as last reloaded).
    const starting = ctx.whenReady().then(
      async () => {
        if (stopping) return;
        log.info("authenticated", { identity: ctx.identityName, targets: config.targets.map((t) => t.service) });
        server = new BindServer(ctx, config, log);
        registerProcessMetrics(server.metrics.registry, "bind");
        report?.authenticated(ctx.identityName);
        const s = server;
        server.onChange(() => {
          saveStatusSoon();
          report?.update(s.status().services);
        });
        saveStatus();
        await server.start();
        saveStatus();
      },
      () => undefined, // closed before it authenticated
    );

    /** A reloaded statusFile: written there from now on, the old file removed (a probe of it then fails). */
    const moveStatus = () => {
      const next = statusFileOf(config);
      if (next === statusFile) return;
      const old = statusFile;
      statusFile = next;
      saveStatus();
      try {
        unlinkSync(old);
      } catch {
        /* never written, or already gone */
      }
      log.info("status file moved", { from: old, to: next });
    };
    const refuse = (why: string, err: ReloadNeedsRestart) =>
      log.error("new config rejected; keeping the running one", { why, fields: err.fields, reason: err.message });

    let reloading = Promise.resolve();
    const reload = (why: string) => {
      reloading = reloading.then(async () => {
        let next: BindConfig;
        try {
          next = load();
        } catch (err) {
          log.error("new config rejected; keeping the running one", { why, reason: (err as ConfigError).message });
          return;
        }
        if (!server) {
          // The context was opened with these fields: the same refusal as BindServer.apply's.
          const fields = restartFields(config, next);
          if (fields.length > 0) return refuse(why, new ReloadNeedsRestart(fields));
          config = next; // not started yet: the start uses it
          log.setLevel(next.logLevel);
          log.setFormat(next.logFormat);
          moveStatus();
          log.info("config reloaded (not authenticated yet)", { why });
          warnUnpinned(next);
          return;
        }
        try {
          const d = await server.apply(next);
          config = next;
          log.setLevel(next.logLevel);
          log.setFormat(next.logFormat);
          moveStatus();
          log.info("config reloaded", { why, ...d });
          warnUnpinned(next);
        } catch (err) {
          if (err instanceof ReloadNeedsRestart) return refuse(why, err);
          log.error("reload failed; keeping the running config", { why, reason: (err as Error).message });
        }
      });
    };
    process.on("SIGHUP", () => reload("SIGHUP"));
    const stopWatching = configFile ? watchConfigFile(configFile, () => reload("file changed")) : () => undefined;

    const stop = await untilStopSignal();
    stopping = true;
    stopWatching();
    log.info("shutting down: unbinding and draining requests in flight", {
      signal: stop.signal,
      inFlight: server?.inFlight ?? 0,
      drainSeconds: config.drainSeconds,
    });
    if (!server) await ctx.close(); // ends the background authentication; `starting` then settles
    await starting;
    await reloading;
    if (server) {
      const started = Date.now();
      const s = server;
      const { unfinished } = await Promise.race([
        s.drain(config.drainSeconds * 1000),
        stop.again.then(() => ({ unfinished: s.inFlight })),
      ]);
      if (unfinished > 0) log.warn("drain deadline reached; closing what is left", { unfinished });
      else log.info("drained", { ms: Date.now() - started });
    }
    clearInterval(statusTimer);
    clearTimeout(coalescing);
    await server?.close();
    await ctx.close();
    return 0;
  },
};
