/**
 * A pod the Helm chart rendered, run as real processes on this machine (there is no cluster here): each container's
 * command, args and env as rendered, its volumes materialized as the kubelet would, its user as the securityContext
 * says. What a kubelet does and this cannot is mapped, always the same documented way:
 *
 * - Paths: each volume is materialized under the pod's dir (ConfigMap keys and Secret keys as files, emptyDir as an
 *   empty 0777 directory, hostPath as the host path itself), and every mountPath is rewritten to that place in the
 *   container's command, args, env values and probe commands, and inside the materialized ConfigMap files.
 * - Ports: a pod has its own loopback, this machine one. Every `127.0.0.1:<port>`, `localhost:<port>` and
 *   `0.0.0.0:<port>` in those same texts (and each containerPort) becomes `127.0.0.1:<a free port>`, one per pod port.
 * - Files' ownership: with fsGroup, the kubelet gives a Secret's or ConfigMap's files group fsGroup and adds group
 *   read (kubernetes pkg/volume/volume_linux.go, SetVolumeOwnership: mode | 0440 on read-only volumes); so does this.
 * - Users: each container runs as its runAsUser/runAsGroup with fsGroup as a supplementary group (setpriv), its
 *   working directory `/` and TMPDIR a directory it cannot write (what it may write is its emptyDirs).
 * - Images: the scrapez image runs `node dist/src/cli/main.js` for `scrapez`; an exporter image runs the Debian binary
 *   of the same program (`images`). Env `$(VAR)` references are expanded as the kubelet does; fieldRef spec.nodeName
 *   is the pod's node name.
 */
import { execFile } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { freePort } from "./ports.js";
import { ManagedProcess, removeDir, tempDir } from "./process.js";
import { cliPath } from "./scrapez.js";

/* The parts of the Kubernetes API this reads (tools/k8scheck has already decoded them strictly). */
export interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { fieldRef?: { fieldPath: string } };
}
export interface Probe {
  exec?: { command: string[] };
  httpGet?: { path: string; port: number | string; scheme?: string };
}
export interface SecurityContext {
  runAsUser?: number;
  runAsGroup?: number;
  runAsNonRoot?: boolean;
  readOnlyRootFilesystem?: boolean;
  allowPrivilegeEscalation?: boolean;
  capabilities?: { drop?: string[]; add?: string[] };
  fsGroup?: number;
  seccompProfile?: { type: string };
}
export interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: EnvVar[];
  ports?: { name?: string; containerPort: number; hostPort?: number }[];
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  securityContext?: SecurityContext;
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
}
export interface Volume {
  name: string;
  configMap?: { name: string; defaultMode?: number };
  secret?: { secretName: string; defaultMode?: number };
  emptyDir?: object;
  hostPath?: { path: string };
}
export interface PodSpec {
  containers: Container[];
  volumes?: Volume[];
  securityContext?: SecurityContext;
  hostNetwork?: boolean;
  automountServiceAccountToken?: boolean;
}

/** How an image's entrypoint runs here: the executable and the arguments before the container's args. */
export type ImageRunner = (image: string) => string[] | undefined;

export interface PodOptions {
  name: string;
  spec: PodSpec;
  /** Rendered ConfigMaps by name: key -> content. */
  configMaps: Record<string, Record<string, string>>;
  /** The Secrets the pod mounts (the test makes them), by name: key -> content. */
  secrets: Record<string, Record<string, string>>;
  nodeName?: string;
  images: ImageRunner;
  /** The pod's security context when the spec has none (a Prometheus Operator sets its own). */
  podSecurityContext?: SecurityContext;
}

/** `scrapez` (the image's /usr/local/bin/scrapez) runs the CLI this checkout built. */
export function scrapezCommand(cmd: string[]): string[] {
  return cmd[0] === "scrapez" ? [process.execPath, cliPath, ...cmd.slice(1)] : cmd;
}

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

export class RenderedPod {
  readonly dir: string;
  /** Pod-local port -> the port on this machine's loopback. */
  readonly ports = new Map<number, number>();
  readonly procs = new Map<string, ManagedProcess>();
  readonly #mounts: [string, string][] = [];
  readonly #sc: SecurityContext;

  private constructor(readonly opts: PodOptions) {
    this.dir = tempDir(`pod-${opts.name}`);
    chmodSync(this.dir, 0o755);
    this.#sc = opts.spec.securityContext ?? opts.podSecurityContext ?? {};
  }

  /** Materializes the volumes and picks a port for each pod-local port. */
  static async create(opts: PodOptions): Promise<RenderedPod> {
    const pod = new RenderedPod(opts);
    await pod.#materialize();
    return pod;
  }

