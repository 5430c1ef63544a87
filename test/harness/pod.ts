/**
 * A pod the Helm chart rendered, run with the real Docker engine as the kubelet would run it (there is no cluster
 * here, but there is an engine, and the kubelet's job for one pod is mostly `docker run`):
 *
 * - Network: one network namespace per pod, held by a pause container (the busybox base running `sleep infinity`,
 *   uid 65535 like Kubernetes' pause) on a labelled Docker network of this test run; every container of the pod
 *   runs with `--network container:<pause>`. The pod's IP is the pause container's address. Rendered ports and
 *   listen addresses are used as they are: 127.0.0.1 is the pod's own loopback.
 * - Volumes, at their rendered mountPaths with no path rewriting: ConfigMap and Secret keys as files on the host
 *   (mode defaultMode; with fsGroup, group fsGroup and mode | 0440, as kubernetes pkg/volume/volume_linux.go
 *   SetVolumeOwnership does), bind-mounted read-only (the kubelet mounts both read-only whatever readOnly says);
 *   emptyDir as a 0777 host directory, or for medium Memory a labelled tmpfs volume (shared by the pod's containers,
 *   size sizeLimit); hostPath as the host path, mountPropagation HostToContainer as rslave where the host mount
 *   allows it (see `notes`).
 * - securityContext (container fields over the pod's): `--user runAsUser:runAsGroup`, `--group-add fsGroup`,
 *   `--read-only` for readOnlyRootFilesystem, `--cap-drop`/`--cap-add`, `--security-opt no-new-privileges` when
 *   allowPrivilegeEscalation is false; seccomp RuntimeDefault is the engine's default profile (no option: the
 *   engine applies it to every container not given another); runAsNonRoot refuses uid 0 as the kubelet does.
 * - resources: limits.memory -> `--memory` (and the same `--memory-swap`: the kubelet runs without swap),
 *   limits.cpu -> `--cpus`, requests.cpu -> `--cpu-shares` (the kubelet's milliCPU * 1024 / 1000). requests.memory
 *   only steers scheduling; there is no scheduler here.
 * - command/args/env as rendered: `$(VAR)` expanded as the kubelet does (fieldRef spec.nodeName is the pod's node
 *   name); a container's `command` replaces the image's ENTRYPOINT (`--entrypoint` + the rest as arguments), its
 *   `args` the image's CMD.
 * - Probes as the kubelet runs them: exec through `docker exec` as the container's user, httpGet from the host to
 *   the pod IP and port; first after initialDelaySeconds, then every periodSeconds, each bounded by timeoutSeconds;
 *   a liveness probe failing failureThreshold times in a row is a restart the kubelet would have made (an error).
 * - initContainers: run one after the other to completion before the containers (`runInitContainers`), each with
 *   the same mapping; one exiting non-zero is an error (the kubelet would restart it and never start the pod).
 * - persistentVolumeClaim: the host directory `claims` maps the claim to (it outlives the pod: a new pod with the
 *   same map gets the same files, as a rescheduled pod gets its bound volume), owned root:fsGroup with mode 2775 as
 *   the kubelet's SetVolumeOwnership leaves a volume that supports ownership management.
 * - hostNetwork / hostPID: the pause container, and so every container, runs in this machine's network namespace
 *   (`--network host`; the pod's IP is then 127.0.0.1) and with hostPID in its process namespace (`--pid host`).
 * - Images: `images` maps each rendered image to a local tag (no registry is reachable here).
 */
import { chmodSync, chownSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  Container as Docker,
  baseImage,
  busyboxImage,
  docker,
  dockerOk,
  labelArgs,
  labelledRemovals,
  RUN_ID,
} from "./docker.js";
import { removeDir, tempDir } from "./process.js";

/* The parts of the Kubernetes API this reads (a real API server judges the rendered objects: kube.test.ts). */
export interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { fieldRef?: { fieldPath: string } };
}
export interface Probe {
  exec?: { command: string[] };
  httpGet?: { path: string; port: number | string; scheme?: string };
  initialDelaySeconds?: number;
  periodSeconds?: number;
  timeoutSeconds?: number;
  failureThreshold?: number;
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
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean; mountPropagation?: string }[];
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  securityContext?: SecurityContext;
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
}
export interface Volume {
  name: string;
  configMap?: { name: string; defaultMode?: number };
  secret?: { secretName: string; defaultMode?: number };
  emptyDir?: { medium?: string; sizeLimit?: string };
  hostPath?: { path: string };
  persistentVolumeClaim?: { claimName: string };
}
export interface PodSpec {
  containers: Container[];
  initContainers?: Container[];
  volumes?: Volume[];
  securityContext?: SecurityContext;
  hostNetwork?: boolean;
  hostPID?: boolean;
  automountServiceAccountToken?: boolean;
  serviceAccountName?: string;
}

