/**
 * A real local OpenZiti overlay: a controller from `ziti edge quickstart --no-router` and an edge router run as
 * its own process (so tests can stop and start it), both on loopback ports chosen at run time; plus an admin
 * client on the management API to build the test model.
 */
import { execFile } from "node:child_process";
import { writeFileSync, readFileSync, chmodSync, rmSync, mkdirSync } from "node:fs";
import https from "node:https";
import { join } from "node:path";
import { promisify } from "node:util";
import { zitiBin } from "./binaries.js";
import { freePort, waitUntil } from "./ports.js";
import { ManagedProcess, tempDir } from "./process.js";

const execFileP = promisify(execFile);

export interface IdentityRef {
  id: string;
  name: string;
  jwt: string;
}

export interface OverlayOptions {
  /** Routers to start (default 1). */
  routers?: number;
}

export class Overlay {
  readonly home: string;
  readonly ctrlPort: number;
  readonly ctrlUrl: string;
  readonly controller: ManagedProcess;
  readonly routers: ManagedProcess[] = [];
  readonly routerPorts: number[] = [];
  #token = "";
  // Admin client only: the harness trusts its own controller. No keep-alive: a pooled socket the controller
  // closed while idle fails the next request with "socket hang up".
  readonly #agent = new https.Agent({ rejectUnauthorized: false, keepAlive: false });
  #closed = false;

  private constructor(home: string, ctrlPort: number) {
    this.home = home;
    this.ctrlPort = ctrlPort;
    this.ctrlUrl = `https://127.0.0.1:${ctrlPort}`;
    this.controller = new ManagedProcess({
      name: "ziti-controller",
      command: zitiBin(),
      args: [
        "edge",
        "quickstart",
        "--home",
        join(home, "qs"),
        "--no-router",
        "--ctrl-address",
        "127.0.0.1",
        "--ctrl-port",
        String(ctrlPort),
      ],
      // Listen on loopback only (the quickstart's default is every interface).
      env: { ZITI_CTRL_BIND_ADDRESS: "127.0.0.1", ZITI_CTRL_EDGE_BIND_ADDRESS: "127.0.0.1" },
    });
  }

