/**
 * Where one scrape's time goes, hop by hop, for any pair of tunnelers (issue 23 item 1: the waits of one scrape,
 * also for the Go pair, which keeps no counters of its own to read). The e2e bench runs a c=1 loader through a
 * pair while `tcpdump` timestamps every packet on loopback; each packet is put on an edge of the path by its
 * ports, and each scrape's first packet on each edge gives the time spent at each hop:
 *
 *   loader -> dial side -> router -> host side -> upstream, and back
 *
 * The dial side is scrapez proxy or `ziti tunnel proxy`, the host side scrapez bind or `ziti tunnel host`. A hop
 * "in -> out" is the time between a process receiving something and its first packet on the next edge: its own
 * work and its wake-up, which is what a user-space tunneler adds. The router's hops and the upstream's are
 * printed for comparison: they are the same binaries for both pairs. Everything runs on one 2-core machine, so
 * the processes' wake-ups wait for a free core too.
 */
import { spawn } from "node:child_process";
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { median } from "./measure.js";

/** The ports that put a packet on an edge of the path. */
export interface HopPorts {
  /** The dial side's listening port (the loader's requests go to it). */
  dial: number;
  /** The router's edge listener. */
  router: number;
  /** The upstream (exporter) the host side forwards to. */
  upstream: number;
  /** Local ports of the dial side's connections to the router. */
  dialToRouter: readonly number[];
  /** Local ports of the host side's connections to the router. */
  hostToRouter: readonly number[];
}

/** One TCP segment with data, from tcpdump's `-tt -n -q` output. */
interface Segment {
  ms: number;
  from: number;
  to: number;
  bytes: number;
}

/** Median milliseconds of each hop over the scrapes seen; `scrapes` is how many were complete. */
export interface HopTimes {
  scrapes: number;
  /** Dial side: the request in from the loader -> its first packet to the router. */
  dialRequest: number;
  /** Router: that packet -> its first packet to the host side. */
  routerRequest: number;
  /** Host side: the request in from the router -> its first packet to the upstream. */
  hostRequest: number;
  /** Upstream: the request -> the first packet of its answer. */
  upstream: number;
  /** Host side: the answer's first packet in -> its first answer-sized packet to the router. */
  hostAnswer: number;
  /** Router: that packet -> the first answer-sized packet to the dial side. */
  routerAnswer: number;
  /** Dial side: that packet in -> its first packet to the loader. */
  dialAnswer: number;
  /** From the first to the last packet of the answer to the loader. */
  answerSpread: number;
  /** The loader's request in -> the last packet of the answer to it. */
  total: number;
}

/**
 * A packet to the router of at least this many bytes carries answer data: an acknowledgement or a window update is
 * a TLS record of about 110-140 bytes, and an answer's first payload (its head at least) is larger.
 */
const ANSWER_BYTES = 256;

const LINE = /^(\d+\.\d+) IP6? \S+?\.(\d+) > \S+?\.(\d+): tcp (\d+)/;

/** The segments with data in tcpdump `-tt -n -q` lines; other lines are left out. */
export function parseSegments(lines: Iterable<string>): Segment[] {
  const out: Segment[] = [];
  for (const line of lines) {
    const m = LINE.exec(line);
    if (!m || m[4] === "0") continue;
    out.push({ ms: Number(m[1]) * 1000, from: Number(m[2]), to: Number(m[3]), bytes: Number(m[4]) });
  }
  return out;
}

type Edge =
  | "loader>dial"
  | "dial>router"
  | "router>host"
  | "host>upstream"
  | "upstream>host"
  | "host>router"
  | "router>dial"
  | "dial>loader";

function edgeOf(s: Segment, p: HopPorts): Edge | undefined {
  const dialSide = (port: number) => p.dialToRouter.includes(port);
  const hostSide = (port: number) => p.hostToRouter.includes(port);
  if (s.to === p.dial) return "loader>dial";
  if (s.from === p.dial) return "dial>loader";
  if (s.to === p.upstream) return "host>upstream";
  if (s.from === p.upstream) return "upstream>host";
  if (s.to === p.router) return dialSide(s.from) ? "dial>router" : hostSide(s.from) ? "host>router" : undefined;
  if (s.from === p.router) return dialSide(s.to) ? "router>dial" : hostSide(s.to) ? "router>host" : undefined;
  return undefined;
}

