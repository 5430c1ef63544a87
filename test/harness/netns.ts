/**
 * Network namespaces a test makes and always removes: "sites" (clusters, a central, an operator) that share
 * nothing with the machine's network, joined by a "transit" namespace that routes between them and holds the
 * overlay's controller and edge router (see DarkNet). Needs root (ip netns add).
 *
 * - Addresses only from 198.18.0.0/15 (RFC 2544's benchmarking range), only on interfaces inside namespaces the
 *   harness made, plus one veth end in the root namespace (`szdk<pid>`, 198.18.0.2/30) through which the test
 *   process reaches the controller's management API. IPv6 is off in every namespace and on that veth, so no
 *   link-local address appears either.
 * - Nothing is left behind: each namespace and the root veth are removed by close(), and, if the test dies
 *   first, by the exit/signal teardown of test/harness/process.ts (onCleanup); a namespace whose owner was
 *   SIGKILLed is removed by the next run's sweep (names carry the owner's pid: `szdk-<pid>-<site>`).
 * - Processes run inside a namespace with ManagedProcess's `netns` option (`ip netns exec`); the test reaches
 *   into a namespace only through its agent (test/fixtures/netns-agent.ts) on a Unix socket file, never over
 *   the network, so the agent opens no port a scan could find.
 */
import { execFileSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import http from "node:http";
import { join } from "node:path";
import { repoRoot } from "./binaries.js";
import { IP_BIN, ManagedProcess, onCleanup, tempDir } from "./process.js";
import type { ScanOptions, ScanResult } from "./scan.js";

/** Every namespace and root-namespace link the harness makes starts with this. */
export const NETNS_PREFIX = "szdk";

function ip(args: string[]): string {
  try {
    return execFileSync(IP_BIN, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`ip ${args.join(" ")}: ${e.stderr?.trim() || e.message}`);
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== "ESRCH";
  }
}

/** Names of existing namespaces (`ip netns list` prints "name (id: N)"). */
export function listNetns(): string[] {
  return ip(["netns", "list"])
    .split("\n")
    .map((l) => l.split(" ")[0]!)
    .filter(Boolean);
}

/** Names of links in the root namespace. */
export function listRootLinks(): string[] {
  return ip(["-o", "link", "show"])
    .split("\n")
    .map((l) => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1])
    .filter((n): n is string => n !== undefined);
}

/**
 * Removes namespaces and root links of earlier runs whose process no longer exists (SIGKILLed before its
 * teardown). Returns what it removed.
 */
export function sweepLeftovers(): string[] {
  const removed: string[] = [];
  const dead = (pid: string) => Number(pid) !== process.pid && !pidAlive(Number(pid));
  for (const ns of listNetns()) {
    const m = new RegExp(`^${NETNS_PREFIX}-(\\d+)-`).exec(ns);
    if (m && dead(m[1]!)) {
      ip(["netns", "del", ns]);
      removed.push(`netns ${ns}`);
    }
  }
  for (const link of listRootLinks()) {
    const m = new RegExp(`^${NETNS_PREFIX}(\\d+)$`).exec(link);
    if (m && dead(m[1]!)) {
      ip(["link", "del", link]);
      removed.push(`link ${link}`);
    }
  }
  return removed;
}

/** A network namespace of this test process: `szdk-<pid>-<site>`, loopback up, IPv6 off. */
export class Netns {
  readonly site: string;
  readonly name: string;
  #agent: ManagedProcess | undefined;
  #socket = "";
  #closed = false;
  readonly #unregister: () => void;

  private constructor(site: string) {
    if (!/^[a-z][a-z0-9-]{0,30}$/.test(site)) throw new Error(`bad site name ${site}`);
    this.site = site;
    this.name = `${NETNS_PREFIX}-${process.pid}-${site}`;
    // Registered before the namespace exists, so an interruption at any point removes it.
    this.#unregister = onCleanup(() => this.#deleteNow());
  }

