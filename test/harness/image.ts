/**
 * Our Dockerfile's steps, run without a Docker engine: each stage gets a root filesystem whose /usr and /etc are
 * overlays of this machine's (standing in for the base image), the build context (filtered by .dockerignore) is
 * COPYed in, every RUN runs in a chroot of that root, and COPY --from copies between stage roots. The final root is
 * then made read-only like `docker run --read-only --tmpfs /tmp` (a fresh tmpfs on /tmp, volumes bind-mounted
 * read-only), and commands run in it as the image's USER via setpriv, with the image's ENV and ENTRYPOINT.
 *
 * Everything happens in a private mount namespace (`unshare -m`) held by one process: nothing is mounted on this
 * machine, and everything goes when that process ends. Needs root (mounts, chroot, overlayfs).
 *
 * What it cannot stand in for (docs/container.md): the base image itself (node:20-alpine, musl and busybox, is
 * replaced by this machine's Debian /usr with its Node 20), `docker build` (layers, cache, BuildKit), and the
 * engine's isolation (network, PID and user namespaces, seccomp, cgroups).
 */
import { cpSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { imageConfig, parseDockerfile, words, type Stage } from "./dockerfile.js";
import { ManagedProcess } from "./process.js";

/** The base image's PATH (node:20-alpine's, which is Docker's default). */
export const IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** .dockerignore as a filter on context-relative paths (the forms our file uses: names, dir/sub, *.ext). */
export function dockerignore(text: string): (rel: string) => boolean {
  const pats = text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"));
  const re = pats.map(
    (p) =>
      new RegExp(
        `^${p
          .replace(/\/$/, "")
          .replace(/[.+^$()|[\]{}]/g, "\\$&")
          .replace(/\*\*/g, "\u0000")
          .replace(/\*/g, "[^/]*")
          .replace(/\u0000/g, ".*")}(/.*)?$`,
      ),
  );
  // A pattern without a slash also matches at any depth for `*.ext` (Docker matches from the context root; our
  // only such pattern is *.log, and excluding more than Docker would only make the check stricter).
  return (rel) =>
    re.some(
      (r, i) => r.test(rel) || (!pats[i]!.includes("/") && pats[i]!.startsWith("*") && r.test(rel.split("/").pop()!)),
    );
}

export interface ImageOptions {
  repo: string;
  /** Scratch space (stage roots, overlay upper dirs, the filtered context). */
  work: string;
  /** Host dir -> path in the container, mounted read-only. */
  volumes?: Record<string, string>;
  buildArgs?: Record<string, string>;
  /** Extra environment for RUN steps only (e.g. a CA bundle for the network's TLS proxy). */
  buildEnv?: Record<string, string>;
}

export interface RunOptions {
  /** uid:gid; default the image's USER. */
  user?: string;
  env?: Record<string, string>;
  /** `docker run --entrypoint` */
  entrypoint?: string[];
}

export class EmulatedImage {
  readonly holder: ManagedProcess;
  readonly root: string;
  readonly config: ReturnType<typeof imageConfig>;
  readonly stages: Stage[];
  /** The generated build script (for the test log). */
  readonly script: string;

  private constructor(
    holder: ManagedProcess,
    root: string,
    stages: Stage[],
    config: ReturnType<typeof imageConfig>,
    script: string,
  ) {
    this.holder = holder;
    this.root = root;
    this.stages = stages;
    this.config = config;
    this.script = script;
  }

  /** Builds (runs every stage's steps) and holds the final root read-only; resolves once ready for run(). */
  static async build(o: ImageOptions): Promise<EmulatedImage> {
    const df = parseDockerfile(readFileSync(join(o.repo, "Dockerfile"), "utf8"));
    const ignored = dockerignore(readFileSync(join(o.repo, ".dockerignore"), "utf8"));
    const ctx = join(o.work, "context");
    cpSync(o.repo, ctx, {
      recursive: true,
      verbatimSymlinks: true,
      filter: (src) => {
        const rel = relative(o.repo, src);
        return rel === "" || !ignored(rel);
      },
    });
    const lines: string[] = [
      "set -euo pipefail",
      `W=${q(o.work)}`,
      `CTX=${q(ctx)}`,
      // A stage root: itself a bind mount (so it can be made read-only), /usr and /etc overlays of this machine's
      // (the "base image"; writes go to the stage's upper dirs), the merged-/usr symlinks, /proc, /dev, /tmp.
      "mkroot() {",
      '  local s="$W/stage-$1" r="$W/stage-$1/root"',
      '  mkdir -p "$r" "$s/upper-usr" "$s/work-usr" "$s/upper-etc" "$s/work-etc"',
      '  mount --bind "$r" "$r"',
      '  mkdir -p "$r/usr" "$r/etc" "$r/tmp" "$r/root" "$r/proc" "$r/dev" "$r/run"',
      '  for d in usr etc; do mount -t overlay overlay -o "lowerdir=/$d,upperdir=$s/upper-$d,workdir=$s/work-$d" "$r/$d"; done',
      '  for l in bin sbin lib lib64; do [ -e "/$l" ] && ln -sfn "usr/$l" "$r/$l"; done',
      '  chmod 1777 "$r/tmp"',
      '  mount -t proc proc "$r/proc"',
      '  mount --bind /dev "$r/dev"',
      "}",
    ];
    const stageIndex = new Map<string, number>();
    let final: ReturnType<typeof imageConfig> | undefined;
    df.stages.forEach((stage, i) => {
      if (stage.name) stageIndex.set(stage.name, i);
      lines.push(`echo "[image] stage ${i} (${stage.name ?? "final"}): FROM ${stage.from}" >&2`, `mkroot ${i}`);
      const r = `$W/stage-${i}/root`;
      const env: Record<string, string> = {};
      let workdir = "/";
      const args: Record<string, string> = { ...df.globalArgs };
      const inRoot = (p: string) => (p.startsWith("/") ? p : join(workdir, p));
      for (const ins of stage.instructions) {
        switch (ins.op) {
          case "WORKDIR":
            workdir = inRoot(ins.args.trim());
            lines.push(`mkdir -p "${r}"${q(workdir)}`);
            break;
          case "ENV":
          case "ARG":
          case "LABEL":
          case "USER":
          case "ENTRYPOINT":
          case "CMD":
            if (ins.op === "ENV") Object.assign(env, imageConfig({ from: "", instructions: [ins] }, {}).env);
            if (ins.op === "ARG") {
              const [k, v = ""] = ins.args.split("=", 2);
              args[k!.trim()] = o.buildArgs?.[k!.trim()] ?? v;
            }
            break; // image config only: read by imageConfig() for the final stage
          case "COPY": {
            const parts = words(ins.args);
            const dest = parts.pop()!;
            const from = ins.flags.from;
            const srcRoot = from !== undefined ? `$W/stage-${stageIndex.get(from) ?? from}/root` : "$CTX";
            const d = inRoot(dest);
            const intoDir = dest.endsWith("/") || parts.length > 1;
            for (const src of parts) {
              const s = `${srcRoot}${from !== undefined ? "" : "/"}${q(src)}`;
              lines.push(
                `echo "[image]   COPY ${from !== undefined ? `--from=${from} ` : ""}${src} ${dest}" >&2`,
                `if [ -d ${s} ]; then mkdir -p "${r}"${q(d)} && cp -a ${s}/. "${r}"${q(d)}/;` +
                  ` elif ${intoDir ? "true" : "false"}; then mkdir -p "${r}"${q(d)} && cp -a ${s} "${r}"${q(d)}/;` +
                  ` else mkdir -p "$(dirname "${r}"${q(d)})" && cp -a ${s} "${r}"${q(d)}; fi`,
              );
            }
            // COPY makes files owned by root (no --chown here).
            lines.push(`chown -R 0:0 "${r}"${q(d)}`);
            break;
          }
          case "RUN": {
            const cmd = ins.exec ? ins.exec.map(q).join(" ") : ins.args;
            const envArgs = Object.entries({ PATH: IMAGE_PATH, HOME: "/root", ...args, ...env, ...o.buildEnv })
              .map(([k, v]) => q(`${k}=${v}`))
              .join(" ");
            lines.push(
              `echo "[image]   RUN ${cmd.replace(/["$`\\]/g, "\\$&")}" >&2`,
              `chroot "${r}" /usr/bin/env -i ${envArgs} /bin/sh -c ${q(`cd ${workdir} && ${cmd}`)}`,
            );
            break;
          }
          default:
            throw new Error(`Dockerfile line ${ins.line}: ${ins.op} is not emulated`);
        }
      }
      if (i === df.stages.length - 1) final = imageConfig(stage, o.buildArgs);
    });
    const last = df.stages.length - 1;
    const root = join(o.work, `stage-${last}`, "root");
    const r = `$W/stage-${last}/root`;
    // Volumes: mount points made while the root is still writable, then bound read-only.
    for (const [host, target] of Object.entries(o.volumes ?? {})) {
      lines.push(
        `mkdir -p "${r}"${q(target)}`,
        `mount --bind ${q(host)} "${r}"${q(target)}`,
        `mount -o remount,bind,ro "${r}"${q(target)}`,
      );
    }
    // `docker run --read-only --tmpfs /tmp`: everything read-only but a fresh, empty /tmp.
    lines.push(
      `mount -o remount,bind,ro "${r}"`,
      `for d in usr etc; do mount -o remount,ro "${r}/$d"; done`,
      `mount -o remount,bind,ro "${r}/dev"`,
      `mount -t tmpfs -o mode=1777,size=16m tmpfs "${r}/tmp"`,
      'echo "[image] READY" >&2',
      "exec sleep 86400",
    );
    const script = `${lines.join("\n")}\n`;
    mkdirSync(o.work, { recursive: true });
    const scriptFile = join(o.work, "build.sh");
    writeFileSync(scriptFile, script, { mode: 0o755 });
    const holder = new ManagedProcess({
      name: "image-build",
      command: "/usr/bin/unshare",
      args: ["--mount", "--propagation", "private", "/bin/bash", scriptFile],
      dir: o.work,
      graceMs: 2_000,
    });
    holder.start();
    await holder.waitForLog(/\[image\] READY/, 600_000, "the image built");
    return new EmulatedImage(holder, root, df.stages, final!, script);
  }

  /**
   * The argv that runs `args` in the container as the image would (`docker run image args...`): the ENTRYPOINT with
   * `args` (or CMD), as the image's USER (setpriv: no groups, no new privileges), with only the image's ENV.
   */
  argv(args: string[], opts: RunOptions = {}): string[] {
    const c = this.config;
    const [uid, gid] = (opts.user ?? c.user ?? "0:0").split(":");
    const env = Object.entries({ PATH: IMAGE_PATH, HOME: "/", ...c.env, ...opts.env }).map(([k, v]) => `${k}=${v}`);
    return [
      "/usr/bin/nsenter",
      `--mount=/proc/${this.holder.pid}/ns/mnt`,
      "--",
      "/usr/sbin/chroot",
      this.root,
      "/usr/bin/setpriv",
      `--reuid=${uid}`,
      `--regid=${gid ?? uid}`,
      "--clear-groups",
      "--no-new-privs",
      "--",
      "/usr/bin/env",
      "-i",
      ...env,
      "/bin/sh",
      "-c",
      `cd ${c.workdir} && exec "$@"`,
      "sh",
      ...(opts.entrypoint ?? c.entrypoint ?? []),
      ...(args.length ? args : (c.cmd ?? [])),
    ];
  }

  /** A long-running command in the container, as a ManagedProcess (not started). */
  process(name: string, args: string[], opts: RunOptions = {}): ManagedProcess {
    const [command, ...rest] = this.argv(args, opts);
    return new ManagedProcess({ name, command: command!, args: rest });
  }

  /** A path of the final root as seen from this machine (only through the holder's namespace for mounts). */
  hostPath(p: string): string {
    return join(this.root, p);
  }

  exists(p: string): boolean {
    return existsSync(this.hostPath(p));
  }

  async close(): Promise<void> {
    await this.holder.close();
  }
}
