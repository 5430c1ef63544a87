/**
 * The image, as `docker build` makes it and `docker run` runs it: the repository's Dockerfile built by the real engine
 * (test/harness/docker.ts; the base swapped for the local Debian 12 + Node 20 one through NODE_IMAGE), then run
 * hardened (`--read-only --tmpfs /tmp --user 10001:10001 --cap-drop ALL --security-opt no-new-privileges`) against
 * the real test overlay, which listens on docker0's address (198.18.200.1) so containers reach it:
 * - node_exporter in a container; `scrapez bind` in its network namespace (`--network container:...`), started
 *   with the exact `docker run` command of docs/container.md and the README (paths and the tag substituted);
 * - `scrapez proxy` in a container on the bridge; the test scrapes through it;
 * - the exec probes (`scrapez probe --ready ...`) through `docker exec`; SIGHUP (`docker kill -s HUP`) reloads,
 *   SIGTERM (`docker stop`) drains and exits 0.
 * The docs' `docker build` command runs too, as written, on the engine's cache. Prints the image's size and the
 * build times.
 */
import { chmodSync, chownSync, copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import YAML from "yaml";
import { repoRoot } from "../harness/binaries.js";
import {
  BRIDGE_HOST,
  baseImage,
  binaryImage,
  buildFigures,
  Container,
  docker,
  dockerOk,
  HARDENED,
  LABEL,
  labelArgs,
  removeLabelled,
  requireEngine,
  RUN_ID,
  scrapezImage,
} from "../harness/docker.js";
import { Overlay } from "../harness/overlay.js";
import { waitUntil } from "../harness/ports.js";
import { ManagedProcess, removeDir, tempDir } from "../harness/process.js";

const HOST = BRIDGE_HOST;
const TOKEN = "image-test-token";
const pkg = JSON.parse(readFileSync(join(repoRoot, "package.json"), "utf8")) as {
  version: string;
  license: string;
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
};

/** `$PWD` of the documented `docker run`: holds identities/ and config/ as the docs lay them out. */
const pwd = tempDir("image-pwd");
const proxyDir = tempDir("image-proxy");
const names = {
  exporter: `image-exporter-${RUN_ID}`,
  bind: `image-bind-${RUN_ID}`,
  proxy: `image-proxy-${RUN_ID}`,
};
const docsTag = `scrapez-test/scrapez-docs:${RUN_ID}`;
let image: string;
let overlay: Overlay;
let exporter: Container;
let proxy: Container;
let bind: ManagedProcess;
let proxyBase: string;

/** The shell commands of a ```sh block that contains `marker`, continuation lines joined. */
function shellBlock(file: string, marker: string): string[] {
  const text = readFileSync(join(repoRoot, file), "utf8");
  const block = [...text.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!).find((b) => b.includes(marker));
  if (!block) throw new Error(`${file} has no sh block with ${marker}`);
  return block
    .replace(/\\\n\s*/g, "")
    .split("\n")
    .map((l) => l.replace(/\s+/g, " ").trim())
    .filter((l) => l.startsWith("docker "));
}

/** Makes a file or dir as a Kubernetes Secret with defaultMode 0440 and fsGroup 10001 would: root:10001. */
function secret(path: string, mode: number): void {
  chownSync(path, 0, 10001);
  chmodSync(path, mode);
}

/** What the image's tree looks like, listed inside it by its own node (JSON on stdout). */
const TREE_SCRIPT = `
  const fs = require("fs"), p = require("path");
  const out = { packages: [], empty: [], notRoot: [], app: fs.readdirSync("/app").sort() };
  const pkgRe = /^(node_modules\\/(@[^/]+\\/)?[^/.@][^/]*\\/)*node_modules\\/(@[^/]+\\/)?[^/.@][^/]*$/;
  const walk = (d) => {
    const st = fs.lstatSync(d);
    if (st.uid !== 0) out.notRoot.push(d);
    if (!st.isDirectory()) return;
    const es = fs.readdirSync(d);
    if (es.length === 0) out.empty.push(d);
    const rel = p.relative("/app", d);
    if (pkgRe.test(rel) && es.includes("package.json")) out.packages.push(rel);
    for (const e of es) walk(p.join(d, e));
  };
  walk("/app");
  out.dist = fs.readdirSync("/app/dist");
  out.config = fs.readdirSync("/app/config").sort();
  out.link = fs.readlinkSync("/usr/local/bin/scrapez");
  out.mainMode = (fs.statSync("/app/dist/src/cli/main.js").mode & 0o777).toString(8);
  process.stdout.write(JSON.stringify(out));`;
const WRITE_PATHS = ["/app/x", "/x", "/usr/local/bin/x", "/identities/x", "/config/x"];
const TOUCH = WRITE_PATHS.map((f) => `touch ${f} 2>&1`).join("; ");

/**
 * The one-shot `docker run --rm` checks, started together (each container is a full copy of the image on vfs, so
 * they are few): `--version` and no arguments (the CMD) through the entrypoint, hardened; one hardened shell as
 * the image's user for its ids, /tmp, the mounts and the tree; one shell as root with the engine's default
 * capabilities, which only the read-only root and mounts stop.
 */
function startOneShots() {
  const mounts = ["-v", `${pwd}/identities:/identities:ro`, "-v", `${pwd}/config:/config:ro`];
  const run = (flags: readonly string[], args: string[]) =>
    docker(["run", "--rm", ...labelArgs(), ...flags, ...mounts, ...args], { timeoutMs: 180_000 });
  const userScript = [
    "echo @id; id -u; id -g; id -G; echo $TMPDIR",
    "echo @tmp; touch /tmp/x && echo ok; head -c 1 /identities/node-a.json; echo; cat /config/bind.yaml >/dev/null && echo cfg",
    `echo @touch; ${TOUCH}`,
    'echo @tree; node -e "$TREE"',
  ].join("; ");
  return Promise.all([
    run(HARDENED, [image, "--version"]),
    run(HARDENED, [image]),
    run([...HARDENED, "-e", `TREE=${TREE_SCRIPT}`, "--entrypoint", "/bin/sh"], [image, "-c", userScript]),
    run(["--read-only", "--tmpfs", "/tmp", "--user", "0:0", "--entrypoint", "/bin/sh"], [image, "-c", TOUCH]),
  ]).then(([version, help, user, root]) => {
    const sections: Record<string, string> = {};
    for (const part of user.stdout.split(/^@/m).slice(1)) {
      const nl = part.indexOf("\n");
      sections[part.slice(0, nl)] = part.slice(nl + 1);
    }
    return { version, help, user, sections, root };
  });
}
let oneShots: ReturnType<typeof startOneShots>;

/**
 * docs/container.md's `docker build`, as written (through bash in the checkout, for its `$(...)`), with only the
 * tag (this run's own), the base (no registry here) and the `<repository URL>` placeholder substituted.
 */
async function startDocsBuild(): Promise<{ exitCode: number | null | undefined; log: string; ms: number }> {
  const [build] = shellBlock("docs/container.md", "docker build");
  if (!build?.match(/^docker build -t scrapez:0\.1\.0 .* \.$/)) throw new Error(`unexpected docs build: ${build}`);
  const cmd = build
    .replace("docker build", `docker build --build-arg NODE_IMAGE=${baseImage()}`)
    .replace("-t scrapez:0.1.0", `-t ${docsTag}`)
    .replace("<repository URL>", "https://example.invalid/scrapez.git");
  const t0 = Date.now();
  const sh = new ManagedProcess({ name: "docs-build", command: "bash", args: ["-c", cmd], cwd: repoRoot });
  sh.start();
  await waitUntil(
    () => sh.exitCode !== undefined,
    600_000,
    "the docs' docker build",
    () => sh.logTail(4000),
  );
  const out = { exitCode: sh.exitCode, log: sh.logTail(4000), ms: Date.now() - t0 };
  await sh.close();
  return out;
}
let docsBuild: ReturnType<typeof startDocsBuild>;

/** GET on the proxy container with the bearer token: status and body. */
function proxyGet(path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get(`${proxyBase}${path}`, { headers: { authorization: `Bearer ${TOKEN}` }, agent: false }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (body += d));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on("error", reject);
  });
}