/** The local image tag a rendered image runs as here (undefined: none). */
export type ImageMap = (image: string) => string | undefined;

export interface PodOptions {
  name: string;
  spec: PodSpec;
  /** Rendered ConfigMaps by name: key -> content. */
  configMaps: Record<string, Record<string, string>>;
  /** The Secrets the pod mounts (the test makes them), by name: key -> content. */
  secrets: Record<string, Record<string, string>>;
  nodeName?: string;
  images: ImageMap;
  /** The pod's security context when the spec has none (a Prometheus Operator sets its own). */
  podSecurityContext?: SecurityContext;
  /** PersistentVolumeClaims by name: the host directory holding each claim's volume (made if missing). */
  claims?: Record<string, string>;
}

/** A Kubernetes quantity ("1Mi", "128Mi", "1Gi", "500m" for CPU) as a number (bytes, or cores). */
export function quantity(q: string): number {
  const m = /^([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T|m)?$/.exec(q);
  if (!m) throw new Error(`quantity ${q} is not one this harness reads`);
  const mult: Record<string, number> = {
    Ki: 1024,
    Mi: 1024 ** 2,
    Gi: 1024 ** 3,
    Ti: 1024 ** 4,
    k: 1e3,
    M: 1e6,
    G: 1e9,
    T: 1e12,
    m: 1e-3,
  };
  return Number(m[1]) * (m[2] ? mult[m[2]]! : 1);
}

/**
 * The Docker network every pod of this test run is on (one per run, labelled, from the engine's default pool),
 * looked up (made when missing) once and shared by the pods; looked up again after a removal of labelled objects
 * (removeLabelled() between two describe blocks of one file removes it), or when the last attempt failed.
 */
let network: { promise: Promise<string>; removals: number } | undefined;
export function podNetwork(): Promise<string> {
  if (network?.removals === labelledRemovals()) return network.promise;
  const name = `scrapez-pods-${RUN_ID}`;
  const promise = (async () => {
    if ((await docker(["network", "inspect", name])).code !== 0) {
      await dockerOk(["network", "create", ...labelArgs(), name]);
    }
    return name;
  })();
  const mine = { promise, removals: labelledRemovals() };
  network = mine;
  promise.catch(() => {
    if (network === mine) network = undefined;
  });
  return promise;
}

/** Propagation of the mount that holds `path` on this machine (shared, master = slave, or private). */
function propagationOf(path: string): "shared" | "slave" | "private" {
  let best = { point: "", opt: "" };
  for (const line of readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
    const f = line.split(" ");
    const point = f[4];
    if (!point || !(path === point || path.startsWith(point.endsWith("/") ? point : `${point}/`))) continue;
    if (point.length >= best.point.length) best = { point, opt: f.slice(6, f.indexOf("-")).join(" ") };
  }
  return /shared:/.test(best.opt) ? "shared" : /master:/.test(best.opt) ? "slave" : "private";
}

const EXPAND = /\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g;
const expandWith = (env: Record<string, string>) => (s: string) =>
  s.replace(EXPAND, (m, name?: string) => (m === "$$" ? "$" : name !== undefined && name in env ? env[name]! : m));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** What a probe attempt found. */
export interface ProbeResult {
  ok: boolean;
  detail: string;
}

export class RenderedPod {
  readonly dir: string;
  /** What of this pod could not be run as rendered, one line each (the test prints them). */
  readonly notes: string[] = [];
  readonly containers = new Map<string, Docker>();
  readonly #started = new Map<string, number>();
  /** Volume name -> the `--mount` value without its destination and read-only flag. */
  readonly #volumes = new Map<string, { source: string; kind: "bind" | "volume"; alwaysReadOnly: boolean }>();
  readonly #dockerVolumes: string[] = [];
  readonly #sc: SecurityContext;
  readonly #prefix: string;
  #pause?: Docker;
  #debug?: Promise<Docker>;
  #ip = "";

  private constructor(readonly opts: PodOptions) {
    this.dir = tempDir(`pod-${opts.name}`);
    chmodSync(this.dir, 0o755);
    this.#sc = opts.spec.securityContext ?? opts.podSecurityContext ?? {};
    this.#prefix = `scrapez-test-${RUN_ID}-${opts.name}`;
  }

  /** Materializes the volumes and starts the pod's pause container (its network namespace). */
  static async create(opts: PodOptions): Promise<RenderedPod> {
    const pod = new RenderedPod(opts);
    await pod.#materialize();
    const host = opts.spec.hostNetwork === true;
    const net = host ? "host" : await podNetwork();
    pod.#pause = await Docker.run(
      `${pod.#prefix}-pause`,
      [
        ...["--network", net, ...(host ? [] : ["--hostname", opts.name]), "--user", "65535:65535", "--read-only"],
        ...(opts.spec.hostPID ? ["--pid", "host"] : []),
        // The pause container holds the pod's tmpfs volumes mounted: the engine unmounts (and empties) a tmpfs
        // volume when no container uses it, and an emptyDir outlives the containers of its pod (an init container's
        // files are there for the next ones).
        ...pod.#dockerVolumes.flatMap((v) => ["--mount", `type=volume,src=${v},dst=/pod-volumes/${v},volume-nocopy`]),
        ...["--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--entrypoint", "sleep"],
      ],
      busyboxImage(),
      ["infinity"],
    );
    pod.#ip = host ? "127.0.0.1" : await pod.#pause.ip(net);
    return pod;
  }

  /** The pod's IP: its pause container's address on the pod network (reachable from this host). */
  get ip(): string {
    return this.#ip;
  }

  container(name: string): Container {
    const all = [...this.opts.spec.containers, ...(this.opts.spec.initContainers ?? [])];
    const c = all.find((x) => x.name === name);
    if (!c) throw new Error(`pod ${this.opts.name} has no container ${name}`);
    return c;
  }

  async #materialize(): Promise<void> {
    const fsGroup = this.#sc.fsGroup;
    for (const v of this.opts.spec.volumes ?? []) {
      if (v.hostPath) {
        this.#volumes.set(v.name, { source: v.hostPath.path, kind: "bind", alwaysReadOnly: false });
        continue;
      }
      if (v.persistentVolumeClaim) {
        const claim = v.persistentVolumeClaim.claimName;
        const d = this.opts.claims?.[claim];
        if (!d)
          throw new Error(`pod ${this.opts.name}: volume ${v.name} needs claim ${claim}, which the test did not map`);
        mkdirSync(d, { recursive: true });
        if (fsGroup !== undefined) {
          chownSync(d, 0, fsGroup);
          chmodSync(d, 0o2775);
        }
        this.#volumes.set(v.name, { source: d, kind: "bind", alwaysReadOnly: false });
        continue;
      }
      if (v.emptyDir?.medium === "Memory") {
        // A tmpfs the pod's containers share (`--tmpfs` would give each container its own).
        const name = `${this.#prefix}-${v.name}`;
        const size = v.emptyDir.sizeLimit ? `size=${quantity(v.emptyDir.sizeLimit)},` : "";
        await dockerOk([
          ...["volume", "create", ...labelArgs(), "--driver", "local", "--opt", "type=tmpfs"],
          ...["--opt", "device=tmpfs", "--opt", `o=${size}mode=0777`, name],
        ]);
        this.#dockerVolumes.push(name);
        this.#volumes.set(v.name, { source: name, kind: "volume", alwaysReadOnly: false });
        continue;
      }
      const d = join(this.dir, "volumes", v.name);
      mkdirSync(d, { recursive: true, mode: 0o755 });
      chmodSync(d, v.emptyDir ? 0o777 : 0o755); // the kubelet makes emptyDirs world-writable
      this.#volumes.set(v.name, { source: d, kind: "bind", alwaysReadOnly: !v.emptyDir });
      if (v.emptyDir) continue;
      if (!v.configMap && !v.secret) throw new Error(`pod ${this.opts.name}: volume ${v.name}: kind not mapped`);
      const files = v.configMap ? this.opts.configMaps[v.configMap.name] : this.opts.secrets[v.secret!.secretName];
      if (!files) {
        throw new Error(
          `pod ${this.opts.name}: volume ${v.name} needs ${v.configMap ? "ConfigMap" : "Secret"} ` +
            `${v.configMap?.name ?? v.secret?.secretName}, which the test did not provide`,
        );
      }
      const mode = (v.configMap?.defaultMode ?? v.secret?.defaultMode ?? 0o644) | (fsGroup !== undefined ? 0o440 : 0);
      for (const [k, content] of Object.entries(files)) {
        const f = join(d, k);
        writeFileSync(f, content);
        if (fsGroup !== undefined) chownSync(f, 0, fsGroup);
        chmodSync(f, mode);
      }
    }
  }

  /** The container's env, `$(VAR)` expanded in order as the kubelet does. */
  env(c: Container): Record<string, string> {
    const env: Record<string, string> = {};
    for (const e of c.env ?? []) {
      if (e.value !== undefined) env[e.name] = expandWith(env)(e.value);
      else if (e.valueFrom?.fieldRef?.fieldPath === "spec.nodeName") env[e.name] = this.opts.nodeName ?? "node";
      else throw new Error(`pod ${this.opts.name}: env ${e.name}: only value and fieldRef spec.nodeName are mapped`);
    }
    return env;
  }

  /** uid:gid of a container (its securityContext over the pod's); runAsNonRoot refuses root as the kubelet does. */
  user(c: Container): string {
    const sc = { ...this.#sc, ...c.securityContext };
    const uid = sc.runAsUser;
    if (uid === undefined)
      throw new Error(`pod ${this.opts.name}: ${c.name} has no runAsUser (the image's is not read)`);
    if (sc.runAsNonRoot && uid === 0) throw new Error(`pod ${this.opts.name}: ${c.name}: runAsNonRoot with uid 0`);
    return `${uid}:${sc.runAsGroup ?? 0}`;
  }

  /** The `docker run` options of a container: user, security, resources, mounts, env. */
  runArgs(c: Container): string[] {
    const sc = { ...this.#sc, ...c.securityContext };
    const args = ["--network", `container:${this.#pause!.id}`, "--user", this.user(c)];
    if (this.opts.spec.hostPID) args.push("--pid", "host");
    if (this.#sc.fsGroup !== undefined) args.push("--group-add", String(this.#sc.fsGroup));
    if (c.securityContext?.readOnlyRootFilesystem) args.push("--read-only");
    for (const cap of c.securityContext?.capabilities?.drop ?? []) args.push("--cap-drop", cap);
    for (const cap of c.securityContext?.capabilities?.add ?? []) args.push("--cap-add", cap);
    if (c.securityContext?.allowPrivilegeEscalation === false) args.push("--security-opt", "no-new-privileges");
    const seccomp = sc.seccompProfile?.type;
    if (seccomp === "Unconfined") args.push("--security-opt", "seccomp=unconfined");
    else if (seccomp !== undefined && seccomp !== "RuntimeDefault") {
      throw new Error(`pod ${this.opts.name}: ${c.name}: seccomp ${seccomp} is not mapped`);
    }
    const lim = c.resources?.limits ?? {};
    const req = c.resources?.requests ?? {};
    if (lim.memory) args.push("--memory", `${quantity(lim.memory)}b`, "--memory-swap", `${quantity(lim.memory)}b`);
    if (lim.cpu) args.push("--cpus", String(quantity(lim.cpu)));
    if (req.cpu) args.push("--cpu-shares", String(Math.max(2, Math.round(quantity(req.cpu) * 1024))));
    for (const m of c.volumeMounts ?? []) {
      const v = this.#volumes.get(m.name);
      if (!v) throw new Error(`pod ${this.opts.name}: container ${c.name} mounts unknown volume ${m.name}`);
      let spec = `type=${v.kind},src=${v.source},dst=${m.mountPath}`;
      if (v.kind === "volume") spec += ",volume-nocopy";
      if (m.readOnly || v.alwaysReadOnly) spec += ",readonly";
      if (m.mountPropagation === "HostToContainer") {
        if (propagationOf(v.source) !== "private") spec += ",bind-propagation=rslave";
        else {
          this.notes.push(
            `${c.name}: ${m.mountPath}: mountPropagation HostToContainer not applied (${v.source} is a private ` +
              "mount on this machine: the engine refuses rslave on it); mounted with the default rprivate",
          );
        }
      } else if (m.mountPropagation && m.mountPropagation !== "None") {
        throw new Error(`pod ${this.opts.name}: ${c.name}: mountPropagation ${m.mountPropagation} is not mapped`);
      }
      args.push("--mount", spec);
    }
    for (const [k, v] of Object.entries(this.env(c))) args.push("--env", `${k}=${v}`);
    return args;
  }

  /** Starts a container: its command as --entrypoint (the image's ENTRYPOINT otherwise), its args. */
  async start(name: string): Promise<Docker> {
    const c = this.container(name);
    const image = this.opts.images(c.image);
    if (!image) throw new Error(`pod ${this.opts.name}: no local image for ${c.image}`);
    const expand = expandWith(this.env(c));
    const command = (c.command ?? []).map(expand);
    const args = (c.args ?? []).map(expand);
    const entry = command.length ? ["--entrypoint", command[0]!] : [];
    const d = await Docker.run(`${this.#prefix}-${name}`, [...this.runArgs(c), ...entry], image, [
      ...command.slice(1),
      ...args,
    ]);
    this.containers.set(name, d);
    this.#started.set(name, Date.now());
    return d;
  }

  /**
   * Runs the pod's initContainers in order, each to completion (as the kubelet does before it starts the
   * containers); their exit codes and output. One exiting non-zero throws: the pod would never start.
   */
  async runInitContainers(timeoutMs = 120_000): Promise<{ name: string; code: number; logs: string }[]> {
    const out: { name: string; code: number; logs: string }[] = [];
    for (const c of this.opts.spec.initContainers ?? []) {
      const d = await this.start(c.name);
      const r = await docker(["wait", d.id], { timeoutMs });
      const code = Number(r.stdout.trim());
      const logs = (await d.logs()).trim();
      out.push({ name: c.name, code, logs });
      if (r.code !== 0 || code !== 0) {
        throw new Error(
          `pod ${this.opts.name}: init container ${c.name} exited ${r.stdout.trim() || r.stderr}:\n${logs}`,
        );
      }
    }
    return out;
  }

  #docker(name: string): Docker {
    const d = this.containers.get(name);
    if (!d) throw new Error(`pod ${this.opts.name}: container ${name} was not started`);
    return d;
  }

  /** Runs a command in the container as its user (`$(VAR)` expanded); its exit code and output. */
  async exec(name: string, cmd: string[], timeoutMs = 30_000): Promise<{ code: number; out: string }> {
    const c = this.container(name);
    const r = await this.#docker(name).exec(cmd.map(expandWith(this.env(c))), { user: this.user(c), timeoutMs });
    return { code: r.code, out: `${r.stdout}${r.stderr}`.trim() };
  }

  /** One attempt of a probe, as the kubelet makes it (timeoutSeconds, default 1). */
  async probe(name: string, kind: "readinessProbe" | "livenessProbe"): Promise<ProbeResult> {
    const c = this.container(name);
    const p = c[kind];
    if (!p) throw new Error(`${this.opts.name}/${name} has no ${kind}`);
    const timeoutMs = (p.timeoutSeconds ?? 1) * 1000;
    if (p.exec) {
      // The timeout bounds the command; `docker exec` itself (client, API, runc) gets 2 s more on this loaded host.
      const r = await this.exec(name, p.exec.command, timeoutMs + 2_000);
      return { ok: r.code === 0, detail: `exit ${r.code}: ${r.out}` };
    }
    const g = p.httpGet!;
    const port = typeof g.port === "number" ? g.port : c.ports?.find((x) => x.name === g.port)?.containerPort;
    if (port === undefined) throw new Error(`${this.opts.name}/${name}: probe port ${g.port} is not declared`);
    const url = `${(g.scheme ?? "HTTP").toLowerCase()}://${this.ip}:${port}${g.path}`;
    try {
      const r = await fetch(url, {
        headers: { "user-agent": "kube-probe/1.31", accept: "*/*" },
        signal: AbortSignal.timeout(timeoutMs),
      });
      return { ok: r.status >= 200 && r.status < 400, detail: `${url}: ${r.status} ${(await r.text()).trim()}` };
    } catch (err) {
      return { ok: false, detail: `${url}: ${(err as Error).message}` };
    }
  }

  /**
   * A probe on the kubelet's schedule until it succeeds: first initialDelaySeconds after the container started,
   * then every periodSeconds (default 10). Fails after deadlineMs, or for a liveness probe at failureThreshold
   * (default 3) failures in a row: the kubelet would have restarted the container.
   */
  async probeUntilOk(
    name: string,
    kind: "readinessProbe" | "livenessProbe",
    deadlineMs = 120_000,
  ): Promise<{ attempts: number; ms: number; detail: string }> {
    const p = this.container(name)[kind];
    if (!p) throw new Error(`${this.opts.name}/${name} has no ${kind}`);
    const started = this.#started.get(name);
    if (started === undefined) throw new Error(`pod ${this.opts.name}: container ${name} was not started`);
    const deadline = Date.now() + deadlineMs;
    const first = started + (p.initialDelaySeconds ?? 0) * 1000;
    if (first > Date.now()) await sleep(first - Date.now());
    let failures = 0;
    for (let attempts = 1; ; attempts++) {
      const r = await this.probe(name, kind);
      if (r.ok) return { attempts, ms: Date.now() - started, detail: r.detail };
      failures++;
      const where = `${this.opts.name}/${name} ${kind}`;
      if (kind === "livenessProbe" && failures >= (p.failureThreshold ?? 3)) {
        throw new Error(
          `${where} failed ${failures} times in a row (the kubelet restarts it): ${r.detail}\n` + (await this.logs()),
        );
      }
      if (Date.now() + (p.periodSeconds ?? 10) * 1000 > deadline) {
        throw new Error(`${where} not ok after ${attempts} attempts: ${r.detail}\n${await this.logs()}`);
      }
      await sleep((p.periodSeconds ?? 10) * 1000);
    }
  }

  /**
   * The pod's debug container, made at its first in-pod request: node (the Debian base) in the pod's network
   * namespace, as `kubectl debug` adds an ephemeral container. The pause container's busybox base has no node.
   */
  #debugContainer(): Promise<Docker> {
    this.#debug ??= Docker.run(
      `${this.#prefix}-debug`,
      [
        ...["--network", `container:${this.#pause!.id}`, "--user", "65535:65535", "--read-only"],
        ...["--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--entrypoint", "sleep"],
      ],
      baseImage(),
      ["infinity"],
    );
    return this.#debug;
  }

  /**
   * An HTTP GET from inside the pod's network namespace (node in its debug container, like `kubectl debug`), to
   * reach what listens on the pod's loopback; through an absolute-form proxy (as Prometheus's proxy_url) if given.
   */
  async request(
    url: string,
    opts: { proxy?: string; headers?: Record<string, string> } = {},
  ): Promise<{ status: number; body: string }> {
    const script = `
      const http = require("node:http");
      const [url, proxy, headers] = process.argv.slice(1);
      const u = new URL(proxy || url);
      const req = http.get({ host: u.hostname, port: u.port, path: proxy ? url : u.pathname + u.search,
        headers: JSON.parse(headers), timeout: 30000 }, (res) => {
        let body = ""; res.setEncoding("utf8"); res.on("data", (d) => (body += d));
        res.on("end", () => process.stdout.write(JSON.stringify({ status: res.statusCode, body })));
      });
      req.on("timeout", () => req.destroy(new Error("timeout")));
      req.on("error", (e) => process.stdout.write(JSON.stringify({ error: e.code || e.message })));`;
    const debug = await this.#debugContainer();
    const r = await debug.exec(["node", "-e", script, url, opts.proxy ?? "", JSON.stringify(opts.headers ?? {})], {
      timeoutMs: 45_000,
    });
    let out: { status?: number; body?: string; error?: string };
    try {
      out = JSON.parse(r.stdout) as typeof out;
    } catch {
      throw new Error(`in-pod request ${url} in ${this.opts.name}: exit ${r.code}: ${r.stdout}${r.stderr}`);
    }
    if (out.error !== undefined) throw new Error(`in-pod request ${url} in ${this.opts.name}: ${out.error}`);
    return { status: out.status!, body: out.body! };
  }

  async logs(tail = 60): Promise<string> {
    const parts = await Promise.all(
      [...this.containers].map(async ([n, d]) => `--- ${this.opts.name}/${n} ---\n${await d.logs(tail)}`),
    );
    return parts.join("\n");
  }

  /** Removes its containers (the pause last), its tmpfs volumes and host directories. */
  async close(): Promise<void> {
    await Promise.allSettled([...this.containers.values()].map((d) => d.remove()));
    await this.#debug?.then((d) => d.remove()).catch(() => undefined);
    await this.#pause?.remove();
    if (this.#dockerVolumes.length) await docker(["volume", "rm", ...this.#dockerVolumes]);
    removeDir(this.dir);
  }
}