  /** Creates the namespace. */
  static create(site: string): Netns {
    const n = new Netns(site);
    try {
      ip(["netns", "add", n.name]);
      n.sysctl({ "net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1 });
      n.ip(["link", "set", "lo", "up"]);
    } catch (err) {
      n.#deleteNow();
      throw err;
    }
    return n;
  }

  /** `ip -n <name> ...`: its output. */
  ip(args: string[]): string {
    return ip(["-n", this.name, ...args]);
  }

  /** Sets sysctls inside the namespace (net.* are per namespace). */
  sysctl(values: Record<string, number | string>): void {
    ip(["netns", "exec", this.name, "sysctl", "-q", "-w", ...Object.entries(values).map(([k, v]) => `${k}=${v}`)]);
  }

  /** The namespace's IPv4 addresses (CIDR) and whether it has any IPv6 address. */
  addresses(): { v4: string[]; v6: string[] } {
    const of = (fam: string) =>
      this.ip(["-o", fam, "addr", "show"])
        .split("\n")
        .map((l) => /\sinet6?\s+(\S+)/.exec(l)?.[1])
        .filter((a): a is string => a !== undefined);
    return { v4: of("-4"), v6: of("-6") };
  }

  /** Its IPv4 routes, one line each (`ip -4 route show`). */
  routes(): string[] {
    return this.ip(["-4", "route", "show"])
      .split("\n")
      .map((l) => l.trim())
      .filter(Boolean);
  }

  /**
   * Starts the agent (test/fixtures/netns-agent.ts from dist/, built by `npx tsc`) inside the namespace; the
   * test then fetches and scans from inside through it. Idempotent.
   */
  async startAgent(): Promise<void> {
    if (this.#agent) return;
    const script = join(repoRoot, "dist", "test", "fixtures", "netns-agent.js");
    if (!existsSync(script)) throw new Error(`${script} is missing: run \`npx tsc -p tsconfig.json\` first`);
    const dir = tempDir(`agent-${this.site}`);
    this.#socket = join(dir, "agent.sock");
    this.#agent = new ManagedProcess({
      name: `netns-agent-${this.site}`,
      command: process.execPath,
      args: [script, this.#socket],
      ownDir: dir,
      netns: this.name,
    });
    this.#agent.start();
    await this.#agent.waitFor(
      async () => (await this.#call("GET", "/ready", {}, undefined, 5_000)).status === 200,
      30_000,
      "agent ready",
    );
  }

  #call(
    method: string,
    path: string,
    headers: http.OutgoingHttpHeaders,
    body: string | undefined,
    timeoutMs: number,
  ): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
    if (!this.#socket) return Promise.reject(new Error(`${this.name}: no agent (call startAgent() first)`));
    return new Promise((resolve, reject) => {
      const req = http.request({ socketPath: this.#socket, method, path, headers, timeout: timeoutMs }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
        );
        res.on("error", reject);
      });
      req.on("timeout", () => req.destroy(new Error(`${this.name} agent: ${path} took over ${timeoutMs} ms`)));
      req.on("error", reject);
      req.end(body);
    });
  }

  /**
   * fetch() from inside the namespace (through its agent): `url` as seen from in there (127.0.0.1 is the
   * namespace's loopback); with `proxy`, through that HTTP proxy (absolute-form request, like `curl -x`).
   * A request the agent could not make at all rejects with the agent's reason.
   */
  async fetch(
    url: string,
    init: { method?: string; headers?: Record<string, string>; body?: string; proxy?: string; timeoutMs?: number } = {},
  ): Promise<Response> {
    const timeoutMs = init.timeoutMs ?? 15_000;
    const q = new URLSearchParams({ url, timeoutMs: String(timeoutMs) });
    if (init.proxy) q.set("proxy", init.proxy);
    const r = await this.#call(init.method ?? "GET", `/fetch?${q}`, init.headers ?? {}, init.body, timeoutMs + 5_000);
    if (r.status === 599) throw new Error(`${this.site}: ${url}: ${r.body.toString("utf8")}`);
    const headers = new Headers();
    for (const [k, v] of Object.entries(r.headers)) {
      if (v !== undefined) headers.set(k, Array.isArray(v) ? v.join(", ") : v);
    }
    return new Response(r.status === 204 || r.status === 304 ? null : new Uint8Array(r.body), {
      status: r.status,
      headers,
    });
  }

  /** A TCP connect scan of `host` run from inside this namespace (test/harness/scan.ts). */
  async scan(host: string, opts: ScanOptions = {}): Promise<ScanResult> {
    const q = new URLSearchParams({ host });
    for (const [k, v] of Object.entries(opts)) if (v !== undefined) q.set(k, String(v));
    const r = await this.#call("GET", `/scan?${q}`, {}, undefined, 600_000);
    if (r.status !== 200) throw new Error(`${this.site}: scan ${host}: ${r.body.toString("utf8")}`);
    return JSON.parse(r.body.toString("utf8")) as ScanResult;
  }