/** Log lines of the bind (JSON, one a line) whose msg is `msg`. */
function bindLines(msg: string): Record<string, unknown>[] {
  return bind
    .logTail()
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l.msg === msg);
}

function bindConfig(services: string[]): string {
  return YAML.stringify({
    // Relative to the config file, as config/bind.yaml has it: /config/../identities/node-a.json.
    identity: "../identities/node-a.json",
    targets: services.map((service) => ({ service, upstream: "http://127.0.0.1:9100" })),
  });
}

beforeAll(async () => {
  await requireEngine();
  // The build (minutes when cold) and the overlay start in parallel; the docs' build follows the image's at once.
  const [img, ov, exporterImage] = await Promise.all([
    scrapezImage().then((tag) => {
      docsBuild = startDocsBuild();
      docsBuild.catch(() => undefined); // awaited (and its failure reported) by its test
      return tag;
    }),
    Overlay.start({ host: HOST }),
    binaryImage("node-exporter", "/usr/bin/prometheus-node-exporter", { base: "busybox" }),
  ]);
  image = img;
  overlay = ov;
  await overlay.service("image-node", { dial: ["#clients"], bind: ["#servers"] });
  await overlay.service("image-node-2", { dial: ["#clients"], bind: ["#servers"] });
  const bindId = await overlay.identity("image-bind", ["servers"]);
  const promId = await overlay.identity("image-prom", ["clients"]);
  // The layout of docs/container.md's `docker run`: $PWD/identities and $PWD/config.
  for (const d of ["identities", "config"]) mkdirSync(join(pwd, d));
  chmodSync(pwd, 0o755);
  secret(join(pwd, "identities"), 0o750);
  copyFileSync(bindId, join(pwd, "identities", "node-a.json"));
  secret(join(pwd, "identities", "node-a.json"), 0o440);
  chmodSync(join(pwd, "config"), 0o755);
  writeFileSync(join(pwd, "config", "bind.yaml"), bindConfig(["image-node"]));
  chmodSync(proxyDir, 0o755);
  copyFileSync(promId, join(proxyDir, "prom.json"));
  secret(join(proxyDir, "prom.json"), 0o440);
  writeFileSync(join(proxyDir, "token"), `${TOKEN}\n`);
  secret(join(proxyDir, "token"), 0o440);
  writeFileSync(
    join(proxyDir, "proxy.yaml"),
    YAML.stringify({
      identities: ["/config/prom.json"],
      listen: "0.0.0.0:9480",
      auth: { bearerTokenFile: "/config/token" },
    }),
  );
  oneShots = startOneShots();
  // node_exporter on its own network namespace's loopback (config/bind.yaml's upstream 127.0.0.1:9100): nothing
  // outside that namespace reaches it; the bind shares the namespace.
  [exporter, proxy] = await Promise.all([
    Container.run(names.exporter, ["--read-only", "--user", "65534:65534", "--cap-drop", "ALL"], exporterImage, [
      "--web.listen-address=127.0.0.1:9100",
    ]),
    Container.run(names.proxy, [...HARDENED, "-v", `${proxyDir}:/config:ro`], image, [
      "proxy",
      "--config",
      "/config/proxy.yaml",
    ]),
  ]);
  proxyBase = `http://${await proxy.ip()}:9480`;
  await waitUntil(
    async () => (await exporter.exec(["wget", "-qO", "/dev/null", "http://127.0.0.1:9100/metrics"])).code === 0,
    30_000,
    "node_exporter in its container",
    () => "",
  );
  const size = Number((await dockerOk(["image", "inspect", "--format", "{{.Size}}", image])).trim());
  const build = buildFigures.map((b) => `${b.cached ? "cached" : `${(b.ms / 1000).toFixed(1)} s`}`).join(", ");
  console.log(`[image.test] ${image}: ${(size / 1e6).toFixed(1)} MB; docker build: ${build}`);
}, 900_000);

