/**
 * How a pod run by test/harness/pod.ts reaches the test's kube-apiserver (test/harness/kube.ts) as a ServiceAccount,
 * as a pod with automountServiceAccountToken does in a cluster:
 *
 * - Credentials: a TokenRequest for the ServiceAccount against the real API server (what the kubelet asks for the
 *   pod's projected token), with the server's CA certificate and the namespace, as the files of the kube-api-access
 *   volume the ServiceAccount admission plugin adds to such a pod, at /var/run/secrets/kubernetes.io/serviceaccount.
 *   The API server authenticates the token as system:serviceaccount:<namespace>:<name> and authorizes it with RBAC:
 *   the RBAC objects the test applied are the ones enforced.
 * - Address: the API server listens on loopback; in a cluster, pods reach it through the `kubernetes` Service, which
 *   kube-proxy forwards. Here a TCP forwarder (what kube-proxy's former userspace mode was) listens on an address of
 *   this host that the pod network reaches and passes the TLS connection through unchanged. The in-cluster config
 *   would dial the Service's IP, which nothing routes here, so the pod gets a kubeconfig instead: that address, the
 *   name the server's certificate carries (kubernetes.default.svc), and the token and CA files above.
 */
import { readFileSync } from "node:fs";
import https from "node:https";
import net from "node:net";
import { join } from "node:path";
import YAML from "yaml";
import type { KubeApiServer } from "./kube.js";
import type { Container, Volume } from "./pod.js";

/** Where the kubelet mounts a pod's service-account token, CA certificate and namespace. */
export const SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";
/** Where the kubeconfig is mounted in the container (its own volume). */
const KUBECONFIG_DIR = "/var/run/secrets/scrapez-test/kube-api";

export interface PodApiAccessOptions {
  namespace: string;
  serviceAccount: string;
  /** An address of this host that the pods' network reaches (e.g. the Docker bridge's gateway). */
  host: string;
  /** The token's lifetime (the API server's minimum is 600 s); default one hour. */
  expirationSeconds?: number;
}

export class PodApiAccess {
  /** The Secrets the pod mounts (pass them to RenderedPod.create), by name: key -> content. */
  readonly secrets: Record<string, Record<string, string>>;
  /** The pod volumes holding the token files and the kubeconfig. */
  readonly volumes: Volume[];
  /** The mounts of those volumes for the container that talks to the API server. */
  readonly volumeMounts: NonNullable<Container["volumeMounts"]>;
  /** The kubeconfig's path in the container. */
  readonly kubeconfig = `${KUBECONFIG_DIR}/kubeconfig`;
  /** The forwarder's URL, as the pods dial it. */
  readonly server: string;
  /** The user the API server authenticates the token as. */
  readonly user: string;
  readonly #ca: string;
  readonly #forwarder: net.Server;
  /** Both ends of every forwarded connection (closed with the forwarder). */
  readonly #sockets: Set<net.Socket>;

  private constructor(
    readonly token: string,
    opts: PodApiAccessOptions,
    ca: string,
    forwarder: { server: net.Server; port: number; sockets: Set<net.Socket> },
  ) {
    this.#ca = ca;
    this.#forwarder = forwarder.server;
    this.#sockets = forwarder.sockets;
    const port = forwarder.port;
    this.server = `https://${opts.host.includes(":") ? `[${opts.host}]` : opts.host}:${port}`;
    this.user = `system:serviceaccount:${opts.namespace}:${opts.serviceAccount}`;
    const access = `kube-api-access-${opts.serviceAccount}`;
    const config = `kube-api-kubeconfig-${opts.serviceAccount}`;
    this.secrets = {
      [access]: { token, "ca.crt": ca, namespace: opts.namespace },
      [config]: {
        kubeconfig: YAML.stringify({
          apiVersion: "v1",
          kind: "Config",
          clusters: [
            {
              name: "kubernetes",
              cluster: {
                server: this.server,
                "certificate-authority": `${SERVICE_ACCOUNT_DIR}/ca.crt`,
                "tls-server-name": "kubernetes.default.svc",
              },
            },
          ],
          users: [{ name: opts.serviceAccount, user: { tokenFile: `${SERVICE_ACCOUNT_DIR}/token` } }],
          contexts: [
            {
              name: "in-cluster",
              context: { cluster: "kubernetes", user: opts.serviceAccount, namespace: opts.namespace },
            },
          ],
          "current-context": "in-cluster",
        }),
      },
    };
    this.volumes = [
      { name: access, secret: { secretName: access, defaultMode: 0o644 } },
      { name: config, secret: { secretName: config, defaultMode: 0o644 } },
    ];
    this.volumeMounts = [
      { name: access, mountPath: SERVICE_ACCOUNT_DIR, readOnly: true },
      { name: config, mountPath: KUBECONFIG_DIR, readOnly: true },
    ];
  }

  /**
   * Requests the ServiceAccount's token (the ServiceAccount must exist) and starts the forwarder to the API server.
   */
  static async start(kube: KubeApiServer, opts: PodApiAccessOptions): Promise<PodApiAccess> {
    const path =
      `/api/v1/namespaces/${encodeURIComponent(opts.namespace)}` +
      `/serviceaccounts/${encodeURIComponent(opts.serviceAccount)}/token`;
    const r = await kube.request(
      "POST",
      path,
      JSON.stringify({
        apiVersion: "authentication.k8s.io/v1",
        kind: "TokenRequest",
        spec: { expirationSeconds: opts.expirationSeconds ?? 3600 },
      }),
    );
    if (r.status !== 201)
      throw new Error(`TokenRequest for ${opts.namespace}/${opts.serviceAccount}: ${r.status} ${r.text}`);
    const token = (JSON.parse(r.text) as { status: { token: string } }).status.token;
    const ca = readFileSync(join(kube.proc.dir, "certs", "apiserver.crt"), "utf8");
    const sockets = new Set<net.Socket>();
    const forwarder = net.createServer((down) => {
      const up = net.connect(kube.port, "127.0.0.1");
      for (const s of [down, up]) {
        sockets.add(s);
        s.on("close", () => sockets.delete(s));
        s.on("error", () => {
          down.destroy();
          up.destroy();
        });
      }
      down.pipe(up).pipe(down);
    });
    const port = await new Promise<number>((resolve, reject) => {
      forwarder.once("error", reject);
      forwarder.listen(0, opts.host, () => resolve((forwarder.address() as net.AddressInfo).port));
    });
    return new PodApiAccess(token, opts, ca, { server: forwarder, port, sockets });
  }

  /**
   * A GET as the pod makes it: through the forwarder, the certificate checked for kubernetes.default.svc against
   * the CA file's certificate, with the token. The status and body.
   */
  get(path: string): Promise<{ status: number; text: string }> {
    const url = new URL(path, this.server);
    return new Promise((resolve, reject) => {
      const req = https.get(
        url,
        {
          ca: this.#ca,
          servername: "kubernetes.default.svc",
          headers: { authorization: `Bearer ${this.token}`, accept: "application/json" },
          timeout: 30_000,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8") }));
          res.on("error", reject);
        },
      );
      req.on("timeout", () => req.destroy(new Error(`GET ${path}: no answer within 30 s`)));
      req.on("error", reject);
    });
  }

  /** Stops the forwarder and its connections. */
  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#forwarder.close(() => resolve()));
  }
}