  /** Stops the agent and deletes the namespace (its veths go with it). Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    await this.#agent?.close();
    this.#deleteNow();
  }

  #deleteNow(): void {
    this.#closed = true;
    this.#agent?.killNow();
    this.#unregister();
    if (listNetns().includes(this.name)) ip(["netns", "del", this.name]);
  }
}

/** The transit side's address on the root link: the controller and edge router listen here. */
export const OVERLAY_HOST = "198.18.0.1";
/** The root namespace's end of the root link: how the test process reaches OVERLAY_HOST. */
export const ROOT_HOST = "198.18.0.2";

/**
 * The dark-site topology (addresses from 198.18.0.0/15):
 *
 *   root ns  szdk<pid> 198.18.0.2/30 ── to-root 198.18.0.1/30  transit ns (ip_forward; controller + router
 *                                                               listen on 198.18.0.1 only)
 *   site i   eth0 198.18.<i>.2/30 ───── to-<site> 198.18.<i>.1/30
 *
 * Each site's only route out is 198.18.0.0/15 via its transit peer (no default route: nothing beyond the
 * transit exists for it). The transit routes between sites, so every site can reach every other site's
 * address: a scan from one site to another is answered by the target's own kernel (RST for a port nobody
 * listens on), which is what makes "nothing open" a property of the target's processes rather than of a
 * firewall. A policy rule in transit refuses to forward anything from a site to the root namespace's address,
 * so the sites never reach the machine itself (the root namespace has no route to the sites either).
 */
export class DarkNet {
  readonly transit: Netns;
  readonly sites = new Map<string, Netns>();
  readonly #addr = new Map<string, string>();
  readonly rootLink: string;
  #rootLinkMade = false;
  readonly #unregister: () => void;
  #closed = false;

  private constructor(transit: Netns) {
    this.transit = transit;
    this.rootLink = `${NETNS_PREFIX}${process.pid}`;
    this.#unregister = onCleanup(() => this.#deleteRootLink());
  }

  /** Sweeps leftovers of crashed runs, then builds transit + one namespace per site (each with an agent). */
  static async create(siteNames: string[]): Promise<DarkNet> {
    if (process.getuid?.() !== 0) {
      throw new Error("network namespaces (ip netns add) need root: run the dark-cluster test and demo as root");
    }
    sweepLeftovers();
    if (siteNames.length > 250) throw new Error("at most 250 sites");
    const net = new DarkNet(Netns.create("transit"));
    try {
      const t = net.transit;
      t.sysctl({ "net.ipv4.ip_forward": 1 });
      ip(["link", "add", "name", net.rootLink, "type", "veth", "peer", "name", "to-root", "netns", t.name]);
      net.#rootLinkMade = true;
      writeSysctl(`net/ipv6/conf/${net.rootLink}/disable_ipv6`, "1");
      ip(["addr", "add", `${ROOT_HOST}/30`, "dev", net.rootLink]);
      ip(["link", "set", net.rootLink, "up"]);
      t.ip(["addr", "add", `${OVERLAY_HOST}/30`, "dev", "to-root"]);
      t.ip(["link", "set", "to-root", "up"]);
      siteNames.forEach((site, idx) => {
        const i = idx + 1;
        const s = Netns.create(site);
        net.sites.set(site, s);
        const tIf = `to-${site}`.slice(0, 15);
        ip(["link", "add", "name", tIf, "netns", t.name, "type", "veth", "peer", "name", "eth0", "netns", s.name]);
        t.ip(["addr", "add", `198.18.${i}.1/30`, "dev", tIf]);
        t.ip(["link", "set", tIf, "up"]);
        s.ip(["addr", "add", `198.18.${i}.2/30`, "dev", "eth0"]);
        s.ip(["link", "set", "eth0", "up"]);
        s.ip(["route", "add", "198.18.0.0/15", "via", `198.18.${i}.1`]);
        // Sites never reach the root namespace: forwarded packets to its address are refused in transit.
        t.ip(["rule", "add", "iif", tIf, "to", `${ROOT_HOST}/32`, "prohibit"]);
        net.#addr.set(site, `198.18.${i}.2`);
      });
      for (const s of net.sites.values()) await s.startAgent();
    } catch (err) {
      await net.close();
      throw err;
    }
    return net;
  }

  site(name: string): Netns {
    const s = this.sites.get(name);
    if (!s) throw new Error(`no site ${name}`);
    return s;
  }

  /** A site's address (its eth0). */
  addressOf(site: string): string {
    const a = this.#addr.get(site);
    if (!a) throw new Error(`no site ${site}`);
    return a;
  }

  /** Deletes every namespace and the root link. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const s of this.sites.values()) await s.close().catch(() => undefined);
    await this.transit.close().catch(() => undefined);
    this.#deleteRootLink();
  }

  #deleteRootLink(): void {
    this.#unregister();
    if (this.#rootLinkMade && listRootLinks().includes(this.rootLink)) {
      try {
        ip(["link", "del", this.rootLink]);
      } catch (err) {
        // Deleting the transit namespace destroys this veth's peer, and the kernel then removes this end by itself,
        // possibly between the listing above and the delete: gone is what we wanted. Anything else is an error.
        if (!/Cannot find device/.test((err as Error).message)) throw err;
      }
    }
    this.#rootLinkMade = false;
  }
}

/** Writes a sysctl of the root namespace (only ever one of the harness's own interfaces). */
function writeSysctl(path: string, value: string): void {
  writeFileSync(`/proc/sys/${path}`, value);
}