afterAll(async () => {
  await removeLabelled();
  await bind?.close();
  await docker(["rmi", docsTag]);
  await overlay?.close();
  removeDir(pwd);
  removeDir(proxyDir);
}, 120_000);

describe("the built image", () => {
  it("runs as 10001:10001 with scrapez as entrypoint, --help as command, TMPDIR=/tmp, and carries the OCI labels", async () => {
    const cfg = JSON.parse(await dockerOk(["image", "inspect", "--format", "{{json .Config}}", image])) as {
      User: string;
      Entrypoint: string[];
      Cmd: string[];
      WorkingDir: string;
      Env: string[];
      Labels: Record<string, string>;
    };
    expect(cfg).toMatchObject({ User: "10001:10001", Entrypoint: ["scrapez"], Cmd: ["--help"], WorkingDir: "/app" });
    expect(cfg.Env).toEqual(
      expect.arrayContaining(["NODE_ENV=production", "TMPDIR=/tmp", "NODE_OPTIONS=--max-semi-space-size=1"]),
    );
    expect(cfg.Labels).toMatchObject({
      "org.opencontainers.image.title": "scrapez",
      "org.opencontainers.image.licenses": pkg.license,
      "org.opencontainers.image.version": pkg.version,
    });
    expect(cfg.Labels["org.opencontainers.image.description"]).toMatch(/Prometheus .* OpenZiti/);
  });

  it("docs/container.md's `docker build` runs as written, on the cache, and sets revision, created and source", async () => {
    const build = await docsBuild;
    expect(build.exitCode, build.log).toBe(0);
    console.log(`[image.test] the docs' docker build (labels only differ): ${(build.ms / 1000).toFixed(1)} s`);
    const labels = JSON.parse(
      await dockerOk(["image", "inspect", "--format", "{{json .Config.Labels}}", docsTag]),
    ) as Record<string, string>;
    const head = readFileSync(join(repoRoot, ".git", "HEAD"), "utf8").trim();
    expect(labels["org.opencontainers.image.revision"]).toMatch(/^[0-9a-f]{40}$/);
    if (!head.startsWith("ref:")) expect(labels["org.opencontainers.image.revision"]).toBe(head);
    expect(labels["org.opencontainers.image.created"]).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    expect(labels["org.opencontainers.image.source"]).toBe("https://example.invalid/scrapez.git");
    // Only metadata and the one COPY --from differ in the steps re-run: every filesystem layer is the same.
    const layers = async (t: string) =>
      JSON.parse(await dockerOk(["image", "inspect", "--format", "{{json .RootFS.Layers}}", t])) as string[];
    expect(await layers(docsTag)).toEqual(await layers(image));
  }, 600_000);

  it("holds exactly the lock's production packages, no empty folder, compiled src/ only, every file owned by root", async () => {
    const { user, sections } = await oneShots;
    expect(sections.tree, user.stderr).toBeDefined();
    const tree = JSON.parse(sections.tree!) as {
      packages: string[];
      empty: string[];
      notRoot: string[];
      app: string[];
      dist: string[];
      config: string[];
      link: string;
      mainMode: string;
    };
    const lock = JSON.parse(readFileSync(join(repoRoot, "package-lock.json"), "utf8")) as {
      packages: Record<string, { dev?: boolean }>;
    };
    const production = Object.entries(lock.packages)
      .filter(([path, p]) => path !== "" && !p.dev)
      .map(([path]) => path)
      .sort();
    expect(tree.packages.sort()).toEqual(production);
    for (const d of Object.keys(pkg.dependencies)) expect(production).toContain(`node_modules/${d}`);
    for (const d of Object.keys(pkg.devDependencies)) expect(tree.packages).not.toContain(`node_modules/${d}`);
    // `npm prune` leaves the dev packages' scope folders (node_modules/@types, ...) empty; the Dockerfile drops them.
    expect(tree.empty).toEqual([]);
    expect(tree.notRoot).toEqual([]);
    expect(tree).toMatchObject({
      app: ["config", "dist", "node_modules", "package.json"],
      dist: ["src"],
      config: ["bind.yaml", "federation.yaml", "proxy.yaml"],
      link: "/app/dist/src/cli/main.js",
      mainMode: "755",
    });
  });

  it("`--version` and `--help` (the CMD) run through the entrypoint as uid 10001, with TMPDIR=/tmp", async () => {
    const { version, help, sections } = await oneShots;
    expect(version).toMatchObject({ code: 0, stdout: `scrapez ${pkg.version}\n` });
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^scrapez: let an unmodified Prometheus scrape/);
    expect(sections.id).toBe("10001\n10001\n10001\n/tmp\n");
  });

  it("cannot write outside /tmp, not even as root; /tmp is writable; the identity is readable, not writable", async () => {
    const { root, sections } = await oneShots;
    // Root with the engine's default capabilities would be allowed by permissions: only the read-only root
    // filesystem and mounts stop it.
    expect(root.stdout).toBe(WRITE_PATHS.map((f) => `touch: cannot touch '${f}': Read-only file system\n`).join(""));
    const lines = sections.touch!.trim().split("\n");
    expect(lines).toHaveLength(WRITE_PATHS.length);
    for (const l of lines) expect(l).toMatch(/^touch: cannot touch '.+': (Read-only file system|Permission denied)$/);
    expect(sections.tmp).toBe("ok\n{\ncfg\n");
  });
});

