/**
 * The image, without a Docker engine: the Dockerfile's own steps run (test/harness/image.ts): `npm ci`, `tsc`,
 * `npm prune` in the build stage, the COPYs and the `scrapez` symlink in the final one, then the result is run the way
 * `docker run --read-only --tmpfs /tmp -v ...:ro` would run it, as the image's USER, against the real overlay:
 * `scrapez bind` serves scrapes from a read-only root as uid 10001, the documented exec probe
 * `[scrapez, probe, --ready, ...]` answers, and SIGTERM ends it with exit 0.
 * What this cannot prove (the Alpine base image itself, the engine's isolation) is listed in docs/container.md.
 */
import { execFile } from "node:child_process";
import {
  chmodSync,
  chownSync,
  copyFileSync,
  lstatSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  statSync,
  writeFileSync,
} from "node:fs";
import http from "node:http";
import type net from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import YAML from "yaml";
import { repoRoot } from "../harness/binaries.js";
import { EmulatedImage, type RunOptions } from "../harness/image.js";
import { Overlay } from "../harness/overlay.js";
import { freePort, waitUntil } from "../harness/ports.js";
import { tempDir } from "../harness/process.js";
import { ScrapezProcess } from "../harness/scrapez.js";

const work = tempDir("image");
const idDir = tempDir("image-ids");
const cfgDir = tempDir("image-cfg");
const pkg = JSON.parse(readFileSync(join(repoRoot, "package.json"), "utf8")) as {
  version: string;
  devDependencies: Record<string, string>;
  dependencies: Record<string, string>;
};
let image: EmulatedImage;
let overlay: Overlay;
let exporter: http.Server;
let proxyPort: number;
const started: { close(): Promise<void> }[] = [];

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** `docker run image args...` (read-only root, /tmp tmpfs, the volumes), one-shot. */
function run(args: string[], opts: RunOptions = {}): Promise<Result> {
  const [cmd, ...rest] = image.argv(args, opts);
  return new Promise((resolve) => {
    execFile(cmd!, rest, { timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** `node_modules/a`, `node_modules/@s/b`, `node_modules/a/node_modules/c`: every dir holding a package.json. */
function installedPackages(root: string, prefix = ""): string[] {
  const out: string[] = [];
  const nm = join(root, prefix, "node_modules");
  let names: string[];
  try {
    names = readdirSync(nm);
  } catch {
    return out;
  }
  for (const n of names) {
    if (n.startsWith(".")) continue;
    const subs = n.startsWith("@") ? readdirSync(join(nm, n)).map((s) => `${n}/${s}`) : [n];
    for (const s of subs) {
      const rel = join(prefix, "node_modules", s);
      try {
        statSync(join(root, rel, "package.json"));
      } catch {
        continue;
      }
      out.push(rel, ...installedPackages(root, rel));
    }
  }
  return out.sort();
}

const sh = (script: string, opts: RunOptions = {}) => run(["-c", script], { ...opts, entrypoint: ["/bin/sh"] });

beforeAll(async () => {
  const buildStarted = Date.now();
  overlay = await Overlay.start();
  exporter = http.createServer((_req, res) => {
    res.setHeader("content-type", "text/plain; version=0.0.4");
    res.end("# TYPE image_demo_up gauge\nimage_demo_up 1\n");
  });
  await new Promise<void>((r) => exporter.listen(0, "127.0.0.1", r));
  await overlay.service("image-node", { dial: ["#clients"], bind: ["#servers"] });
  const bindId = await overlay.identity("image-bind", ["servers"]);
  const promId = await overlay.identity("image-prom", ["clients"]);
  // As Kubernetes mounts a Secret with defaultMode 0400 and fsGroup 10001: group-readable by the image's group only.
  chownSync(idDir, 0, 10001);
  chmodSync(idDir, 0o750);
  chmodSync(cfgDir, 0o755);
  copyFileSync(bindId, join(idDir, "bind.json"));
  chownSync(join(idDir, "bind.json"), 0, 10001);
  chmodSync(join(idDir, "bind.json"), 0o440);
  writeFileSync(
    join(cfgDir, "bind.yaml"),
    YAML.stringify({
      identity: "/identities/bind.json",
      targets: [
        { service: "image-node", upstream: `http://127.0.0.1:${(exporter.address() as net.AddressInfo).port}` },
      ],
    }),
  );
  image = await EmulatedImage.build({
    repo: repoRoot,
    work,
    volumes: { [idDir]: "/identities", [cfgDir]: "/etc/scrapez" },
    buildArgs: { VERSION: pkg.version, REVISION: "test", CREATED: new Date(0).toISOString() },
  });
  process.stdout.write(`[image] build stages ran in ${Math.round((Date.now() - buildStarted) / 1000)} s\n`);
  proxyPort = await freePort();
  const proxy = new ScrapezProcess("image-proxy", "proxy", {
    identities: [promId],
    listen: `127.0.0.1:${proxyPort}`,
  });
  started.push(proxy);
  proxy.start();
  await proxy.waitFor(() => proxy.logLines().some((l) => l.msg === "listening"), 30_000, "proxy listening");
}, 900_000);

afterAll(async () => {
  await Promise.allSettled(started.map((p) => p.close()));
  await image?.close();
  await new Promise<void>((r) => (exporter ? exporter.close(() => r()) : r()));
  await overlay?.close();
});

describe("the image's build stages (npm ci, tsc, prune) and its tree", () => {
  it("holds the runtime dependencies only, compiled src/ only, every file owned by root", () => {
    // Exactly the lock's production packages: npm ci installed the locked tree and prune dropped every dev one.
    const lock = JSON.parse(readFileSync(join(repoRoot, "package-lock.json"), "utf8")) as {
      packages: Record<string, { dev?: boolean }>;
    };
    const expected = Object.entries(lock.packages)
      .filter(([path, p]) => path !== "" && !p.dev)
      .map(([path]) => path)
      .sort();
    expect(installedPackages(image.hostPath("app"))).toEqual(expected);
    for (const d of Object.keys(pkg.dependencies)) expect(expected).toContain(`node_modules/${d}`);
    for (const d of Object.keys(pkg.devDependencies)) expect(expected).not.toContain(`node_modules/${d}`);
    expect(readdirSync(image.hostPath("app")).sort()).toEqual(["config", "dist", "node_modules", "package.json"]);
    expect(readdirSync(image.hostPath("app/dist"))).toEqual(["src"]);
    expect(readdirSync(image.hostPath("app/config")).sort()).toEqual(["bind.yaml", "federation.yaml", "proxy.yaml"]);
    for (const p of ["app", "app/package.json", "app/dist/src/cli/main.js", "app/node_modules/prom-client"]) {
      expect(statSync(image.hostPath(p)).uid).toBe(0);
    }
    expect(statSync(image.hostPath("app/dist/src/cli/main.js")).mode & 0o777).toBe(0o755);
  });

  it("puts scrapez on PATH: /usr/local/bin/scrapez -> the compiled CLI", () => {
    // The final stage's RUN wrote into its /usr overlay: its upper dir holds exactly what the RUN added.
    const link = join(work, `stage-${image.stages.length - 1}`, "upper-usr", "local", "bin", "scrapez");
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(readlinkSync(link)).toBe("/app/dist/src/cli/main.js");
  });
});

describe("running the image read-only as 10001:10001", () => {
  it("`scrapez --version` through the ENTRYPOINT, as uid 10001", async () => {
    const r = await run(["--version"]);
    expect(r).toMatchObject({ code: 0, stdout: `scrapez ${pkg.version}\n` });
    const id = await sh("id -u; id -g; id -G; echo $TMPDIR");
    expect(id.stdout).toBe("10001\n10001\n10001\n/tmp\n");
    const help = await run([]);
    expect(help.code).toBe(0); // CMD ["--help"]
    expect(help.stdout).toMatch(/^scrapez: let an unmodified Prometheus scrape/);
  });

  it("cannot write outside /tmp, not even as root; /tmp is writable; the identity is readable, not writable", async () => {
    const paths = ["/app/x", "/x", "/usr/local/bin/x", "/identities/x", "/etc/scrapez/x"];
    const script = paths.map((f) => `touch ${f} 2>&1`).join("; ");
    // Root would be allowed to write by permissions: only the read-only mounts stop it.
    expect((await sh(script, { user: "0:0" })).stdout).toBe(
      paths.map((f) => `touch: cannot touch '${f}': Read-only file system\n`).join(""),
    );
    const asUser = (await sh(script)).stdout.trim().split("\n");
    expect(asUser).toHaveLength(paths.length);
    for (const l of asUser) expect(l).toMatch(/^touch: cannot touch '.+': (Read-only file system|Permission denied)$/);
    const tmp = await sh(
      "touch /tmp/x && echo ok; head -c 1 /identities/bind.json; echo; cat /etc/scrapez/bind.yaml >/dev/null && echo cfg",
    );
    expect(tmp.stdout).toBe("ok\n{\ncfg\n");
  });

  it("scrapez bind serves scrapes, the exec probe answers, and SIGTERM exits 0", async () => {
    const bind = image.process("image-bind", ["bind", "--config", "/etc/scrapez/bind.yaml"]);
    started.push(bind);
    bind.start();
    const probe = () => run(["probe", "--ready", "--config", "/etc/scrapez/bind.yaml"]);
    const ready = await waitUntil(
      async () => {
        const r = await probe();
        return r.code === 0 ? r : undefined;
      },
      60_000,
      "scrapez probe --ready exits 0",
      () => bind.logTail(4096),
    );
    expect(ready.stdout).toBe("ready: 1 service(s) bound\n");
    const uid = /^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${bind.pid}/status`, "utf8"))?.[1];
    expect(uid).toBe("10001");
    // The default status file: in uid 10001's private directory on the /tmp tmpfs, 0700, the file 0600.
    const status = await sh(
      "stat -c '%a %u' /tmp/scrapez-10001; ls /tmp/scrapez-10001; stat -c %a /tmp/scrapez-10001/*",
    );
    expect(status.stdout).toMatch(/^700 10001\nscrapez-bind-[0-9a-f]{12}\.status\.json\n600\n$/);
    const scraped = await waitUntil(
      () =>
        new Promise<string | undefined>((resolve) => {
          http
            .get({ host: "127.0.0.1", port: proxyPort, path: "http://image-node/metrics", agent: false }, (res) => {
              let b = "";
              res.on("data", (d: Buffer) => (b += d.toString()));
              res.on("end", () => resolve(res.statusCode === 200 ? b : undefined));
            })
            .on("error", () => resolve(undefined));
        }),
      60_000,
      "a scrape through the bind in the image",
    );
    expect(scraped).toContain("image_demo_up 1");
    process.kill(bind.pid!, "SIGTERM");
    await waitUntil(() => bind.exitCode !== undefined, 30_000, "bind exits");
    expect(bind.exitCode).toBe(0);
    expect(bind.logTail()).toMatch(/"msg":"drained"/);
  }, 180_000);
});