/**
 * Each scrape starts with a packet from the loader (a request fits in one) and its times are the first packet
 * on each edge after the step before it; a scrape not seen to its answer is left out. At c=1 scrapes do not
 * overlap, so every packet between two requests belongs to the first.
 */
export function hopTimes(segments: readonly Segment[], ports: HopPorts): HopTimes {
  const rows: Record<Exclude<keyof HopTimes, "scrapes">, number>[] = [];
  let at: Partial<Record<Edge | "last", number>> | undefined;
  const finish = () => {
    const t = at;
    // The last step implies every one before it: each edge is taken only once the step before it was seen.
    if (t?.["dial>loader"] === undefined) return;
    rows.push({
      dialRequest: t["dial>router"]! - t["loader>dial"]!,
      routerRequest: t["router>host"]! - t["dial>router"]!,
      hostRequest: t["host>upstream"]! - t["router>host"]!,
      upstream: t["upstream>host"]! - t["host>upstream"]!,
      hostAnswer: t["host>router"]! - t["upstream>host"]!,
      routerAnswer: t["router>dial"]! - t["host>router"]!,
      dialAnswer: t["dial>loader"] - t["router>dial"]!,
      answerSpread: t.last! - t["dial>loader"],
      total: t.last! - t["loader>dial"]!,
    });
  };
  // Each edge's first packet counts once the step before it happened (an ack before the answer does not).
  const after: Record<Edge, Edge | undefined> = {
    "loader>dial": undefined,
    "dial>router": "loader>dial",
    "router>host": "dial>router",
    "host>upstream": "router>host",
    "upstream>host": "host>upstream",
    "host>router": "upstream>host",
    "router>dial": "host>router",
    "dial>loader": "router>dial",
  };
  for (const s of segments) {
    const e = edgeOf(s, ports);
    if (!e) continue;
    if (e === "loader>dial") {
      finish();
      at = { "loader>dial": s.ms };
      continue;
    }
    if (!at) continue;
    if (e === "dial>loader") at.last = s.ms;
    if (at[e] !== undefined || at[after[e]!] === undefined) continue;
    if ((e === "host>router" || e === "router>dial") && s.bytes < ANSWER_BYTES) continue;
    at[e] = s.ms;
  }
  finish();
  const hop = (k: keyof (typeof rows)[number]) => (rows.length ? median(rows.map((r) => r[k])) : NaN);
  return {
    scrapes: rows.length,
    dialRequest: hop("dialRequest"),
    routerRequest: hop("routerRequest"),
    hostRequest: hop("hostRequest"),
    upstream: hop("upstream"),
    hostAnswer: hop("hostAnswer"),
    routerAnswer: hop("routerAnswer"),
    dialAnswer: hop("dialAnswer"),
    answerSpread: hop("answerSpread"),
    total: hop("total"),
  };
}

/** `pid` and every process under it (scrapez proxy's workers are child processes). */
function withDescendants(pid: number): Set<number> {
  const parentOf = new Map<number, number>();
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      // The command name is in parentheses and may hold spaces: the fields after its last ")" are fixed.
      const stat = readFileSync(`/proc/${d}/stat`, "utf8");
      parentOf.set(Number(d), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
    } catch {
      /* the process ended meanwhile */
    }
  }
  const out = new Set([pid]);
  for (let grew = true; grew;) {
    grew = false;
    for (const [child, parent] of parentOf) {
      if (out.has(parent) && !out.has(child)) {
        out.add(child);
        grew = true;
      }
    }
  }
  return out;
}

/** Local ports of the TCP connections (IPv4 on this host) that `pid` or its children hold to `remotePort`. */
export function localPortsTo(pid: number, remotePort: number): number[] {
  const inodes = new Set<string>();
  for (const p of withDescendants(pid)) {
    let fds: string[] = [];
    try {
      fds = readdirSync(`/proc/${p}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${p}/fd/${fd}`));
        if (m) inodes.add(m[1]!);
      } catch {
        /* closed meanwhile */
      }
    }
  }
  const ports: number[] = [];
  // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
  for (const line of readFileSync("/proc/net/tcp", "utf8").split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10 || !inodes.has(f[9]!)) continue;
    if (parseInt(f[2]!.split(":")[1]!, 16) === remotePort) ports.push(parseInt(f[1]!.split(":")[1]!, 16));
  }
  return ports;
}

