/**
 * A real 3-member OpenZiti HA controller cluster (raft) on loopback, with edge routers, for tests, on either line
 * (test/harness/binaries.ts zitiLine()).
 *
 * How a cluster forms with the quickstart (ziti/run/quickstart.go@v2.0.3 and @v1.6.3): the first member makes a
 * shared PKI root under H/pki, an intermediate CA + server/client certificates for the member, H/ctrl1/ctrl.yaml,
 * runs it and initializes the cluster and the admin user (`ziti agent cluster init` against its own pid). On v2.0.3
 * that is plain `ziti edge quickstart --home H --instance-id ctrl1 --trust-domain T` (every 2.x controller is a raft
 * member; the quickstart has no `ha` subcommand); on v1.6.3 it is `ziti edge quickstart ha` with the same flags.
 * Each further member runs `ziti edge quickstart join --home H --instance-id ctrlN --cluster-member tls:<first
 * member>` (both lines), which makes its own intermediate under the same root, its ctrl.yaml, runs it and adds
 * itself (`ziti agent cluster add`). Members 2 and 3 join concurrently.
 *
 * Each member is then stopped and run again with `ziti controller run` on its ctrl.yaml, so tests can stop and start
 * members on their own. On v1.6.3 the harness also works around a quirk there: the leader records each member's
 * public key from the certificate the member dials the raft mesh with (its `identity.cert`, a client certificate),
 * while OIDC tokens are signed with its server certificate; their `kid`s differ, so tokens minted by one member do
 * not verify at the others or at routers (seen here: 401 at member 1 for a token from member 2). Both certificates
 * share one key, so on v1.6.3 `identity.cert` is pointed at the server chain before the restart; v2.0.3's members run
 * with the quickstart's own config. It can also shorten the OIDC access-token lifetime
 * (`edge.oidc.accessTokenDuration`, 1 minute at least) so refreshes happen in a test.
 *
 * Routers are created on the management API (like Overlay) with `ha.enabled` and every member as a ctrl endpoint.
 * Everything lives in one temp dir; ports are chosen at run time; logs are capped (ManagedProcess).
 */
import { execFile } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import https from "node:https";
import { join } from "node:path";
import { promisify } from "node:util";
import { zitiBin, zitiLine } from "./binaries.js";
import { freePort, waitUntil } from "./ports.js";
import { ManagedProcess, removeDir, tempDir } from "./process.js";
import { setUpRouter } from "./router-setup.js";

const execFileP = promisify(execFile);
const ADMIN = { username: "admin", password: "admin" };
const TRUST_DOMAIN = "scrapez-test";

export interface HaOptions {
  /** Cluster members (default 3). */
  members?: number;
  /** Edge routers (default 1). */
  routers?: number;
  /** `edge.oidc.accessTokenDuration`, e.g. "1m" (the controller's minimum); default: the controller's (30m). */
  accessTokenDuration?: string;
}

export interface Member {
  id: string;
  port: number;
  /** https://127.0.0.1:<port> */
  url: string;
  /** `ziti controller run <dir>/ctrl.yaml` */
  proc: ManagedProcess;
}

const ENV = { ZITI_CTRL_BIND_ADDRESS: "127.0.0.1", ZITI_CTRL_EDGE_BIND_ADDRESS: "127.0.0.1" };

export class HaCluster {
  readonly home: string;
  readonly members: Member[] = [];
  readonly routers: ManagedProcess[] = [];
  readonly routerPorts: number[] = [];
  /** Milliseconds start() took. */
  startupMs = 0;
  #agent: https.Agent | undefined;
  /** Admin API sessions are per member (legacy sessions are not replicated): one per member. */
  readonly #tokens = new Map<string, string>();
  #closed = false;
  readonly #setup: ManagedProcess[] = [];

  private constructor(home: string) {
    this.home = home;
  }

  static async start(opts: HaOptions = {}): Promise<HaCluster> {
    const t0 = Date.now();
    const c = new HaCluster(tempDir("ha"));
    try {
      await c.#form(opts.members ?? 3, opts.accessTokenDuration);
      for (let i = 0; i < (opts.routers ?? 1); i++) await c.addRouter(`ha-router-${i + 1}`);
    } catch (err) {
      const logs = c.logs();
      await c.close();
      throw new Error(`${(err as Error).message}\n${logs}`, { cause: err });
    }
    c.startupMs = Date.now() - t0;
    return c;
  }

  get qsHome(): string {
    return join(this.home, "qs");
  }

  /** The cluster's root CA (what identities' `ca` bundles chain to). */
  get caPem(): string {
    return readFileSync(join(this.qsHome, "pki", "root-ca", "certs", "root-ca.cert"), "utf8");
  }