  static async start(opts: OverlayOptions = {}): Promise<Overlay> {
    const home = tempDir("overlay");
    const o = new Overlay(home, await freePort());
    try {
      o.controller.start();
      await o.controller.waitFor(() => o.#ping(), 90_000, "controller answers on its API");
      await waitUntil(() => o.#login().then(() => true), 30_000, "admin login");
      await o.#ensurePolicies();
      for (let i = 0; i < (opts.routers ?? 1); i++) await o.addRouter(`router-${i + 1}`);
    } catch (err) {
      await o.close();
      throw err;
    }
    return o;
  }

  /** The management API. Throws with the controller's error text on non-2xx. */
  async api<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.#request(method, `/edge/management/v1/${path.replace(/^\//, "")}`, body, true);
    if (res.status === 401 && path !== "authenticate?method=password") {
      await this.#login();
      return this.api(method, path, body);
    }
    if (res.status < 200 || res.status >= 300) {
      throw new Error(`management API ${method} ${path}: ${res.status} ${res.text.slice(0, 500)}`);
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
        },
      );
      req.on("timeout", () => req.destroy(new Error("timeout")));
      req.on("error", reject);
      req.end(payload);
    });
  }

  async #ping(): Promise<boolean> {
    try {
      const r = await this.#request("GET", "/", undefined, false);
      return r.status === 200;
    } catch {
      return false;
    }
  }

  async #login(): Promise<void> {
    const r = await this.#request(
      "POST",
      "/edge/management/v1/authenticate?method=password",
      { username: "admin", password: "admin" },
      false,
    );
    if (r.status !== 200) throw new Error(`admin login failed: ${r.status} ${r.text.slice(0, 200)}`);
    this.#token = (JSON.parse(r.text) as { data: { token: string } }).data.token;
  }

  async #ensurePolicies(): Promise<void> {
    await this.api("POST", "edge-router-policies", {
      name: "all-identities-public-routers",
      semantic: "AnyOf",
      edgeRouterRoles: ["#public"],
      identityRoles: ["#all"],
    });
    await this.api("POST", "service-edge-router-policies", {
      name: "all-services-all-routers",
      semantic: "AnyOf",
      edgeRouterRoles: ["#all"],
      serviceRoles: ["#all"],
    });
  }

  /** Creates, enrolls and starts an edge router on a loopback port. Returns its index. */
  async addRouter(name: string): Promise<number> {
    const port = await freePort();
    const dir = join(this.home, name);
    mkdirSync(dir, { recursive: true });
    const created = await this.api<{ data: { id: string } }>("POST", "edge-routers", {
      name,
      roleAttributes: ["public"],
      isTunnelerEnabled: false,
    });
    const detail = await this.api<{ data: { enrollmentJwt: string } }>("GET", `edge-routers/${created.data.id}`);
    const jwtFile = join(dir, `${name}.jwt`);
    writeFileSync(jwtFile, detail.data.enrollmentJwt);
    const config = join(dir, `${name}.yaml`);
    writeFileSync(
      config,
      [
        "v: 3",
        "identity:",
        `  cert: "${join(dir, "router.cert")}"`,
        `  server_cert: "${join(dir, "router.server.chain.cert")}"`,
        `  key: "${join(dir, "router.key")}"`,
        `  ca: "${join(dir, "router.cas")}"`,
        "ctrl:",
        `  endpoint: tls:127.0.0.1:${this.ctrlPort}`,
        "link:",
        "  dialers:",
        "    - binding: transport",
        "listeners:",
        "  - binding: edge",
        `    address: tls:127.0.0.1:${port}`,
        "    options:",
        `      advertise: 127.0.0.1:${port}`,
        "      connectTimeoutMs: 5000",
        "edge:",
        "  heartbeatIntervalSeconds: 60",
        "  csr:",
        "    country: US",
        "    organization: scrapez-test",
        "    sans:",
        "      dns: [localhost]",
        '      ip: ["127.0.0.1"]',
        "forwarder:",
        "  latencyProbeInterval: 0",
        "",
      ].join("\n"),
    );
    try {
      await execFileP(zitiBin(), ["router", "enroll", config, "--jwt", jwtFile], { cwd: dir, timeout: 60_000 });
    } catch (err) {
      const e = err as Error & { stderr?: string; stdout?: string };
      throw new Error(`router enroll failed: ${e.message}\n${e.stdout ?? ""}\n${e.stderr ?? ""}`);
    }
    const proc = new ManagedProcess({ name, command: zitiBin(), args: ["router", "run", config], cwd: dir });
    this.routers.push(proc);
    this.routerPorts.push(port);
    await this.startRouter(this.routers.length - 1);
    return this.routers.length - 1;
  }

  async #routerOnline(name: string): Promise<boolean> {
    const r = await this.api<{ data: { isOnline: boolean }[] }>(
      "GET",
      `edge-routers?filter=${encodeURIComponent(`name="${name}"`)}`,
    );
    return r.data[0]?.isOnline === true;
  }

  async stopRouter(i = 0): Promise<void> {
    const r = this.routers[i]!;
    await r.stop();
    await waitUntil(async () => !(await this.#routerOnline(r.name)), 30_000, `${r.name} offline`);
  }

  async startRouter(i = 0): Promise<void> {
    const r = this.routers[i]!;
    r.start();
    await r.waitFor(() => this.#routerOnline(r.name), 60_000, "router online at the controller");
  }

  /** Creates an identity with a one-time enrollment token. */
  async createIdentity(name: string, roleAttributes: string[] = [], isAdmin = false): Promise<IdentityRef> {
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

  /** Enrolls with the reference `ziti edge enroll`; returns the identity file path (mode 0600). */
  async enrollWithCli(ref: IdentityRef, dir = this.home): Promise<string> {
    const jwtFile = join(dir, `${ref.name}.jwt`);
    const out = join(dir, `${ref.name}.json`);
    writeFileSync(jwtFile, ref.jwt);
    try {
      await execFileP(zitiBin(), ["edge", "enroll", jwtFile, "-o", out], { timeout: 60_000 });
    } catch (err) {
      const e = err as Error & { stderr?: string };
      throw new Error(`ziti edge enroll failed: ${e.message}\n${e.stderr ?? ""}`);
    }
    chmodSync(out, 0o600);
    return out;
  }

  /** createIdentity + enrollWithCli. */
  async identity(name: string, roleAttributes: string[] = []): Promise<string> {
    return this.enrollWithCli(await this.createIdentity(name, roleAttributes));
  }

  async createConfig(name: string, type: string, data: unknown): Promise<string> {
    const t = await this.api<{ data: { id: string }[] }>(
      "GET",
      `config-types?filter=${encodeURIComponent(`name="${type}"`)}`,
    );
    const typeId = t.data[0]?.id;
    if (!typeId) throw new Error(`no config type ${type}`);
    const c = await this.api<{ data: { id: string } }>("POST", "configs", { name, configTypeId: typeId, data });
    return c.data.id;
  }

  async createService(
    name: string,
    opts: { roleAttributes?: string[]; encryptionRequired?: boolean; configs?: string[] } = {},
  ): Promise<string> {
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

  /** A service with Dial for `#<name>-clients` and Bind for `#<name>-servers` role holders. */
  async service(
    name: string,
    opts: { encryptionRequired?: boolean; configs?: string[]; dial?: string[]; bind?: string[] } = {},
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

  /** Every captured log, for failure reports. */
  logs(): string {
    return [this.controller, ...this.routers].map((p) => `--- ${p.name} ---\n${p.logTail(8192)}`).join("\n");
  }

  readFile(rel: string): string {
    return readFileSync(join(this.home, rel), "utf8");
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const r of this.routers) await r.stop();
    await this.controller.stop();
    this.#agent.destroy();
    rmSync(this.home, { recursive: true, force: true });
  }
}
