/**
 * The real Docker engine, as the container tests use it: `docker` commands and nothing else. scripts/setup.sh
 * installs and starts the engine (Debian's docker.io, storage driver vfs, bridge and pools in 198.18.0.0/15) and
 * makes the local base image (Debian 12 minbase + this machine's Node 20 and npm; no registry is reachable here),
 * whose tag it writes to .cache/docker-base-image.
 *
 * - Everything a test makes carries the label `scrapez-test=<run id>`, so `removeLabelled()` finds what a test
 *   left (containers, networks, volumes) even after a crash.
 * - `scrapezImage()` builds the repository's own Dockerfile with NODE_IMAGE=<base>, once per source tree: the tag
 *   is keyed by the build context's content, and a lock makes two test files in parallel share one build.
 * - `binaryImage()` makes a small image of one host binary (ziti, Prometheus, node_exporter) on the base, or on the
 *   busybox base (`busyboxImage()`: busybox and glibc, as the official prom/* images are made; a few MB, where the
 *   Debian base is over 200, each container and build step a copy of it on vfs).
 */
import { createHash } from "node:crypto";
import {
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { basename, join, relative } from "node:path";
import { repoRoot } from "./binaries.js";
import { runCommand, tempDir, type CommandResult } from "./process.js";

export type DockerResult = CommandResult;

/** Runs `docker ...args`; never throws (see `dockerOk`). */
export function docker(
  args: string[],
  opts: { timeoutMs?: number; input?: string | Buffer; cwd?: string } = {},
): Promise<DockerResult> {
  return runCommand("docker", args, opts);
}

/** `docker ...args`, its stdout; throws with the command and its stderr when it fails. */
export async function dockerOk(args: string[], opts: Parameters<typeof docker>[1] = {}): Promise<string> {
  const r = await docker(args, opts);
  if (r.code !== 0) throw new Error(`docker ${args.join(" ")} exited ${r.code}: ${r.stderr.trim().slice(-2000)}`);
  return r.stdout;
}

/** Fails with what to do when no engine answers (tests that need one must fail, never skip). */
export async function requireEngine(): Promise<void> {
  const r = await docker(["version", "--format", "{{.Server.Version}}"], { timeoutMs: 20_000 });
  if (r.code !== 0) {
    throw new Error(
      `no Docker engine answers (docker version: ${r.stderr.trim().slice(0, 300)}): run \`npm run setup\` as root, which installs docker.io and starts dockerd`,
    );
  }
}

function cachedTag(file: string, what: string): string {
  const f = join(repoRoot, ".cache", file);
  if (!existsSync(f)) throw new Error(`${f} is missing: run \`npm run setup\`, which makes the ${what}`);
  return readFileSync(f, "utf8").trim();
}

/** The local base image scripts/setup.sh made (Debian 12 minbase + Node 20 + npm). */
export function baseImage(): string {
  return cachedTag("docker-base-image", "base image");
}

/**
 * The local busybox base image scripts/setup.sh made: Debian's busybox-static (sh, wget, cp, chmod, sleep, ...), the
 * glibc loader and libraries node_exporter and Prometheus link (listed in its label scrapez-test.libs), /etc/passwd
 * and /etc/group with nobody 65534, /etc/nsswitch.conf and the CA bundle: what quay.io/prometheus/busybox:glibc, the
 * base of the official prom/* images, has. For busybox: images (init containers) and pause containers too.
 */
export function busyboxImage(): string {
  return cachedTag("docker-busybox-image", "busybox base image");
}

/**
 * Fails, naming what is missing, when `binary` needs a shared library the busybox base lacks: its `ldd` against the
 * base's label scrapez-test.libs. A statically linked binary needs none.
 */
async function checkLibraries(binary: string, image: string): Promise<void> {
  const has = new Set(
    (await dockerOk(["image", "inspect", "--format", '{{index .Config.Labels "scrapez-test.libs"}}', image]))
      .trim()
      .split(/\s+/)
      .filter(Boolean),
  );
  const r = await runCommand("ldd", [binary]);
  if (r.code !== 0) {
    if (/not a dynamic executable/.test(r.stdout + r.stderr)) return;
    throw new Error(`ldd ${binary} exited ${r.code}: ${(r.stdout + r.stderr).trim().slice(0, 500)}`);
  }
  const needs = r.stdout
    .split("\n")
    .map((l) => l.trim().split(/\s+/))
    .map((f) => (f[1] === "=>" ? f[2] : f[0]?.startsWith("/") ? f[0] : undefined))
    .filter((p): p is string => p?.startsWith("/") === true);
  const missing = needs.filter((p) => !has.has(p));
  if (missing.length) {
    throw new Error(
      `${binary} needs ${missing.join(", ")}, which the busybox base image ${image} lacks (it has ${[...has].join(", ") || "no libraries"}): put it on the Debian base (base: "debian"), or add the library to the busybox base in scripts/setup.sh`,
    );
  }
}

/** This test process's label value: everything it makes is labelled `scrapez-test=<RUN_ID>`. */
export const RUN_ID = `${process.pid}-${Date.now().toString(36)}`;
export const LABEL = "scrapez-test";
export const labelArgs = (): string[] => ["--label", `${LABEL}=${RUN_ID}`];

let removals = 0;
/** How many removals of labelled objects this process began: what a harness made and keeps may be gone since. */
export const labelledRemovals = (): number => removals;

/**
 * Removes the labelled containers (with their anonymous volumes), then networks and volumes, whose label value
 * `pick` accepts. Returns how many went.
 */
async function removeLabelledWhere(pick: (value: string) => boolean): Promise<number> {
  removals++;
  const list = async (args: string[], key: string) =>
    (await dockerOk([...args, "--filter", `label=${LABEL}`, "--format", `${key}\t{{.Label "${LABEL}"}}`]))
      .split("\n")
      .filter(Boolean)
      .map((l) => l.split("\t") as [string, string])
      .filter(([, value]) => pick(value ?? ""))
      .map(([id]) => id);
  let removed = 0;
  const containers = await list(["ps", "-a"], "{{.ID}}");
  if (containers.length) {
    await docker(["rm", "-f", "-v", ...containers], { timeoutMs: 120_000 });
    removed += containers.length;
  }
  // One by one: a network or volume another test run's cleanup removed first ("not found") is gone as asked, and
  // one still in use must not keep the others.
  for (const kind of ["network", "volume"] as const) {
    for (const name of await list([kind, "ls"], kind === "volume" ? "{{.Name}}" : "{{.ID}}")) {
      const r = await docker([kind, "rm", name]);
      if (r.code === 0 || /no such|not found/i.test(r.stderr)) removed++;
    }
  }
  return removed;
}

/** Removes the containers, networks and volumes this process labelled (or `all`: every test run's). */
export async function removeLabelled(all = false): Promise<void> {
  await removeLabelledWhere((value) => all || value === RUN_ID);
}

/**
 * docker0's address (the engine's bridge, inside 198.18.0.0/15): an overlay started there is reached by containers on
 * the bridge and by this host at the same address, as the identities' controller URL and the router's advertised one.
 */
export const BRIDGE_HOST = "198.18.200.1";

/** The flags the docs' `docker run` gives scrapez (docs/container.md): read-only root, uid 10001, no capabilities. */
export const HARDENED: readonly string[] = [
  "--read-only",
  "--tmpfs",
  "/tmp",
  "--user",
  "10001:10001",
  "--cap-drop",
  "ALL",
  "--security-opt",
  "no-new-privileges",
];

/**
 * Removes what earlier test runs left behind when they were killed before their teardown (a crash, ^C, a CI time-out):
 * everything labelled by a process that no longer runs (the label's value starts with the pid). Another run still
 * going keeps its own. Returns how many containers, networks and volumes were removed.
 */
export function removeOrphans(): Promise<number> {
  const alive = (value: string): boolean => {
    const pid = Number(value.split("-")[0]);
    if (!Number.isInteger(pid) || pid <= 0) return false;
    try {
      process.kill(pid, 0);
      return true;
    } catch (err) {
      // EPERM: it runs, as another user.
      return (err as NodeJS.ErrnoException).code === "EPERM";
    }
  };
  return removeLabelledWhere((value) => !alive(value));
}

/** Waits for an exclusive lock file (a build two test files in parallel would both start), runs fn, releases. */
async function withLock<T>(name: string, fn: () => Promise<T>, timeoutMs = 900_000): Promise<T> {
  const dir = join(repoRoot, ".cache", "locks");
  mkdirSync(dir, { recursive: true });
  const file = join(dir, name);
  const t0 = Date.now();
  for (;;) {
    try {
      closeSync(openSync(file, "wx"));
      writeFileSync(file, String(process.pid));
      break;
    } catch {
      // A lock whose holder is gone is stale.
      const holder = Number(readFileSync(file, "utf8") || "0");
      let alive = holder > 0;
      try {
        if (alive) process.kill(holder, 0);
      } catch {
        alive = false;
      }
      if (!alive && Date.now() - statSync(file).mtimeMs > 2_000) rmSync(file, { force: true });
      if (Date.now() - t0 > timeoutMs) throw new Error(`lock ${file} held by pid ${holder} for over ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  try {
    return await fn();
  } finally {
    rmSync(file, { force: true });
  }
}

/**
 * What the build reads, hashed into the image tag: the Dockerfile and the context files its COPY lines name (those
 * without --from), less what .dockerignore leaves out. An edit elsewhere (tests, docs) keeps the tag, so no build.
 */
function contextHash(root: string, extra: string): string {
  const ignore = readFileSync(join(root, ".dockerignore"), "utf8")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"));
  const skip = (rel: string) =>
    ignore.some((p) => (p.startsWith("*.") ? rel.endsWith(p.slice(1)) : rel === p || rel.startsWith(`${p}/`)));
  const dockerfile = readFileSync(join(root, "Dockerfile"), "utf8");
  const sources = dockerfile
    .split("\n")
    .filter((l) => /^COPY\s/i.test(l) && !/--from=/i.test(l))
    .flatMap((l) => l.trim().split(/\s+/).slice(1, -1))
    .filter((s) => !s.startsWith("--"))
    .sort();
  const h = createHash("sha256").update(extra).update(dockerfile);
  const add = (p: string) => {
    const rel = relative(root, p);
    if (skip(rel)) return;
    const st = statSync(p);
    if (st.isDirectory()) {
      for (const name of readdirSync(p).sort()) add(join(p, name));
    } else if (st.isFile()) h.update(rel).update("\0").update(readFileSync(p)).update("\0");
  };
  for (const s of sources) add(join(root, s));
  return h.digest("hex").slice(0, 12);
}

/** Build timings of this process's builds, for the figures tests print. */
export const buildFigures: { tag: string; ms: number; cached: boolean }[] = [];

/**
 * The repository's Dockerfile built with the engine (`docker build`, its layer cache), the base swapped for the
 * local one through the NODE_IMAGE build argument. Returns the tag; built at most once per content.
 */
export async function scrapezImage(): Promise<string> {
  const base = baseImage();
  const tag = `scrapez-test/scrapez:${contextHash(repoRoot, base)}`;
  return withLock("scrapez-image", async () => {
    if ((await docker(["image", "inspect", tag])).code === 0) {
      buildFigures.push({ tag, ms: 0, cached: true });
      return tag;
    }
    const t0 = Date.now();
    const r = await docker(
      ["build", "-q", "--build-arg", `NODE_IMAGE=${base}`, "--build-arg", "VERSION=0.1.0", "-t", tag, "."],
      { cwd: repoRoot, timeoutMs: 900_000 },
    );
    if (r.code !== 0) throw new Error(`docker build of the Dockerfile failed (${r.code}):\n${r.stderr.slice(-4000)}`);
    buildFigures.push({ tag, ms: Date.now() - t0, cached: false });
    return tag;
  });
}

/**
 * A small image with one host binary at /usr/local/bin/<name> (and `entrypoint`, default that binary), on the Debian
 * base (default: bash, apt, useradd; what ziti's images need) or the busybox base (`base: "busybox"`: sh and wget,
 * glibc; what the official node_exporter and Prometheus images are built on). `extra` lines go into its Dockerfile
 * after the COPY (e.g. a RUN mkdir). Keyed by the base and the binary's content.
 */
export async function binaryImage(
  name: string,
  binary: string,
  opts: { entrypoint?: string[]; extra?: string[]; user?: string; base?: "debian" | "busybox" } = {},
): Promise<string> {
  const base = opts.base === "busybox" ? busyboxImage() : baseImage();
  const extra = opts.extra ?? [];
  const entry = JSON.stringify(opts.entrypoint ?? [`/usr/local/bin/${name}`]);
  const key = createHash("sha256")
    .update(base)
    .update(readFileSync(binary))
    .update(JSON.stringify([name, extra, entry, opts.user ?? ""]))
    .digest("hex")
    .slice(0, 12);
  const tag = `scrapez-test/${name}:${key}`;
  return withLock(`image-${name}`, async () => {
    if ((await docker(["image", "inspect", tag])).code === 0) return tag;
    if (opts.base === "busybox") await checkLibraries(binary, base);
    const ctx = tempDir(`image-${name}`);
    try {
      copyFileSync(binary, join(ctx, basename(name)));
      const lines = [
        `FROM ${base}`,
        `COPY ${basename(name)} /usr/local/bin/${name}`,
        ...extra,
        ...(opts.user ? [`USER ${opts.user}`] : []),
        `ENTRYPOINT ${entry}`,
      ];
      writeFileSync(join(ctx, "Dockerfile"), `${lines.join("\n")}\n`);
      const r = await docker(["build", "-q", "-t", tag, "."], { cwd: ctx, timeoutMs: 600_000 });
      if (r.code !== 0) throw new Error(`docker build of ${tag} failed (${r.code}):\n${r.stderr.slice(-4000)}`);
      return tag;
    } finally {
      rmSync(ctx, { recursive: true, force: true });
    }
  });
}

/** A long-running `docker run -d` container: its logs (capped) on failure, stop/remove at teardown. */
export class Container {
  private constructor(
    readonly id: string,
    readonly name: string,
  ) {}

  /** `docker run -d --name <name> --label ... ...runArgs image ...cmd`. */
  static async run(name: string, runArgs: string[], image: string, cmd: string[] = []): Promise<Container> {
    const id = (await dockerOk(["run", "-d", "--name", name, ...labelArgs(), ...runArgs, image, ...cmd])).trim();
    return new Container(id, name);
  }

  /**
   * `docker exec` in it. runc on a loaded host sometimes fails to start the exec'd process at all ("OCI runtime exec
   * failed: runc did not terminate successfully", nothing run): that attempt is made
   * again, up to twice. A command that ran and failed is never repeated.
   */
  async exec(cmd: string[], opts: { user?: string; timeoutMs?: number } = {}): Promise<DockerResult> {
    const args = ["exec", ...(opts.user ? ["--user", opts.user] : []), this.id, ...cmd];
    for (let attempt = 1; ; attempt++) {
      const r = await docker(args, { timeoutMs: opts.timeoutMs ?? 30_000 });
      if (attempt === 3 || r.code === 0 || !/OCI runtime exec failed: runc did not terminate/.test(r.stderr)) return r;
      await new Promise((resolve) => setTimeout(resolve, 500 * attempt));
    }
  }

  /** Its IP address on `network` (default: its first network). */
  async ip(network?: string): Promise<string> {
    const nets = JSON.parse(
      await dockerOk(["inspect", "--format", "{{json .NetworkSettings.Networks}}", this.id]),
    ) as Record<string, { IPAddress: string }>;
    const n = network ? nets[network] : Object.values(nets)[0];
    if (!n?.IPAddress) throw new Error(`container ${this.name} has no address on ${network ?? "any network"}`);
    return n.IPAddress;
  }

  /** State: running, exit code, OOM. */
  async state(): Promise<{ Running: boolean; ExitCode: number; Status: string }> {
    return JSON.parse(await dockerOk(["inspect", "--format", "{{json .State}}", this.id])) as {
      Running: boolean;
      ExitCode: number;
      Status: string;
    };
  }

  /** The last `tail` lines of its stdout and stderr together. */
  async logs(tail = 200): Promise<string> {
    const r = await docker(["logs", "--tail", String(tail), this.id]);
    return `${r.stdout}${r.stderr}`;
  }

  /** `docker stop -t <s>`; then its exit code. */
  async stop(seconds = 15): Promise<number> {
    await dockerOk(["stop", "-t", String(seconds), this.id], { timeoutMs: (seconds + 30) * 1000 });
    return (await this.state()).ExitCode;
  }

  /** `docker kill -s <signal>`. */
  async kill(signal: string): Promise<void> {
    await dockerOk(["kill", "-s", signal, this.id]);
  }

  async remove(): Promise<void> {
    await docker(["rm", "-f", "-v", this.id], { timeoutMs: 60_000 });
  }
}