  container(name: string): Container {
    const c = this.opts.spec.containers.find((x) => x.name === name);
    if (!c) throw new Error(`pod ${this.opts.name} has no container ${name}`);
    return c;
  }

  /** The host port of a pod-local port. */
  port(podPort: number): number {
    const p = this.ports.get(podPort);
    if (p === undefined) throw new Error(`pod ${this.opts.name}: port ${podPort} is not one of its ports`);
    return p;
  }

  /** Paths and ports of this pod, as they are on this machine. */
  rewrite(text: string): string {
    let out = text;
    for (const [from, to] of this.#mounts) {
      out = out.replace(new RegExp(`(?<![\\w.-])${escape(from)}(?=/|$|[^\\w.-])`, "gm"), to);
    }
    return out.replace(/\b(127\.0\.0\.1|localhost|0\.0\.0\.0):(\d{2,5})\b/g, (m, _h, p: string) => {
      const mapped = this.ports.get(Number(p));
      return mapped === undefined ? m : `127.0.0.1:${mapped}`;
    });
  }

  async #materialize(): Promise<void> {
    const { spec } = this.opts;
    const fsGroup = this.#sc.fsGroup;
    const texts: string[] = [];
    for (const c of spec.containers) {
      texts.push(...(c.command ?? []), ...(c.args ?? []), ...(c.env ?? []).map((e) => e.value ?? ""));
      for (const p of [c.readinessProbe, c.livenessProbe]) texts.push(...(p?.exec?.command ?? []));
      for (const p of c.ports ?? []) this.ports.set(p.containerPort, 0);
    }
    const where = new Map<string, string>();
    for (const v of spec.volumes ?? []) {
      const d = join(this.dir, "volumes", v.name);
      if (v.hostPath) {
        where.set(v.name, v.hostPath.path);
        continue;
      }
      mkdirSync(d, { recursive: true, mode: 0o755 });
      chmodSync(d, v.emptyDir ? 0o777 : 0o755); // the kubelet makes emptyDirs world-writable
      where.set(v.name, d);
      const files = v.configMap
        ? this.opts.configMaps[v.configMap.name]
        : v.secret
          ? this.opts.secrets[v.secret.secretName]
          : undefined;
      if ((v.configMap || v.secret) && !files) {
        throw new Error(
          `pod ${this.opts.name}: volume ${v.name} needs ${v.configMap ? "ConfigMap" : "Secret"} ` +
            `${v.configMap?.name ?? v.secret?.secretName}, which the test did not provide`,
        );
      }
      if (v.configMap) texts.push(...Object.values(files!));
    }
    // Ports first (from every text of the pod), then the mount table, then the files (rewritten).
    for (const t of texts)
      for (const m of t.matchAll(/\b(?:127\.0\.0\.1|localhost|0\.0\.0\.0):(\d{2,5})\b/g))
        this.ports.set(Number(m[1]), 0);
    for (const p of [...this.ports.keys()]) this.ports.set(p, await freePort());
    const mounts = new Map<string, string>();
    for (const c of spec.containers) {
      for (const m of c.volumeMounts ?? []) {
        const to = where.get(m.name);
        if (!to) throw new Error(`pod ${this.opts.name}: container ${c.name} mounts unknown volume ${m.name}`);
        const prev = mounts.get(m.mountPath);
        if (prev !== undefined && prev !== to) {
          throw new Error(`pod ${this.opts.name}: ${m.mountPath} is two volumes in two containers; map per container`);
        }
        mounts.set(m.mountPath, to);
      }
    }
    this.#mounts.push(...[...mounts].sort((a, b) => b[0].length - a[0].length));
    for (const v of spec.volumes ?? []) {
      if (!v.configMap && !v.secret) continue;
      const d = where.get(v.name)!;
      const files = v.configMap ? this.opts.configMaps[v.configMap.name]! : this.opts.secrets[v.secret!.secretName]!;
      const mode = (v.configMap?.defaultMode ?? v.secret?.defaultMode ?? 0o644) | (fsGroup !== undefined ? 0o440 : 0);
      for (const [k, content] of Object.entries(files)) {
        const f = join(d, k);
        writeFileSync(f, v.configMap ? this.rewrite(content) : content);
        if (fsGroup !== undefined) chownSync(f, 0, fsGroup);
        chmodSync(f, mode);
      }
    }
    mkdirSync(join(this.dir, "readonly-tmp"), { mode: 0o555 });
  }

  /** The container's env, `$(VAR)` expanded in order as the kubelet does, paths and ports rewritten. */
  env(c: Container): Record<string, string> {
    const env: Record<string, string> = {};
    const expand = (s: string) =>
      s.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, name?: string) =>
        m === "$$" ? "$" : name !== undefined && name in env ? env[name]! : m,
      );
    for (const e of c.env ?? []) {
      if (e.value !== undefined) env[e.name] = this.rewrite(expand(e.value));
      else if (e.valueFrom?.fieldRef?.fieldPath === "spec.nodeName") env[e.name] = this.opts.nodeName ?? "node";
      else throw new Error(`pod ${this.opts.name}: env ${e.name}: only value and fieldRef spec.nodeName are mapped`);
    }
    return env;
  }

  #user(c: Container): { uid: number; gid: number; groups: number[] } {
    const uid = c.securityContext?.runAsUser ?? this.#sc.runAsUser;
    const gid = c.securityContext?.runAsGroup ?? this.#sc.runAsGroup ?? uid;
    if (uid === undefined || gid === undefined) throw new Error(`pod ${this.opts.name}: ${c.name} has no numeric user`);
    const fsGroup = this.#sc.fsGroup;
    return { uid, gid, groups: fsGroup !== undefined ? [fsGroup] : [gid] };
  }

  /** The argv of a command in the container (`$(VAR)` in it expanded), paths and ports rewritten. */
  argv(c: Container, cmd: string[]): string[] {
    const env = this.env(c);
    const expanded = cmd.map((a) => a.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, n: string) => env[n] ?? m));
    return scrapezCommand(expanded.map((a) => this.rewrite(a)));
  }

  /** Starts a container: the image's entrypoint (or its command) with its args. */
  start(name: string): ManagedProcess {
    const c = this.container(name);
    let cmd = c.command ?? this.opts.images(c.image);
    if (!cmd) throw new Error(`pod ${this.opts.name}: no way to run image ${c.image} here`);
    cmd = [...cmd, ...(c.args ?? [])];
    const [command, ...args] = this.argv(c, cmd);
    const p = new ManagedProcess({
      name: `${this.opts.name}/${name}`,
      command: command!,
      args,
      env: this.env(c),
      cwd: "/",
      dir: join(this.dir, "readonly-tmp"),
      user: this.#user(c),
    });
    this.procs.set(name, p);
    return p.start();
  }

  /** Runs an exec probe's command in the container (its user and env); resolves to its exit code and output. */
  exec(name: string, cmd: string[]): Promise<{ code: number; out: string }> {
    const c = this.container(name);
    const [command, ...args] = this.argv(c, cmd);
    const u = this.#user(c);
    return new Promise((resolve) => {
      execFile(
        "setpriv",
        [`--reuid=${u.uid}`, `--regid=${u.gid}`, `--groups=${u.groups.join(",")}`, "--", command!, ...args],
        { cwd: "/", env: { ...process.env, ...this.env(c), TMPDIR: join(this.dir, "readonly-tmp") }, timeout: 30_000 },
        (err, stdout, stderr) => {
          const code = err ? (typeof err.code === "number" ? err.code : -1) : 0;
          resolve({ code, out: `${stdout}${stderr}`.trim() });
        },
      );
    });
  }

  /** Runs a probe as the kubelet would: exec, or httpGet on the container's (mapped) port. */
  async probe(name: string, kind: "readinessProbe" | "livenessProbe"): Promise<{ ok: boolean; detail: string }> {
    const c = this.container(name);
    const p = c[kind];
    if (!p) throw new Error(`${this.opts.name}/${name} has no ${kind}`);
    if (p.exec) {
      const r = await this.exec(name, p.exec.command);
      return { ok: r.code === 0, detail: `exit ${r.code}: ${r.out}` };
    }
    const g = p.httpGet!;
    const podPort = typeof g.port === "number" ? g.port : c.ports?.find((x) => x.name === g.port)?.containerPort;
    if (podPort === undefined) throw new Error(`${this.opts.name}/${name}: probe port ${g.port} is not declared`);
    const url = `${(g.scheme ?? "HTTP").toLowerCase()}://127.0.0.1:${this.port(podPort)}${g.path}`;
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(10_000) });
      return { ok: r.status >= 200 && r.status < 400, detail: `${url}: ${r.status} ${(await r.text()).trim()}` };
    } catch (err) {
      return { ok: false, detail: `${url}: ${(err as Error).message}` };
    }
  }

  logs(): string {
    return [...this.procs].map(([n, p]) => `--- ${this.opts.name}/${n} ---\n${p.logTail(8192)}`).join("\n");
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.procs.values()].map((p) => p.close()));
    removeDir(this.dir);
  }
}