/**
 * Runs `load` while tcpdump records the packets to and from `ports` on loopback, and returns its lines, or why
 * it could not (tcpdump missing or not allowed to capture).
 */
export async function capture(ports: readonly number[], load: () => Promise<unknown>): Promise<string[] | string> {
  const filter = ports.map((p) => `tcp port ${p}`).join(" or ");
  const td = spawn("tcpdump", ["-i", "lo", "-n", "-tt", "-q", "-l", "-U", filter], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  td.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
  td.stderr.setEncoding("utf8").on("data", (d: string) => (err = (err + d).slice(-2000)));
  const exited = new Promise<number | string>((resolve) => {
    td.on("error", (e) => resolve(e.message));
    td.on("exit", (code) => resolve(code ?? 0));
  });
  // tcpdump says "listening on lo" once it captures; give up after 10 s or when it exits first.
  const started = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), 10_000);
    const settle = (ok: boolean) => {
      clearTimeout(timer);
      resolve(ok);
    };
    td.stderr.on("data", () => /listening on/.test(err) && settle(true));
    void exited.then(() => settle(false));
  });
  if (!started) {
    td.kill();
    const why = await exited;
    return (
      `tcpdump did not start (${typeof why === "string" ? why : `exit ${why}`}: ${err.trim().slice(-300)}); ` +
      "it is a Debian package scripts/setup.sh installs, and capturing needs root or CAP_NET_RAW"
    );
  }
  try {
    await load();
  } finally {
    // Packets still in flight when the load ends are caught by the short wait.
    await new Promise((r) => setTimeout(r, 200));
    td.kill("SIGINT");
    await exited;
  }
  return out.split("\n");
}

/** One pair of tunnelers on one payload, as `measureHops` needs it. */
export interface HopPath {
  label: string;
  dialPid: number;
  dialPort: number;
  hostPid: number;
  upstream: number;
  router: number;
  /** Runs the c=1 loader through the pair. */
  load: () => Promise<unknown>;
}

/** Hop times of each path in turn (one capture each), or why they could not be taken. */
export async function measureHops(paths: readonly HopPath[]): Promise<{ label: string; hops: HopTimes }[] | string> {
  const out: { label: string; hops: HopTimes }[] = [];
  for (const p of paths) {
    const ports: HopPorts = {
      dial: p.dialPort,
      router: p.router,
      upstream: p.upstream,
      dialToRouter: localPortsTo(p.dialPid, p.router),
      hostToRouter: localPortsTo(p.hostPid, p.router),
    };
    const lines = await capture([p.dialPort, p.router, p.upstream], p.load);
    if (typeof lines === "string") return lines;
    out.push({ label: p.label, hops: hopTimes(parseSegments(lines), ports) });
  }
  return out;
}

const COLUMNS: [string, keyof HopTimes][] = [
  ["dial: request in->out", "dialRequest"],
  ["router", "routerRequest"],
  ["host: request in->out", "hostRequest"],
  ["upstream", "upstream"],
  ["host: answer in->out", "hostAnswer"],
  ["router", "routerAnswer"],
  ["dial: answer in->out", "dialAnswer"],
  ["answer spread", "answerSpread"],
  ["total", "total"],
];

/** The hop table: one row per path, milliseconds. */
export function formatHops(rows: readonly { label: string; hops: HopTimes }[]): string {
  const table = [
    ["pair, payload", "scrapes", ...COLUMNS.map(([n]) => n)],
    ...rows.map((r) => [r.label, String(r.hops.scrapes), ...COLUMNS.map(([, k]) => r.hops[k].toFixed(3))]),
  ];
  const w = table[0]!.map((_, i) => Math.max(...table.map((r) => r[i]!.length)));
  return `${table.map((r) => r.map((x, i) => x.padEnd(w[i]!)).join("  ")).join("\n")}\n`;
}