describe("bind and proxy in containers, hardened, over the real overlay", () => {
  it("the README's and docs/container.md's `docker run` are one command, and it needs the exporter's network", () => {
    const [, docsRun] = shellBlock("docs/container.md", "docker build");
    const readmeRun = shellBlock("README.md", "docker run").find((l) => l.startsWith("docker run"));
    expect(readmeRun).toBe(docsRun);
    expect(docsRun).toMatch(/ --network container:node-exporter /);
  });

  it("scrapez bind, started with the docs' `docker run`, serves scrapes through scrapez proxy; the exec probes pass", async () => {
    const [, docsRun] = shellBlock("docs/container.md", "docker build");
    // Substituted: this run's name and label (so teardown finds it), the exporter container's name, the tag.
    const cmd = docsRun!
      .replace("docker run", `docker run --name ${names.bind} --label ${LABEL}=${RUN_ID}`)
      .replace("container:node-exporter", `container:${names.exporter}`)
      .replace(" scrapez:0.1.0 ", ` ${image} `);
    // In the foreground, as a user runs it: the docker CLI prints the container's logs and exits with its code.
    bind = new ManagedProcess({ name: "image-bind", command: "bash", args: ["-c", cmd], cwd: pwd });
    bind.start();
    const probe = () =>
      docker(["exec", names.bind, "scrapez", "probe", "--ready", "--config", "/config/bind.yaml"], {
        timeoutMs: 30_000,
      });
    const ready = await bind.waitFor(
      async () => {
        const r = await probe();
        return r.code === 0 ? r : undefined;
      },
      90_000,
      "scrapez probe --ready exits 0 (docker exec, as the kubelet's exec probe)",
    );
    expect(ready.stdout).toBe("ready: 1 service(s) bound\n");
    // PID 1 of the container is scrapez itself, as 10001:10001, with no capability and no way to gain one.
    const status = await dockerOk(["exec", names.bind, "cat", "/proc/1/status"]);
    expect(status).toMatch(/^Uid:\s+10001\s+10001\s+10001\s+10001$/m);
    expect(status).toMatch(/^Gid:\s+10001\s+10001\s+10001\s+10001$/m);
    expect(status).toMatch(/^CapEff:\s+0+$/m);
    expect(status).toMatch(/^CapBnd:\s+0+$/m);
    expect(status).toMatch(/^NoNewPrivs:\s+1$/m);
    // The default status file: in uid 10001's private directory on the /tmp tmpfs, 0700, the file 0600.
    const files = await dockerOk([
      "exec",
      names.bind,
      "sh",
      "-c",
      "stat -c '%a %u' /tmp/scrapez-10001; ls /tmp/scrapez-10001; stat -c %a /tmp/scrapez-10001/*",
    ]);
    expect(files).toMatch(/^700 10001\nscrapez-bind-[0-9a-f]{12}\.status\.json\n600\n$/);
    const proxyReady = await waitUntil(
      async () => {
        const r = await proxy.exec(["scrapez", "probe", "--ready", "--proxy", "http://127.0.0.1:9480"]);
        return r.code === 0 ? r : undefined;
      },
      60_000,
      "scrapez probe --ready --proxy in the proxy container",
      () => "",
    );
    expect(proxyReady.code).toBe(0);
    const scraped = await waitUntil(
      async () => {
        const r = await proxyGet("/scrape/image-node/metrics");
        return r.status === 200 ? r.body : undefined;
      },
      60_000,
      "a scrape of node_exporter through the proxy and bind containers",
      () => bind.logTail(4096),
    );
    expect(scraped).toMatch(/^node_exporter_build_info\{/m);
    // node_exporter listens on its namespace's loopback only: the bridge address refuses.
    const direct = await docker([
      "exec",
      names.proxy,
      "node",
      "-e",
      `require("net").connect(9100, "${await exporter.ip()}").on("connect", () => process.exit(0)).on("error", () => process.exit(3))`,
    ]);
    expect(direct.code).toBe(3);
  }, 240_000);

  it("SIGHUP reloads both: the bind binds an added service, the proxy applies a new discovery filter", async () => {
    expect(bind?.running, "the bind from the previous test runs").toBe(true);
    writeFileSync(join(pwd, "config", "bind.yaml"), bindConfig(["image-node", "image-node-2"]));
    // The bind also watches its config file: the change alone reloads it (inside the container, through the mount).
    await waitUntil(
      () => bindLines("config reloaded").length > 0,
      30_000,
      "the bind's reload",
      () => bind.logTail(),
    );
    expect(bindLines("config reloaded")[0]).toMatchObject({ why: "file changed", added: ["image-node-2"] });
    await dockerOk(["kill", "-s", "HUP", names.bind]);
    await waitUntil(() => bindLines("config reloaded").length > 1, 30_000, "the bind's SIGHUP reload");
    expect(bindLines("config reloaded")[1]).toMatchObject({ why: "SIGHUP", added: [], removed: [] });
    const ready = await waitUntil(
      async () => {
        const r = await docker(["exec", names.bind, "scrapez", "probe", "--ready", "--config", "/config/bind.yaml"]);
        return r.code === 0 && r.stdout.includes("2 service(s)") ? r : undefined;
      },
      60_000,
      "both services bound",
    );
    expect(ready.stdout).toBe("ready: 2 service(s) bound\n");
    const two = await waitUntil(
      async () => {
        const r = await proxyGet("/scrape/image-node-2/metrics");
        return r.status === 200 ? r.body : undefined;
      },
      60_000,
      "a scrape of the added service",
    );
    expect(two).toMatch(/^node_exporter_build_info\{/m);

    // The proxy has no file watcher: only SIGHUP applies its new config. Its discovery drops image-node-2.
    const sdHas = async (service: string) => {
      const r = await proxyGet("/sd");
      if (r.status !== 200) return false;
      const groups = JSON.parse(r.body) as { labels: Record<string, string> }[];
      return groups.some((g) => g.labels.__meta_ziti_service === service);
    };
    await waitUntil(() => sdHas("image-node-2"), 60_000, "image-node-2 in the proxy's /sd");
    const cfg = YAML.parse(readFileSync(join(proxyDir, "proxy.yaml"), "utf8")) as Record<string, unknown>;
    writeFileSync(join(proxyDir, "proxy.yaml"), YAML.stringify({ ...cfg, discovery: { exclude: ["image-node-2"] } }));
    await new Promise((r) => setTimeout(r, 1000));
    expect(await sdHas("image-node-2"), "not applied before SIGHUP").toBe(true);
    await proxy.kill("HUP");
    await waitUntil(async () => !(await sdHas("image-node-2")), 30_000, "the proxy's SIGHUP reload");
    expect(await sdHas("image-node")).toBe(true);
    expect(await proxy.logs()).toMatch(/"msg":"config reloaded".*"why":"SIGHUP"/);
    expect((await proxy.state()).Running).toBe(true);
  }, 240_000);

  it("SIGTERM (docker stop) drains and exits 0, the bind and the proxy", async () => {
    expect(bind?.running, "the bind from the previous tests runs").toBe(true);
    const [, proxyCode] = await Promise.all([dockerOk(["stop", "-t", "30", names.bind]), proxy.stop(30)]);
    await waitUntil(() => bind.exitCode !== undefined, 30_000, "the docker run in the foreground exits");
    expect(bind.exitCode, bind.logTail(4096)).toBe(0);
    expect(bindLines("drained").length, bind.logTail(4096)).toBe(1);
    expect(proxyCode, await proxy.logs()).toBe(0);
    expect(await proxy.logs()).toMatch(/"msg":"shutting down: draining requests in flight".*"signal":"SIGTERM"/);
  }, 120_000);
});
