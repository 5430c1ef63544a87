/**
 * A real Kubernetes API server for the chart tests: etcd (Debian's etcd-server) and kube-apiserver (built from
 * k8s.io/kubernetes by scripts/setup.sh), each a ManagedProcess on loopback ports chosen at run time, ready once
 * etcd's /health and the API server's /readyz say so. No controller-manager, scheduler or kubelet: objects are stored,
 * defaulted, validated and admitted, but nothing acts on them (no pods are made from a Deployment, no namespace is
 * ever finalized). The store is thrown away with the temp dirs.
 *
 * The API server runs with RBAC, a static token (user admin in system:masters), a fresh service-account key and the
 * serving certificate it generates itself in its cert dir (a self-signed CA and a cert for 127.0.0.1, which the client
 * here and the written kubeconfig trust). `kubeconfig` is for helm and kubectl (--kubeconfig); the small REST client
 * (apply, create, get, list) is for the tests, with the server's own discovery mapping kinds to resources.
 */
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import https from "node:https";
import { join } from "node:path";
import YAML from "yaml";
import { etcdBin, kubeApiServerBin, operatorCrdsDir } from "./binaries.js";
import { freePort, waitUntil } from "./ports.js";
import { ManagedProcess, tempDir } from "./process.js";

/** The service range of the API server (it allocates ClusterIPs from it): in 198.18.0.0/15, like all test addresses. */
const SERVICE_CIDR = "198.18.128.0/20";

/** Starts a process that listens on ports chosen now; on an "address already in use" exit, tries again with new ones. */
async function startOnFreshPorts<T>(attempt: () => Promise<T>, tries = 3): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await attempt();
    } catch (err) {
      // Another process took a port between the check and the bind: again, with new ports.
      if (i >= tries || !/address already in use/i.test((err as Error).message)) throw err;
    }
  }
}

/** etcd v3 with one member, listening on loopback only; its data dir is its own temp dir. */
export class Etcd {
  readonly proc: ManagedProcess;
  readonly clientUrl: string;

  private constructor(proc: ManagedProcess, clientUrl: string) {
    this.proc = proc;
    this.clientUrl = clientUrl;
  }

  static async start(): Promise<Etcd> {
    return startOnFreshPorts(async () => {
      const [client, peer] = [await freePort(), await freePort()];
      const clientUrl = `http://127.0.0.1:${client}`;
      const peerUrl = `http://127.0.0.1:${peer}`;
      const dir = tempDir("etcd");
      const proc = new ManagedProcess({
        name: "etcd",
        command: etcdBin(),
        args: [
          "--name=scrapez-test",
          `--data-dir=${join(dir, "data")}`,
          `--listen-client-urls=${clientUrl}`,
          `--advertise-client-urls=${clientUrl}`,
          `--listen-peer-urls=${peerUrl}`,
          `--initial-advertise-peer-urls=${peerUrl}`,
          `--initial-cluster=scrapez-test=${peerUrl}`,
        ],
        ownDir: dir,
      });
      const e = new Etcd(proc, clientUrl);
      try {
        proc.start();
        await proc.waitFor(
          async () => {
            const r = await fetch(`${clientUrl}/health`, { signal: AbortSignal.timeout(2_000) });
            return r.ok && ((await r.json()) as { health?: string }).health === "true";
          },
          60_000,
          "/health",
        );
      } catch (err) {
        await e.close();
        throw err;
      }
      return e;
    });
  }

  async close(): Promise<void> {
    await this.proc.close();
  }
}

/** A non-2xx answer of the API server: its Status object's message, reason and code. */
export class KubeError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
    readonly body: unknown,
  ) {
    super(message);
  }
}

/** An object as the API server gives it back (or as a test sends it). */
export type KubeObject = {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    uid?: string;
    resourceVersion?: string;
    managedFields?: unknown[];
  };
} & Record<string, unknown>;

/** The result of a write: the object the server made of it, and any warnings it sent (the Warning headers). */
export interface WriteResult {
  object: KubeObject;
  warnings: string[];
}

