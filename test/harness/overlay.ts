/**
 * A real local OpenZiti overlay: a controller from `ziti edge quickstart --no-router` and edge routers each run
 * as their own process (`ziti router run`, so tests can stop and start them), all on 127.0.0.1 ports chosen at
 * run time; plus an admin client on the management API to build the test model.
 *
 * Why not the quickstart's built-in router: quickstart runs controller and router in one process, so the
 * router could not be stopped alone. OverlayOptions.host/netns put them on another address in a network namespace
 * (the dark-cluster test, test/harness/netns.ts); loopback stays the default. With --no-router the quickstart still makes the PKI, the controller
 * config, the DB and the admin user; the harness then creates each router on the management API
 * (POST /edge-routers -> enrollmentJwt), writes a minimal router config (edge listener and link listener on
 * loopback, no tunneler, no health checks), enrolls it with `ziti router enroll` and runs it.
 * Measured on this 2-core machine: Overlay.start() 4.2-7.7 s in all (most of it the quickstart controller;
 * router enrolled and online ~1 s), stopRouter 0.02-0.9 s (until the controller reports it offline),
 * startRouter ~0.25 s; `ziti tunnel` peers reconnect ~5.4 s after a router restart (their SDK's backoff).
 */
import { execFile } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { chmodSync, existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import https from "node:https";
import { join } from "node:path";
import { promisify } from "node:util";
import { zitiBin } from "./binaries.js";
import { freePort, waitUntil } from "./ports.js";
import { ManagedProcess, removeDir, tempDir } from "./process.js";
import { setUpRouter } from "./router-setup.js";

const execFileP = promisify(execFile);

export interface IdentityRef {
  id: string;
  name: string;
  /** The one-time enrollment token. */
  jwt: string;
}

export interface IdentityOptions {
  roleAttributes?: string[];
  isAdmin?: boolean;
}

export interface ServiceOptions {
  roleAttributes?: string[];
  /** End-to-end encryption required; default true. */
  encryptionRequired?: boolean;
  /** Config ids (from createConfig). */
  configs?: string[];
}

export interface OverlayOptions {
  /** Edge routers to start (default 1), named router-1, router-2, ... with role attribute `public`. */
  routers?: number;
  /**
   * The address the controller and routers listen on and advertise; default 127.0.0.1. Another address must
   * be one the test process reaches, e.g. test/harness/netns.ts's OVERLAY_HOST (with `netns`).
   */
  host?: string;
  /** Run the controller and routers inside this network namespace (ManagedProcess's `netns`). */
  netns?: string;
  /** The ziti CLI to run (controller, routers, `ziti edge enroll`); default zitiBin(), the line under test. */
  ziti?: string;
}

/** One entry of GET /services (the fields tests look at; `raw` has the rest). */
export interface ServiceEntry {
  id: string;
  name: string;
  encryptionRequired: boolean;
  roleAttributes: string[] | null;
  configs: string[];
}

const ADMIN = { username: "admin", password: "admin" };

export class Overlay {
  /** Everything of this overlay lives under here (quickstart home in `qs/`, routers in `router-N/`). */
  readonly home: string;
  readonly ctrlPort: number;
  /** Where the controller and routers listen: 127.0.0.1 unless OverlayOptions.host said otherwise. */
  readonly host: string;
  /** https://<host>:<ctrlPort>: edge client API, management API and control plane share this port. */
  readonly ctrlUrl: string;
  readonly controller: ManagedProcess;
  readonly routers: ManagedProcess[] = [];
  /** Edge listener port of each router (routers[i] listens on tls:<host>:routerPorts[i]). */
  readonly routerPorts: number[] = [];
  /** Milliseconds Overlay.start() took: controller ready, admin logged in, policies and routers online. */
  startupMs = 0;
  #token = "";
  #agent: https.Agent | undefined;
  #closed = false;
  readonly #netns: string | undefined;
  /** The ziti CLI this overlay runs. */
  readonly zitiBin: string;

  private constructor(home: string, ctrlPort: number, host = "127.0.0.1", netns?: string, ziti = zitiBin()) {
    this.zitiBin = ziti;
    this.home = home;
    this.ctrlPort = ctrlPort;
    this.host = host;
    this.#netns = netns;
    this.ctrlUrl = `https://${host}:${ctrlPort}`;
    this.controller = new ManagedProcess({
      name: "ziti-controller",
      command: ziti,
      args: [
        "edge",
        "quickstart",
        "--home",
        join(home, "qs"),
        "--no-router",
        "--ctrl-address",
        host,
        "--ctrl-port",
        String(ctrlPort),
        ...(ADMIN.username === "admin" ? [] : ["-u", ADMIN.username, "-p", ADMIN.password]),
      ],
      dir: home,
      // Listen on `host` only (the quickstart's default is every interface).
      // The quickstart's server certificate always has 127.0.0.1 as an IP SAN; another address must be added as
      // one (ZITI_CTRL_EDGE_IP_OVERRIDE), or the controller rejects its own advertise address.
      env: {
        ZITI_CTRL_BIND_ADDRESS: host,
        ZITI_CTRL_EDGE_BIND_ADDRESS: host,
        ...(host !== "127.0.0.1" ? { ZITI_CTRL_EDGE_IP_OVERRIDE: host } : {}),
      },
      netns,
    });
  }

  /** Starts a controller and `opts.routers` (default 1) edge routers; throws (with logs) if any is not ready. */
  static async start(opts: OverlayOptions = {}): Promise<Overlay> {
    const t0 = Date.now();
    const o = new Overlay(tempDir("overlay"), await freePort(), opts.host, opts.netns, opts.ziti);
    try {
      o.controller.start();
      // The quickstart writes its PKI before it starts the controller; trust exactly that root CA.
      const ca = await o.controller.waitFor(() => findRootCAs(join(o.home, "qs", "pki")), 60_000, "PKI written");
      o.#agent = new https.Agent({ ca, keepAlive: false });
      await o.controller.waitFor(() => o.#ping(), 90_000, `controller answers GET ${o.ctrlUrl}/`);
      await o.controller.waitFor(() => o.#login().then(() => true), 30_000, "admin login");
      await o.#ensurePolicies();
      for (let i = 0; i < (opts.routers ?? 1); i++) await o.addRouter(`router-${i + 1}`);
    } catch (err) {
      await o.close();
      throw err;
    }
    o.startupMs = Date.now() - t0;
    return o;
  }

  /** The first router's edge listener port. */
  get routerPort(): number {
    return this.routerPorts[0]!;
  }

  /** The quickstart's root CA (PEM): what identities' `ca` bundles chain to. */
  get caPem(): string {
    return findRootCAs(join(this.home, "qs", "pki"))!.join("");
  }

  // ---- management API --------------------------------------------------------------------------------------

  /** Calls the management API (path relative to /edge/management/v1/). Throws with the answer on non-2xx. */
  async api<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const rel = path.replace(/^\//, "");
    let res = await this.#request(method, `/edge/management/v1/${rel}`, body, true);
    if (res.status === 401) {
      await this.#login(); // the API session expired or was deleted by a test
      res = await this.#request(method, `/edge/management/v1/${rel}`, body, true);
    }
    if (res.status < 200 || res.status >= 300) {
      throw new Error(`management API ${method} ${rel}: ${res.status} ${res.text.slice(0, 500)}`);
    }
    return (res.text ? JSON.parse(res.text) : {}) as T;
  }

  #request(method: string, path: string, body: unknown, auth: boolean): Promise<{ status: number; text: string }> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      const req = https.request(
        `${this.ctrlUrl}${path}`,
        {
          method,
          // No keep-alive: a pooled socket the controller closed while idle fails the next request.
          agent: this.#agent,
          timeout: 15_000,
          headers: {
            accept: "application/json",
            ...(payload ? { "content-type": "application/json", "content-length": String(payload.length) } : {}),
            ...(auth && this.#token ? { "zt-session": this.#token } : {}),
          },
        },
        (res) => {
          let text = "";
          res.setEncoding("utf8");
          res.on("data", (d: string) => (text += d));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
          res.on("error", reject);
        },
      );
      req.on("timeout", () => req.destroy(new Error(`${method} ${path}: no answer in 15 s`)));
      req.on("error", reject);
      req.end(payload);
    });
  }

  async #ping(): Promise<boolean> {
    try {
      return (await this.#request("GET", "/", undefined, false)).status === 200;
    } catch {
      return false;
    }
  }

  async #login(): Promise<void> {
    const r = await this.#request("POST", "/edge/management/v1/authenticate?method=password", ADMIN, false);
    if (r.status !== 200) throw new Error(`admin login failed: ${r.status} ${r.text.slice(0, 200)}`);
    this.#token = (JSON.parse(r.text) as { data: { token: string } }).data.token;
  }

  async #list<T>(collection: string, filter?: string): Promise<T[]> {
    const q = filter ? `&filter=${encodeURIComponent(filter)}` : "";
    return (await this.api<{ data: T[] }>("GET", `${collection}?limit=500${q}`)).data;
  }

  /**
   * Every identity may use every `#public` router, and every service every router. A hand-built network needs
   * these two; the quickstart makes them only together with its built-in router, so create them if missing.
   */
  async #ensurePolicies(): Promise<void> {
    const erps = await this.#list<{ identityRoles: string[]; edgeRouterRoles: string[] }>("edge-router-policies");
    if (!erps.some((p) => p.identityRoles.includes("#all") && p.edgeRouterRoles.includes("#public"))) {
      await this.api("POST", "edge-router-policies", {
        name: "all-identities-public-routers",
        semantic: "AnyOf",
        edgeRouterRoles: ["#public"],
        identityRoles: ["#all"],
      });
    }
    const serps = await this.#list<{ serviceRoles: string[]; edgeRouterRoles: string[] }>(
      "service-edge-router-policies",
    );
    if (!serps.some((p) => p.serviceRoles.includes("#all") && p.edgeRouterRoles.includes("#all"))) {
      await this.api("POST", "service-edge-router-policies", {
        name: "all-services-all-routers",
        semantic: "AnyOf",
        edgeRouterRoles: ["#all"],
        serviceRoles: ["#all"],
      });
    }
  }

  // ---- controller ------------------------------------------------------------------------------------------

  /**
   * Stops the controller process (SIGTERM, then SIGKILL). Its home (PKI, DB, config) stays, so startController()
   * brings the same network back: same CA, identities, services, policies and routers. Nothing answers on
   * `ctrlPort` meanwhile (connections are refused), as with a controller that is down.
   */
  async stopController(): Promise<void> {
    await this.controller.stop();
  }

  /**
   * Starts the controller again on the same port and home (the quickstart sees its DB and only runs the
   * controller) and waits until it answers and the admin can log in. Routers reconnect by themselves.
   */
  async startController(): Promise<void> {
    this.controller.start();
    await this.controller.waitFor(() => this.#ping(), 90_000, `controller answers GET ${this.ctrlUrl}/ again`);
    await this.controller.waitFor(() => this.#login().then(() => true), 30_000, "admin login again");
  }

  // ---- routers ---------------------------------------------------------------------------------------------

  /**
   * Creates an edge router (role `public`) on the management API, writes its config (edge and link listeners
   * on 127.0.0.1, runtime ports), enrolls it with `ziti router enroll`, runs it with `ziti router run` and
   * waits until the controller reports it online. Returns its index in `routers`/`routerPorts`.
   */
  async addRouter(name: string): Promise<number> {
    const { port, config, dir } = await setUpRouter({
      zitiBin: this.zitiBin,
      api: (method, path, body) => this.api(method, path, body),
      home: this.home,
      name,
      host: this.host,
      ctrl: { endpoint: `tls:${this.host}:${this.ctrlPort}` },
    });
    const proc = new ManagedProcess({
      name,
      command: this.zitiBin,
      args: ["router", "run", config],
      dir,
      netns: this.#netns,
    });
    this.routers.push(proc);
    this.routerPorts.push(port);
    await this.startRouter(this.routers.length - 1);
    return this.routers.length - 1;
  }

  async #routerOnline(name: string): Promise<boolean> {
    const r = await this.#list<{ isOnline: boolean }>("edge-routers", `name="${name}"`);
    return r[0]?.isOnline === true;
  }

  /** Stops router `i` (SIGTERM, then SIGKILL) and waits until the controller reports it offline. */
  async stopRouter(i = 0): Promise<void> {
    const r = this.#router(i);
    await r.stop();
    await waitUntil(
      async () => !(await this.#routerOnline(r.name)),
      30_000,
      `${r.name} offline`,
      () => this.logs(),
    );
  }

  /** (Re)starts router `i` on the same port and waits until the controller reports it online. */
  async startRouter(i = 0): Promise<void> {
    const r = this.#router(i);
    r.start();
    await r.waitFor(() => this.#routerOnline(r.name), 60_000, "router online at the controller");
  }

  #router(i: number): ManagedProcess {
    const r = this.routers[i];
    if (!r) throw new Error(`no router ${i} (this overlay has ${this.routers.length})`);
    return r;
  }

  // ---- the test model --------------------------------------------------------------------------------------

  /**
   * Creates an identity with a one-time enrollment token; `opts` may be just the role attributes.
   * Returns its id, name and enrollment JWT.
   */
  async createIdentity(name: string, opts: IdentityOptions | string[] = {}): Promise<IdentityRef> {
    const { roleAttributes = [], isAdmin = false } = Array.isArray(opts) ? { roleAttributes: opts } : opts;
    const c = await this.api<{ data: { id: string } }>("POST", "identities", {
      name,
      type: "Default",
      isAdmin,
      roleAttributes,
      enrollment: { ott: true },
    });
    const d = await this.api<{ data: { enrollment: { ott: { jwt: string } } } }>("GET", `identities/${c.data.id}`);
    return { id: c.data.id, name, jwt: d.data.enrollment.ott.jwt };
  }

  /** Enrolls a JWT with the reference `ziti edge enroll` into `outFile` (mode 0600); returns `outFile`. */
  async enrollWithCli(jwtText: string, outFile: string): Promise<string> {
    const jwtFile = outFile.replace(/(\.json)?$/, ".jwt");
    writeFileSync(jwtFile, jwtText, { mode: 0o600 });
    try {
      await execFileP(this.zitiBin, ["edge", "enroll", jwtFile, "-o", outFile], {
        env: { ...process.env, TMPDIR: this.home },
        timeout: 60_000,
      });
    } catch (err) {
      const e = err as Error & { stderr?: string; stdout?: string };
      throw new Error(`ziti edge enroll failed: ${e.message}\n${e.stdout ?? ""}\n${e.stderr ?? ""}`);
    }
    chmodSync(outFile, 0o600);
    return outFile;
  }

  /** createIdentity + enrollWithCli: returns the path of the enrolled identity file `<dir>/<name>.json`. */
  async identity(name: string, roleAttributes: string[] = [], dir = this.home): Promise<string> {
    const ref = await this.createIdentity(name, { roleAttributes });
    return this.enrollWithCli(ref.jwt, join(dir, `${name}.json`));
  }

  async deleteIdentity(id: string): Promise<void> {
    await this.api("DELETE", `identities/${id}`);
  }

  /** Creates a config of a type given by name (e.g. "host.v1", "intercept.v1"); returns its id. */
  async createConfig(name: string, type: string, data: unknown): Promise<string> {
    const t = await this.#list<{ id: string }>("config-types", `name="${type}"`);
    if (!t[0]) throw new Error(`no config type ${type}`);
    const c = await this.api<{ data: { id: string } }>("POST", "configs", { name, configTypeId: t[0].id, data });
    return c.data.id;
  }

  async deleteConfig(id: string): Promise<void> {
    await this.api("DELETE", `configs/${id}`);
  }

  /** Creates a service (encryption required unless said otherwise); returns its id. */
  async createService(name: string, opts: ServiceOptions = {}): Promise<string> {
    const c = await this.api<{ data: { id: string } }>("POST", "services", {
      name,
      encryptionRequired: opts.encryptionRequired ?? true,
      roleAttributes: opts.roleAttributes ?? [],
      configs: opts.configs ?? [],
    });
    return c.data.id;
  }

  async deleteService(id: string): Promise<void> {
    await this.api("DELETE", `services/${id}`);
  }

  /** Every service (as the admin sees them). */
  async listServices(): Promise<ServiceEntry[]> {
    return this.#list<ServiceEntry>("services");
  }

  /** Roles: `#attr`, `#all`, `@<id or name>`. Returns the policy id. */
  async createServicePolicy(
    name: string,
    type: "Dial" | "Bind",
    serviceRoles: string[],
    identityRoles: string[],
  ): Promise<string> {
    const c = await this.api<{ data: { id: string } }>("POST", "service-policies", {
      name,
      type,
      semantic: "AnyOf",
      serviceRoles,
      identityRoles,
    });
    return c.data.id;
  }

  /** Deletes a service policy. */
  async deletePolicy(id: string): Promise<void> {
    await this.api("DELETE", `service-policies/${id}`);
  }

  /**
   * A service with role attribute `<name>`, Dial for `opts.dial` (default `#clients`) and Bind for `opts.bind`
   * (default `#servers`) identity roles. Returns the service id.
   */
  async service(
    name: string,
    opts: Omit<ServiceOptions, "roleAttributes"> & { dial?: string[]; bind?: string[] } = {},
  ): Promise<string> {
    const id = await this.createService(name, {
      roleAttributes: [name],
      encryptionRequired: opts.encryptionRequired,
      configs: opts.configs,
    });
    await this.createServicePolicy(`${name}-dial`, "Dial", [`#${name}`], opts.dial ?? ["#clients"]);
    await this.createServicePolicy(`${name}-bind`, "Bind", [`#${name}`], opts.bind ?? ["#servers"]);
    return id;
  }

  // ---- diagnostics and teardown ----------------------------------------------------------------------------

  /** The log tails of the controller and every router, for failure reports. */
  logs(): string {
    return [this.controller, ...this.routers].map((p) => `--- ${p.name} ---\n${p.logTail(8192)}`).join("\n");
  }

  readFile(rel: string): string {
    return readFileSync(join(this.home, rel), "utf8");
  }

  /** Stops routers and controller and removes every file. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const r of this.routers) await r.close();
    await this.controller.close();
    this.#agent?.destroy();
    removeDir(this.home);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * The self-signed CA certificates (PEM) under a quickstart's pki dir (v1.x: root-ca/certs/root-ca.cert), or
 * undefined while there are none yet.
 */
function findRootCAs(pkiDir: string): string[] | undefined {
  if (!existsSync(pkiDir)) return undefined;
  const found: string[] = [];
  for (const rel of readdirSync(pkiDir, { recursive: true, encoding: "utf8" })) {
    if (!/\.(cert|pem|crt)$/.test(rel)) continue;
    let pem: string;
    try {
      pem = readFileSync(join(pkiDir, rel), "utf8");
      const x = new X509Certificate(pem); // the first certificate in the file
      if (x.ca && x.subject === x.issuer && x.verify(x.publicKey) && !found.includes(x.toString())) {
        found.push(x.toString());
      }
    } catch {
      continue; // not (yet completely) written, or not a certificate
    }
  }
  return found.length > 0 ? found : undefined;
}
