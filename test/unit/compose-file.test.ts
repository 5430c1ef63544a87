/**
 * docker-compose.yml as Compose itself reads it (Debian's docker-compose: `config -q` validates against the Compose
 * schema, `config` resolves anchors and defaults), and what the file promises: restarts, start order on health,
 * volume ownership for the images' users, one scrapez image, no published exporter port, configs that scrapez and
 * promtool accept. No Docker engine is involved here; test/integration/compose.test.ts brings the stack up.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import YAML from "yaml";
import { parseBindConfig } from "../../src/bind/config.js";
import { parseProxyConfig } from "../../src/proxy/config.js";
import { promtoolBin } from "../harness/binaries.js";

const repo = join(import.meta.dirname, "../..");
const work = mkdtempSync(join(tmpdir(), "scrapez-compose-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** `docker-compose ... args` with the user's defaults: no PROMETHEUS_PORT unless `env` sets one. */
function dockerCompose(args: string[], env: Record<string, string> = {}): string {
  const { PROMETHEUS_PORT: _, ...inherited } = process.env;
  try {
    return execFileSync(
      "docker-compose",
      ["--project-directory", repo, "-f", join(repo, "docker-compose.yml"), ...args],
      {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "pipe"],
        env: { ...inherited, ...env },
      },
    );
  } catch (err) {
    const e = err as Error & { code?: string; stderr?: string };
    if (e.code === "ENOENT") throw new Error("docker-compose is not installed: run `npm run setup` (Debian package)");
    throw new Error(`docker-compose ${args.join(" ")} failed:\n${e.stderr ?? e.message}`);
  }
}

interface Service {
  image?: string;
  build?: unknown;
  user?: string;
  command?: string[];
  entrypoint?: string[];
  restart?: string;
  read_only?: boolean;
  tmpfs?: string[];
  /** Compose v1 prints the short forms: `127.0.0.1:9090:9090/tcp` */
  ports?: string[];
  /** `name:/path:rw` (a named volume) or `/host/path:/path:ro` */
  volumes?: string[];
  depends_on?: Record<string, { condition: string }>;
  healthcheck?: { test: string[] };
}

const resolved = YAML.parse(dockerCompose(["config"])) as { services: Record<string, Service> };
const services = resolved.services;
const pkg = JSON.parse(readFileSync(join(repo, "package.json"), "utf8")) as { version: string };
/** The OpenZiti line the tests run on by default (scripts/setup.sh builds it), without the "v" as image tags are. */
const zitiVersion = /^ZITI2_VERSION=v(\S+)$/m.exec(readFileSync(join(repo, "scripts/setup.sh"), "utf8"))![1]!;
const ONE_SHOT = ["init", "bootstrap"];

/** A short-form volume: named (source is not a path) or a bind mount. */
function volumesOf(s: Service) {
  return (s.volumes ?? []).map((v) => {
    const [source, target, mode = "rw"] = v.split(":");
    return { source: source!, target: target!, named: !source!.startsWith("/"), readOnly: mode === "ro" };
  });
}

/** A short-form port: `[ip:]published:target[/proto]`. */
function portsOf(s: Service) {
  return (s.ports ?? []).map((p) => {
    const parts = p.replace(/\/\w+$/, "").split(":");
    const target = Number(parts.pop());
    const published = Number(parts.pop());
    return { hostIp: parts.pop() ?? "0.0.0.0", published, target };
  });
}