/** A CustomResourceDefinition the server serves: its Established condition is True. */
export function isEstablished(crd: KubeObject): boolean {
  const conditions = (crd.status as { conditions?: { type: string; status: string }[] } | undefined)?.conditions;
  return !!conditions?.some((c) => c.type === "Established" && c.status === "True");
}

interface ApiResource {
  name: string;
  namespaced: boolean;
  kind: string;
  verbs: string[];
}

export interface WriteOptions {
  /** dryRun=All: admitted and validated, never stored. */
  dryRun?: boolean;
  /** For namespaced kinds without metadata.namespace. */
  namespace?: string;
  /** Server-side apply's field manager; default "scrapez-test". */
  fieldManager?: string;
}

/** kube-apiserver on etcd; start() waits until /readyz answers ok. */
export class KubeApiServer {
  readonly etcd: Etcd;
  readonly proc: ManagedProcess;
  readonly port: number;
  readonly url: string;
  /** A kubeconfig for helm and kubectl: the server, its CA and the admin token. */
  readonly kubeconfig: string;
  /** How long etcd and then the API server took to become ready (ms): figures for the test output. */
  startMs: { etcd: number; apiServer: number };
  readonly #token: string;
  readonly #ca: Buffer;
  readonly #discovery = new Map<string, ApiResource[]>();

  private constructor(
    etcd: Etcd,
    proc: ManagedProcess,
    port: number,
    token: string,
    startMs: { etcd: number; apiServer: number },
  ) {
    this.etcd = etcd;
    this.proc = proc;
    this.port = port;
    this.url = `https://127.0.0.1:${port}`;
    this.#token = token;
    this.startMs = startMs;
    // The server wrote its self-signed CA and serving cert here before it listened.
    this.#ca = readFileSync(join(proc.dir, "certs", "apiserver.crt"));
    this.kubeconfig = join(proc.dir, "kubeconfig");
    writeFileSync(
      this.kubeconfig,
      YAML.stringify({
        apiVersion: "v1",
        kind: "Config",
        clusters: [
          { name: "test", cluster: { server: this.url, "certificate-authority-data": this.#ca.toString("base64") } },
        ],
        users: [{ name: "admin", user: { token } }],
        contexts: [{ name: "test", context: { cluster: "test", user: "admin" } }],
        "current-context": "test",
      }),
      { mode: 0o600 },
    );
  }

  static async start(): Promise<KubeApiServer> {
    const t0 = Date.now();
    const etcd = await Etcd.start();
    const etcdMs = Date.now() - t0;
    try {
      return await startOnFreshPorts(async () => {
        const t1 = Date.now();
        const port = await freePort();
        const dir = tempDir("kube-apiserver");
        const token = randomBytes(24).toString("hex");
        writeFileSync(join(dir, "tokens.csv"), `${token},admin,admin,system:masters\n`, { mode: 0o600 });
        // The service-account signing key (the server refuses to start without one).
        const { privateKey } = generateKeyPairSync("rsa", {
          modulusLength: 2048,
          privateKeyEncoding: { type: "pkcs1", format: "pem" },
          publicKeyEncoding: { type: "spki", format: "pem" },
        });
        writeFileSync(join(dir, "sa.key"), privateKey, { mode: 0o600 });
        const proc = new ManagedProcess({
          name: "kube-apiserver",
          command: kubeApiServerBin(),
          args: [
            `--etcd-servers=${etcd.clientUrl}`,
            `--secure-port=${port}`,
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            // No controller-manager reconciles the `kubernetes` Service's endpoints here.
            "--endpoint-reconciler-type=none",
            `--service-cluster-ip-range=${SERVICE_CIDR}`,
            "--service-account-issuer=https://kubernetes.default.svc",
            `--service-account-key-file=${join(dir, "sa.key")}`,
            `--service-account-signing-key-file=${join(dir, "sa.key")}`,
            `--cert-dir=${join(dir, "certs")}`,
            "--authorization-mode=RBAC",
            `--token-auth-file=${join(dir, "tokens.csv")}`,
            "--profiling=false",
          ],
          ownDir: dir,
          graceMs: 10_000,
        });
        proc.start();
        let server: KubeApiServer | undefined;
        try {
          await proc.waitFor(
            async () => {
              try {
                readFileSync(join(dir, "certs", "apiserver.crt"));
              } catch {
                return false;
              }
              server ??= new KubeApiServer(etcd, proc, port, token, { etcd: etcdMs, apiServer: 0 });
              const r = await server.request("GET", "/readyz");
              return r.status === 200 && r.text === "ok";
            },
            120_000,
            "/readyz",
          );
        } catch (err) {
          await proc.close();
          throw err;
        }
        server!.startMs = { etcd: etcdMs, apiServer: Date.now() - t1 };
        return server!;
      });
    } catch (err) {
      await etcd.close();
      throw err;
    }
  }

  /** One HTTPS request with the admin token; the raw answer (never throws for an HTTP status). */
  request(
    method: string,
    path: string,
    body?: string,
    contentType = "application/json",
  ): Promise<{ status: number; text: string; warnings: string[] }> {
    return new Promise((resolve, reject) => {
      const req = https.request(
        {
          host: "127.0.0.1",
          port: this.port,
          method,
          path,
          ca: this.#ca,
          headers: {
            authorization: `Bearer ${this.#token}`,
            accept: "application/json",
            ...(body !== undefined ? { "content-type": contentType, "content-length": Buffer.byteLength(body) } : {}),
          },
          timeout: 60_000,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => {
            const w = res.headers.warning;
            // RFC 7234 warn-code, agent and quoted text: the text, unescaped.
            const warnings = (Array.isArray(w) ? w : w ? [w] : []).map((s) =>
              s.replace(/^\d+ \S+ "(.*)"$/, "$1").replace(/\\(.)/g, "$1"),
            );
            resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8"), warnings });
          });
          res.on("error", reject);
        },
      );
      req.on("timeout", () => req.destroy(new Error(`${method} ${path}: no answer within 60 s`)));
      req.on("error", reject);
      req.end(body);
    });
  }

  /** A JSON request; throws a KubeError carrying the server's Status message for a non-2xx answer. */
  async #call(
    method: string,
    path: string,
    body?: string,
    contentType?: string,
  ): Promise<{ object: KubeObject; warnings: string[] }> {
    const r = await this.request(method, path, body, contentType);
    let parsed: unknown;
    try {
      parsed = JSON.parse(r.text);
    } catch {
      parsed = r.text;
    }
    if (r.status < 200 || r.status > 299) {
      const s = parsed as { message?: string; reason?: string };
      throw new KubeError(r.status, s.reason ?? "", `${method} ${path}: ${r.status} ${s.message ?? r.text}`, parsed);
    }
    return { object: parsed as KubeObject, warnings: r.warnings };
  }