  async #form(n: number, accessTokenDuration: string | undefined): Promise<void> {
    const ports: number[] = [];
    for (let i = 0; i < n; i++) ports.push(await freePort());
    const qs = (i: number) => {
      const id = `ctrl${i + 1}`;
      const args =
        i === 0
          ? ["edge", "quickstart", ...(zitiLine() === "1" ? ["ha"] : []), "--trust-domain", TRUST_DOMAIN]
          : [
              "edge",
              "quickstart",
              "join",
              "--trust-domain",
              TRUST_DOMAIN,
              "--cluster-member",
              `tls:127.0.0.1:${ports[0]}`,
            ];
      const dir = join(this.home, `setup-${id}`);
      mkdirSync(dir, { recursive: true });
      const p = new ManagedProcess({
        name: `quickstart-${id}`,
        command: zitiBin(),
        args: [
          ...args,
          "--home",
          this.qsHome,
          "--no-router",
          "--ctrl-address",
          "127.0.0.1",
          "--ctrl-port",
          String(ports[i]),
          "--instance-id",
          id,
        ],
        dir,
        env: ENV,
      });
      this.#setup.push(p);
      return p.start();
    };
    // 1. The first member: PKI, config, cluster init, admin user.
    const first = qs(0);
    const rootCa = join(this.qsHome, "pki", "root-ca", "certs", "root-ca.cert");
    await first.waitFor(
      () => existsSync(rootCa) && readFileSync(rootCa, "utf8").includes("END CERTIFICATE"),
      60_000,
      "root CA written",
    );
    await first.waitFor(() => this.#caReady(), 30_000, "root CA parses");
    const url1 = `https://127.0.0.1:${ports[0]}`;
    await first.waitFor(() => this.#login(url1).then(() => true), 90_000, "admin login at member 1");
    // 2. The others join (concurrently), until the cluster lists every member as connected.
    const joiners = ports.slice(1).map((_, k) => qs(k + 1));
    await waitUntil(
      async () => {
        for (const j of joiners) if (j.exitCode !== undefined) throw new Error(`${j.name} exited early`);
        const m = await this.#listMembers(url1);
        return m.length === n && m.every((x) => x.connected);
      },
      120_000,
      `${n} connected cluster members`,
      () => this.logs(),
    );
    // Each joiner has the replicated model (its admin login works) before it is stopped.
    for (const [k, j] of joiners.entries()) {
      const url = `https://127.0.0.1:${ports[k + 1]}`;
      await j.waitFor(() => this.#login(url).then(() => true), 60_000, "admin login (model replicated)");
    }
    // 3. Restart each member via `ziti controller run`; on v1.6.3 with identity.cert = its server chain (see the
    // file comment).
    for (const p of this.#setup) await p.stop();
    for (let i = 0; i < n; i++) {
      const id = `ctrl${i + 1}`;
      const cfg = join(this.qsHome, id, "ctrl.yaml");
      let yaml = readFileSync(cfg, "utf8");
      if (zitiLine() === "1") {
        yaml = yaml.replace(/^(\s*cert:\s*)"([^"]*)\/client\.chain\.pem"/m, '$1"$2/server.chain.pem"');
      }
      if (accessTokenDuration) {
        yaml = yaml.replace(/^edge:\s*$/m, `edge:\n  oidc:\n    accessTokenDuration: ${accessTokenDuration}`);
      }
      writeFileSync(cfg, yaml);
      const dir = join(this.home, id);
      mkdirSync(dir, { recursive: true });
      const proc = new ManagedProcess({
        name: id,
        command: zitiBin(),
        args: ["controller", "run", cfg],
        dir,
        env: ENV,
      });
      this.members.push({ id, port: ports[i]!, url: `https://127.0.0.1:${ports[i]}`, proc });
    }
    for (const m of this.members) m.proc.start();
    for (const m of this.members) await this.#waitMember(m);
    await waitUntil(
      async () => (await this.#listMembers(url1)).some((x) => x.leader),
      60_000,
      "a leader",
      () => this.logs(),
    );
    // The leader records each member's API addresses from the headers of that member's mesh connection. When the two
    // dial each other at once (the log says "connection from peer ... already present"), the connection kept can
    // lack them, and the member is listed without addresses for good (seen on v2.0.3: ctrl2 with none after 60 s),
    // so a client learns 2 of 3 members from GET /controllers. Such a member is restarted until all advertise.
    // 15 s sufficed on a quiet machine; with the suite's three files at a time (load average 10-20) a v1.6.3 member
    // that joined late was still being listed without addresses after 3 rounds of 15 s.
    const ADVERTISE_MS = 30_000;
    let advertiseBy = Date.now() + ADVERTISE_MS;
    for (let round = 1; ; round++) {
      const silent = await waitUntil(
        async () => {
          const r = await this.#apiAt<{ data: { id: string; apiAddresses?: Record<string, unknown[]> }[] }>(
            url1,
            "GET",
            "/edge/management/v1/controllers?limit=100",
          );
          const without = this.members
            .map((m) => m.id)
            .filter((id) => !(r.data.find((c) => c.id === id)?.apiAddresses?.["edge-client"]?.length ?? 0));
          return without.length === 0 || Date.now() > advertiseBy ? without : undefined;
        },
        ADVERTISE_MS + 15_000,
        `${n} members advertising their client API`,
        () => this.logs(),
      );
      if (silent.length === 0) break;
      if (round === 3)
        throw new Error(`members ${silent.join(", ")} never advertised their client API\n${this.logs()}`);
      for (const id of silent) {
        await this.member(id).proc.stop();
        await this.startMember(id);
      }
      advertiseBy = Date.now() + ADVERTISE_MS;
    }
    await this.#ensurePolicies();
  }

  #caReady(): boolean {
    try {
      this.#agent ??= new https.Agent({ ca: new X509Certificate(this.caPem).toString(), keepAlive: false });
      return true;
    } catch {
      return false;
    }
  }

  async #waitMember(m: Member): Promise<void> {
    await m.proc.waitFor(() => this.#login(m.url).then(() => true), 90_000, `${m.id} answers and the admin logs in`);
  }

  async #listMembers(url: string): Promise<{ id: string; connected: boolean; leader: boolean }[]> {
    const r = await this.#apiAt<{ data: { id: string; connected: boolean; leader: boolean }[] }>(
      url,
      "GET",
      "/fabric/v1/cluster/list-members",
    );
    return r.data;
  }

  // ---- members ---------------------------------------------------------------------------------------------

  member(id: string): Member {
    const m = this.members.find((x) => x.id === id);
    if (!m) throw new Error(`no member ${id}`);
    return m;
  }

  /** Kills a member (SIGKILL: a crash, not a graceful leave). Its data stays for startMember(). */
  async killMember(id: string): Promise<void> {
    const m = this.member(id);
    m.proc.killNow();
    await waitUntil(() => !m.proc.running, 10_000, `${id} exited`);
    this.#tokens.delete(m.url);
  }

  /** Starts a stopped member again and waits until it answers and the cluster has a leader. */
  async startMember(id: string): Promise<void> {
    const m = this.member(id);
    m.proc.start();
    await this.#waitMember(m);
  }

  /** Members whose process runs. */
  liveMembers(): Member[] {
    return this.members.filter((m) => m.proc.running);
  }

  // ---- management API (any live member) ----------------------------------------------------------------------

  async #apiAt<T>(url: string, method: string, path: string, body?: unknown): Promise<T> {
    if (!this.#tokens.has(url)) await this.#login(url);
    let res = await this.#request(url, method, path, body, this.#tokens.get(url));
    if (res.status === 401) {
      await this.#login(url);
      res = await this.#request(url, method, path, body, this.#tokens.get(url));
    }
    if (res.status < 200 || res.status >= 300) {
      throw new Error(`${url} ${method} ${path}: ${res.status} ${res.text.slice(0, 500)}`);
    }
    return (res.text ? JSON.parse(res.text) : {}) as T;
  }

  /** The management API (path relative to /edge/management/v1/) at the first live member that answers. */
  async api<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    let lastErr: unknown;
    for (const m of this.liveMembers()) {
      try {
        return await this.#apiAt<T>(m.url, method, `/edge/management/v1/${path.replace(/^\//, "")}`, body);
      } catch (err) {
        lastErr = err;
        if (!/ECONNREFUSED|ECONNRESET|socket hang up|no answer/.test((err as Error).message)) throw err;
      }
    }
    throw lastErr as Error;
  }

  async #login(url: string): Promise<void> {
    const r = await this.#request(url, "POST", "/edge/management/v1/authenticate?method=password", ADMIN, undefined);
    if (r.status !== 200) throw new Error(`admin login at ${url}: ${r.status} ${r.text.slice(0, 200)}`);
    this.#tokens.set(url, (JSON.parse(r.text) as { data: { token: string } }).data.token);
  }

  #request(
    base: string,
    method: string,
    path: string,
    body: unknown,
    token: string | undefined,
  ): Promise<{ status: number; text: string }> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      if (!this.#agent && !this.#caReady()) return reject(new Error("no CA yet"));
      const req = https.request(
        `${base}${path}`,
        {
          method,
          agent: this.#agent,
          timeout: 15_000,
          headers: {
            accept: "application/json",
            ...(payload ? { "content-type": "application/json", "content-length": String(payload.length) } : {}),
            ...(token ? { "zt-session": token } : {}),
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

  async #list<T>(collection: string, filter?: string): Promise<T[]> {
    const q = filter ? `&filter=${encodeURIComponent(filter)}` : "";
    return (await this.api<{ data: T[] }>("GET", `${collection}?limit=500${q}`)).data;
  }

  /** The quickstart makes these only together with its built-in router (skipped with --no-router). */
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

  // ---- routers ---------------------------------------------------------------------------------------------

  /** An edge router with every member as a ctrl endpoint (`ha.enabled`), enrolled, run, and online. */
  async addRouter(name: string): Promise<number> {
    const { port, config, dir } = await setUpRouter({
      zitiBin: zitiBin(),
      api: (method, path, body) => this.api(method, path, body),
      home: this.home,
      name,
      host: "127.0.0.1",
      ctrl: { endpoints: this.members.map((m) => `tls:127.0.0.1:${m.port}`) },
    });
    const proc = new ManagedProcess({ name, command: zitiBin(), args: ["router", "run", config], dir });
    this.routers.push(proc);
    this.routerPorts.push(port);
    proc.start();
    await proc.waitFor(
      async () => (await this.#list<{ isOnline: boolean }>("edge-routers", `name="${name}"`))[0]?.isOnline === true,
      60_000,
      "router online",
    );
    return this.routers.length - 1;
  }

  // ---- the test model --------------------------------------------------------------------------------------

  async createIdentity(
    name: string,
    roleAttributes: string[] = [],
  ): Promise<{ id: string; name: string; jwt: string }> {
    const c = await this.api<{ data: { id: string } }>("POST", "identities", {
      name,
      type: "Default",
      isAdmin: false,
      roleAttributes,
      enrollment: { ott: true },
    });
    // The enrollment is replicated by raft: read it back until it is there.
    const jwt = await waitUntil(
      async () =>
        (await this.api<{ data: { enrollment?: { ott?: { jwt?: string } } } }>("GET", `identities/${c.data.id}`)).data
          .enrollment?.ott?.jwt,
      15_000,
      `enrollment of ${name}`,
    );
    return { id: c.data.id, name, jwt };
  }

  /** createIdentity + `ziti edge enroll` into `<dir>/<name>.json` (mode 0600); returns the file. */
  async identity(name: string, roleAttributes: string[] = [], dir = this.home): Promise<string> {
    const ref = await this.createIdentity(name, roleAttributes);
    const out = join(dir, `${name}.json`);
    const jwtFile = join(dir, `${name}.jwt`);
    writeFileSync(jwtFile, ref.jwt, { mode: 0o600 });
    try {
      await execFileP(zitiBin(), ["edge", "enroll", jwtFile, "-o", out], {
        env: { ...process.env, TMPDIR: this.home },
        timeout: 60_000,
      });
    } catch (err) {
      const e = err as Error & { stderr?: string; stdout?: string };
      throw new Error(`ziti edge enroll failed: ${e.message}\n${e.stdout ?? ""}\n${e.stderr ?? ""}`);
    }
    chmodSync(out, 0o600);
    return out;
  }

  async createConfig(name: string, type: string, data: unknown): Promise<string> {
    const t = await this.#list<{ id: string }>("config-types", `name="${type}"`);
    if (!t[0]) throw new Error(`no config type ${type}`);
    return (await this.api<{ data: { id: string } }>("POST", "configs", { name, configTypeId: t[0].id, data })).data.id;
  }

  /** A service with role attribute `<name>`, Dial for `dial` and Bind for `bind` identity roles. */
  async service(
    name: string,
    opts: { dial?: string[]; bind?: string[]; configs?: string[]; encryptionRequired?: boolean } = {},
  ): Promise<string> {
    const c = await this.api<{ data: { id: string } }>("POST", "services", {
      name,
      encryptionRequired: opts.encryptionRequired ?? true,
      roleAttributes: [name],
      configs: opts.configs ?? [],
    });
    for (const [type, roles] of [
      ["Dial", opts.dial ?? ["#clients"]],
      ["Bind", opts.bind ?? ["#servers"]],
    ] as const) {
      await this.api("POST", "service-policies", {
        name: `${name}-${type.toLowerCase()}`,
        type,
        semantic: "AnyOf",
        serviceRoles: [`#${name}`],
        identityRoles: roles,
      });
    }
    return c.data.id;
  }

  // ---- diagnostics and teardown ----------------------------------------------------------------------------

  logs(): string {
    return [...this.#setup, ...this.members.map((m) => m.proc), ...this.routers]
      .map((p) => `--- ${p.name} ---\n${p.logTail(6144)}`)
      .join("\n");
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const r of this.routers) await r.close();
    for (const p of this.#setup) await p.close();
    for (const m of this.members) await m.proc.close();
    this.#agent?.destroy();
    removeDir(this.home);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