describe("docker-compose.yml", () => {
  it("is valid for Compose (docker-compose config -q)", () => {
    expect(dockerCompose(["config", "-q"])).toBe("");
    expect(Object.keys(services).sort()).toEqual(
      ["bootstrap", "init", "node-exporter", "prometheus", "scrapez-bind", "scrapez-proxy", "ziti"].sort(),
    );
  });

  it("restarts every long-running service unless stopped, and never a one-shot", () => {
    for (const [name, s] of Object.entries(services))
      expect(s.restart, name).toBe(ONE_SHOT.includes(name) ? "no" : "unless-stopped");
  });

  it("starts each service only once what it needs is healthy (or, for one-shots, completed)", () => {
    let edges = 0;
    for (const [name, s] of Object.entries(services)) {
      for (const [dep, { condition }] of Object.entries(s.depends_on ?? {})) {
        edges++;
        if (ONE_SHOT.includes(dep)) expect(condition, `${name} -> ${dep}`).toBe("service_completed_successfully");
        else {
          expect(condition, `${name} -> ${dep}`).toBe("service_healthy");
          expect(services[dep]!.healthcheck?.test, `${dep} has a healthcheck`).toBeTruthy();
        }
      }
    }
    expect(edges).toBeGreaterThanOrEqual(6);
    expect(Object.keys(services["scrapez-bind"]!.depends_on!)).toContain("bootstrap");
    expect(Object.keys(services.prometheus!.depends_on!)).toEqual(["scrapez-proxy"]);
    for (const [name, s] of Object.entries(services))
      if (!ONE_SHOT.includes(name)) expect(s.healthcheck, name).toBeTruthy();
  });

  it("gives each image's user the named volumes it writes (the init service chowns them first)", () => {
    const init = services.init!;
    const chowns = [...(init.command ?? []).join(" ").matchAll(/chown -R (\d+):(\d+) (\S+)/g)].map((m) => ({
      uid: m[1],
      path: m[3],
    }));
    const initMounts = new Map(volumesOf(init).map((v) => [v.source, v.target]));
    let checked = 0;
    for (const [name, s] of Object.entries(services)) {
      if (name === "init") continue;
      for (const v of volumesOf(s)) {
        if (!v.named || v.readOnly) continue;
        const uid = (s.user ?? "").split(":")[0];
        expect(uid, `${name} runs as a numeric user`).toMatch(/^\d+$/);
        const at = initMounts.get(v.source);
        expect(at, `init mounts volume ${v.source}`).toBeDefined();
        expect(chowns, `${v.source} chowned to ${name}'s uid`).toContainEqual({ uid, path: at });
        checked++;
      }
    }
    expect(checked).toBe(2); // ziti-home (ziti) and identities (bootstrap); scrapez mounts identities read-only
    // The official images' user (ziggy, 2171:2171, HOME /home/ziggy) and the scrapez image's (10001:10001).
    expect(services.ziti!.user).toBe("2171:2171");
    expect(volumesOf(services.ziti!).map((v) => v.target)).toEqual(["/home/ziggy"]);
    // The quickstart writes its PKI, config and database under --home: inside that volume.
    expect(services.ziti!.command).toContain("--home=/home/ziggy/quickstart");
    for (const n of ["scrapez-bind", "scrapez-proxy"])
      expect(volumesOf(services[n]!).find((v) => v.target === "/identities")).toMatchObject({ readOnly: true });
    expect(services.bootstrap!.user).toBe("10001:10001");
  });

  it("uses the official OpenZiti images at the version the tests run on (2.0.3)", () => {
    expect(services.ziti!.image).toBe(`openziti/ziti-controller:${zitiVersion}`);
    expect(services.bootstrap!.image).toBe(`openziti/ziti-cli:${zitiVersion}`);
    expect(services.ziti!.healthcheck!.test).toEqual(["CMD", "ziti", "agent", "stats"]);
  });

  it("builds one scrapez image once, named, and runs it read-only with its documented entrypoint and probe", () => {
    const built = Object.entries(services).filter(([, s]) => s.build !== undefined);
    expect(built.map(([n]) => n)).toEqual(["scrapez-bind"]);
    const image = `scrapez:${pkg.version}`;
    // The image's ENTRYPOINT (test/integration/image.test.ts reads it from the built image too).
    const entry = /^ENTRYPOINT (.+)$/m.exec(readFileSync(join(repo, "Dockerfile"), "utf8"))?.[1];
    expect(JSON.parse(entry ?? "null")).toEqual(["scrapez"]);
    for (const [name, cmd] of [
      ["scrapez-bind", "bind"],
      ["scrapez-proxy", "proxy"],
    ] as const) {
      const s = services[name]!;
      expect(s.image, name).toBe(image);
      expect(s.entrypoint, `${name} keeps the image's entrypoint`).toBeUndefined();
      expect(s.command?.[0]).toBe(cmd);
      expect(s.read_only).toBe(true);
      expect(s.tmpfs).toEqual(["/tmp"]);
      expect(s.user, "the image's own USER").toBeUndefined();
    }
    expect(services["scrapez-bind"]!.healthcheck!.test).toEqual([
      "CMD",
      "scrapez",
      "probe",
      "--ready",
      "--config",
      "/config/bind.yaml",
    ]);
  });

  it("publishes no exporter port: only Prometheus's UI, on the host's loopback", () => {
    const published = Object.entries(services).flatMap(([n, s]) => portsOf(s).map((p) => [n, p] as const));
    expect(published).toEqual([["prometheus", { hostIp: "127.0.0.1", published: 9090, target: 9090 }]]);
    // PROMETHEUS_PORT moves only the host side (the compose test passes a free port); it stays on loopback.
    const moved = YAML.parse(dockerCompose(["config"], { PROMETHEUS_PORT: "19090" })) as {
      services: Record<string, Service>;
    };
    expect(portsOf(moved.services.prometheus!)).toEqual([{ hostIp: "127.0.0.1", published: 19090, target: 9090 }]);
  });

  it("its scrapez and Prometheus configs are valid and point at the compose services", () => {
    const cfg = join(repo, "config/compose");
    const toHost = (text: string) => text.replaceAll("/config/", `${cfg}/`);
    const id = join(work, "id.json");
    writeFileSync(id, "{}");
    const bind = parseBindConfig(YAML.parse(toHost(readFileSync(join(cfg, "bind.yaml"), "utf8"))), "bind.yaml", cfg, {
      SCRAPEZ_IDENTITY: id,
    });
    expect(new URL(bind.targets[0]!.upstream).hostname).toBe("node-exporter");
    const proxy = parseProxyConfig(
      YAML.parse(toHost(readFileSync(join(cfg, "proxy.yaml"), "utf8"))),
      "proxy.yaml",
      cfg,
      {
        SCRAPEZ_IDENTITY: id,
      },
    );
    const prom = toHost(readFileSync(join(cfg, "prometheus.yml"), "utf8"));
    expect(prom).toContain(`proxy_url: http://scrapez-proxy:${proxy.listenPort}`);
    writeFileSync(join(work, "prometheus.yml"), prom);
    execFileSync(promtoolBin(), ["check", "config", join(work, "prometheus.yml")], { stdio: "pipe" });
    // The configs' identity paths are the files the bootstrap writes into the identities volume.
    const boot = readFileSync(join(cfg, "bootstrap.sh"), "utf8");
    for (const f of [readFileSync(join(cfg, "bind.yaml"), "utf8"), readFileSync(join(cfg, "proxy.yaml"), "utf8")]) {
      const name = /\/identities\/([\w-]+)\.json/.exec(f)![1]!;
      expect(boot).toMatch(new RegExp(`^identity ${name} \\w+$`, "m"));
    }
  });
});