  /** The server's resource for apiVersion + kind (its discovery document, refetched once when the kind is new). */
  async resource(apiVersion: string, kind: string): Promise<ApiResource> {
    for (let fresh = false; ; fresh = true) {
      let list = this.#discovery.get(apiVersion);
      if (!list || fresh) {
        const path = apiVersion.includes("/") ? `/apis/${apiVersion}` : `/api/${apiVersion}`;
        const r = await this.request("GET", path);
        list =
          r.status === 200
            ? (JSON.parse(r.text) as { resources: ApiResource[] }).resources.filter((x) => !x.name.includes("/"))
            : [];
        this.#discovery.set(apiVersion, list);
      }
      const found = list.find((x) => x.kind === kind);
      if (found) return found;
      if (fresh) throw new Error(`the API server serves no kind ${kind} in ${apiVersion}`);
    }
  }

  /** The collection path of a kind (in `namespace` when the kind is namespaced). */
  async path(apiVersion: string, kind: string, namespace?: string): Promise<string> {
    const res = await this.resource(apiVersion, kind);
    const base = apiVersion.includes("/") ? `/apis/${apiVersion}` : `/api/${apiVersion}`;
    if (!res.namespaced) return `${base}/${res.name}`;
    if (!namespace) throw new Error(`${kind} is namespaced: give a namespace`);
    return `${base}/namespaces/${encodeURIComponent(namespace)}/${res.name}`;
  }

  /**
   * Server-side apply (PATCH, application/apply-patch+yaml) with fieldValidation=Strict: an unknown or duplicate
   * field is an error, not a warning. `manifest` is an object or YAML text, sent as it is (so a duplicate key in the
   * text reaches the server).
   */
  async apply(manifest: KubeObject | string, opts: WriteOptions = {}): Promise<WriteResult> {
    const text = typeof manifest === "string" ? manifest : JSON.stringify(manifest);
    const head = (typeof manifest === "string" ? YAML.parse(manifest, { uniqueKeys: false }) : manifest) as KubeObject;
    const ns = head.metadata.namespace ?? opts.namespace;
    const q = new URLSearchParams({ fieldManager: opts.fieldManager ?? "scrapez-test", fieldValidation: "Strict" });
    if (opts.dryRun) q.set("dryRun", "All");
    q.set("force", "true");
    const path = `${await this.path(head.apiVersion, head.kind, ns)}/${encodeURIComponent(head.metadata.name)}?${q}`;
    return this.#call("PATCH", path, text, "application/apply-patch+yaml");
  }

  /** POST (create) with fieldValidation=Strict; dryRun=All with `dryRun`. */
  async create(manifest: KubeObject, opts: WriteOptions = {}): Promise<WriteResult> {
    const ns = manifest.metadata.namespace ?? opts.namespace;
    const q = new URLSearchParams({ fieldValidation: "Strict" });
    if (opts.dryRun) q.set("dryRun", "All");
    const path = `${await this.path(manifest.apiVersion, manifest.kind, ns)}?${q}`;
    return this.#call("POST", path, JSON.stringify(manifest));
  }

  /** GET one object. */
  async get(apiVersion: string, kind: string, name: string, namespace?: string): Promise<KubeObject> {
    const path = `${await this.path(apiVersion, kind, namespace)}/${encodeURIComponent(name)}`;
    return (await this.#call("GET", path)).object;
  }

  /** GET a collection (all namespaces for a namespaced kind without `namespace`), optionally by label selector. */
  async list(
    apiVersion: string,
    kind: string,
    opts: { namespace?: string; labelSelector?: string } = {},
  ): Promise<KubeObject[]> {
    const res = await this.resource(apiVersion, kind);
    const base = apiVersion.includes("/") ? `/apis/${apiVersion}` : `/api/${apiVersion}`;
    const path =
      res.namespaced && opts.namespace
        ? `${base}/namespaces/${encodeURIComponent(opts.namespace)}/${res.name}`
        : `${base}/${res.name}`;
    const q = opts.labelSelector ? `?${new URLSearchParams({ labelSelector: opts.labelSelector })}` : "";
    return ((await this.#call("GET", `${path}${q}`)).object as unknown as { items: KubeObject[] }).items;
  }

  /** Creates a namespace (stored: dry runs of objects in it need it to exist). */
  async createNamespace(name: string, labels?: Record<string, string>): Promise<void> {
    await this.create({ apiVersion: "v1", kind: "Namespace", metadata: { name, ...(labels ? { labels } : {}) } });
  }

  /**
   * Installs the Prometheus Operator CRDs of the module pinned in scripts/setup.sh (the chart's Operator value sets
   * render Prometheus, ScrapeConfig and ServiceMonitor objects) and waits until all are Established. The CRD files.
   */
  async installOperatorCrds(): Promise<string[]> {
    const files = readdirSync(operatorCrdsDir()).filter((f) => f.endsWith(".yaml"));
    for (const f of files) await this.apply(readFileSync(join(operatorCrdsDir(), f), "utf8"));
    await waitUntil(
      async () => {
        const crds = await this.list("apiextensions.k8s.io/v1", "CustomResourceDefinition");
        return crds.length > 0 && crds.every(isEstablished);
      },
      60_000,
      "the Operator CRDs to be Established",
    );
    return files;
  }

  /** Stops the API server, then etcd; removes both dirs (the store with them). */
  async close(): Promise<void> {
    await this.proc.close();
    await this.etcd.close();
  }
}
