/**
 * Test helpers for `scrapez proxy`: an in-memory stand-in for the overlay whose dial() returns one end of a real
 * loopback TCP connection to a local upstream on a runtime-chosen 127.0.0.1 port, recording every dial; upstream
 * servers; a proxy started from a parsed config; and HTTP helpers. These prove the proxy's HTTP logic only (the real
 * overlay with a real Prometheus is test/integration/proxy.test.ts).
 */
import { EventEmitter } from "node:events";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Duplex } from "node:stream";
import { createLogger } from "../../src/common/log.js";
import { parseProxyConfig } from "../../src/proxy/config.js";
import { ProxyServer } from "../../src/proxy/server.js";
import type { DialOverlay, OverlayDialOptions, OverlayService } from "../../src/overlay/types.js";
import { ErrorCodes, ZitiError } from "../../src/ziti/index.js";

export { makePki } from "./pki.js";

export interface DialRecord {
  service: string;
  identity?: string;
  timeoutMs?: number;
}

/** The overlay stand-in: services, replicas and where each (service, replica) really goes. */
export class StandInOverlay extends EventEmitter implements DialOverlay {
  readonly dials: DialRecord[] = [];
  list: OverlayService[] = [];
  /** `service` or `identity~service` -> loopback port. */
  readonly routes = new Map<string, number>();
  readonly replicaMap = new Map<string, string[]>();
  /** Services whose dial never completes: rejects with ZITI_DIAL_TIMEOUT after timeoutMs, as the SDK does. */
  readonly hang = new Set<string>();
  /** Services whose dial rejects with this error (or any other value: a buggy overlay). */
  readonly fail = new Map<string, unknown>();
  /** Services whose dial succeeds with a stream that fails at once (reset before a byte arrives). */
  readonly broken = new Set<string>();
  /** When set, services() rejects with it. */
  servicesError: Error | undefined;
  closed = false;
  servicesCalls = 0;
  /** No warm-up dials (src/proxy/warmup.ts) unless a test sets it: most tests count and order the dials requests make. */
  dialAhead = false;

  constructor(readonly identityName = "prometheus-central") {
    super();
  }

  add(name: string, opts: { port?: number; attrs?: string[]; permissions?: string[]; id?: string } = {}): this {
    this.list.push({
      id: opts.id ?? `id-${name}`,
      name,
      permissions: opts.permissions ?? ["Dial"],
      roleAttributes: opts.attrs ?? [],
    });
    if (opts.port !== undefined) this.routes.set(name, opts.port);
    return this;
  }

  async services(): Promise<OverlayService[]> {
    this.servicesCalls++;
    if (this.servicesError) throw this.servicesError;
    return this.list.map((s) => ({ ...s }));
  }

  async replicas(service: string): Promise<string[]> {
    return this.replicaMap.get(service) ?? [];
  }

  async dial(service: string, opts: OverlayDialOptions = {}): Promise<Duplex> {
    this.dials.push({
      service,
      ...(opts.identity !== undefined ? { identity: opts.identity } : {}),
      ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
    });
    if (this.fail.has(service)) throw this.fail.get(service);
    if (this.broken.has(service)) {
      const d = new Duplex({ read() {}, write: (_c, _e, cb) => cb() });
      setImmediate(() =>
        d.destroy(Object.assign(new Error("connection reset by the far end"), { code: "ECONNRESET" })),
      );
      return d;
    }
    if (this.hang.has(service)) {
      await new Promise((r) => setTimeout(r, opts.timeoutMs ?? 10_000));
      throw new ZitiError(ErrorCodes.DIAL_TIMEOUT, `dial ${service} timed out after ${opts.timeoutMs} ms`);
    }
    const svc = this.list.find((s) => s.name === service);
    if (!svc) throw new ZitiError(ErrorCodes.SERVICE_NOT_FOUND, `service "${service}" is not visible`);
    if (!svc.permissions.includes("Dial"))
      throw new ZitiError(ErrorCodes.NOT_AUTHORIZED, `may not Dial service "${service}"`);
    const port = this.routes.get(opts.identity !== undefined ? `${opts.identity}~${service}` : service);
    if (port === undefined)
      throw new ZitiError(ErrorCodes.DIAL_FAILED, `dial ${service} failed: service has no terminators`);
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: "127.0.0.1", port }, () => resolve(s));
      s.once("error", reject);
    });
  }

  /** Changes the list and signals it, as the SDK does after a refresh. */
  changed(): void {
    this.emit("servicesChanged", this.list);
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  dialsOf(service: string): DialRecord[] {
    return this.dials.filter((d) => d.service === service);
  }
}

export interface SeenRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
}

/** A real upstream HTTP server on 127.0.0.1:<runtime port>, recording requests and TCP connections. */
export class Upstream {
  readonly seen: SeenRequest[] = [];
  connections = 0;
  openSockets = new Set<net.Socket>();
  readonly server: http.Server;
  port = 0;

  constructor(handler: (req: http.IncomingMessage, res: http.ServerResponse) => void) {
    this.server = http.createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
      this.seen.push({
        method: req.method ?? "",
        url: req.url ?? "",
        headers: req.headers,
        rawHeaders: req.rawHeaders,
      });
      handler(req, res);
    });
    this.server.on("connection", (s: net.Socket) => {
      this.connections++;
      this.openSockets.add(s);
      s.once("close", () => this.openSockets.delete(s));
    });
  }

  async start(): Promise<this> {
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", r));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this;
  }

  get last(): SeenRequest {
    return this.seen[this.seen.length - 1]!;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

/** A TCP server that counts connections and drops them: proof nothing connected to a requested host. */
export class Trap {
  touched = 0;
  readonly server = net.createServer((s) => {
    this.touched++;
    s.destroy();
  });
  port = 0;
  async start(): Promise<this> {
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", r));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this;
  }
  close(): void {
    this.server.close();
  }
}

/** A temp dir with an (empty) identity file, secrets and whatever else a test writes. */
export function testDir(): { dir: string; file(name: string, text: string): string; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), "scrapez-proxy-unit-"));
  writeFileSync(join(dir, "id.json"), "{}");
  return {
    dir,
    file(name, text) {
      writeFileSync(join(dir, name), text);
      return join(dir, name);
    },
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

export interface Running {
  proxy: ProxyServer;
  port: number;
  logs: Record<string, unknown>[];
  close(): Promise<void>;
}

/** Starts a ProxyServer on 127.0.0.1:<runtime port> over the given overlays with config `raw` (plus identities). */
export async function startProxy(
  dir: string,
  overlays: DialOverlay[],
  raw: Record<string, unknown> = {},
): Promise<Running> {
  const config = parseProxyConfig({ identities: ["id.json"], listen: "127.0.0.1:0", ...raw }, "proxy.yaml", dir);
  const logs: Record<string, unknown>[] = [];
  const log = createLogger("debug", {}, (l) => logs.push(JSON.parse(l) as Record<string, unknown>));
  const proxy = new ProxyServer(overlays, config, log);
  const { port } = await proxy.start();
  return { proxy, port, logs, close: () => proxy.close() };
}

export interface Resp {
  status: number;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  body: Buffer;
  text: string;
  ms: number;
}

/** One request to the proxy; `target` is an absolute URL (proxy form) or a path. No client-side keep-alive. */
export function request(
  port: number,
  target: string,
  opts: { method?: string; headers?: Record<string, string>; timeoutMs?: number; agent?: http.Agent } = {},
): Promise<Resp> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    http
      .request(
        {
          host: "127.0.0.1",
          port,
          path: target,
          method: opts.method ?? "GET",
          headers: opts.headers,
          agent: opts.agent ?? false,
          ...(opts.timeoutMs !== undefined ? { timeout: opts.timeoutMs } : {}),
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => {
            const body = Buffer.concat(chunks);
            resolve({
              status: res.statusCode ?? 0,
              headers: res.headers,
              rawHeaders: res.rawHeaders,
              body,
              text: body.toString("utf8"),
              ms: Date.now() - started,
            });
          });
          res.on("error", reject);
        },
      )
      .on("timeout", function (this: http.ClientRequest) {
        this.destroy(new Error(`no answer from the proxy within ${opts.timeoutMs} ms for ${target}`));
      })
      .on("error", reject)
      .end();
  });
}

/** Sends a raw CONNECT (plus optional first bytes) and returns the socket with everything read up to the blank line. */
export function connect(
  port: number,
  authority: string,
  headers: Record<string, string> = {},
  head = "",
): Promise<{ socket: net.Socket; status: number; response: string }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1", () => {
      const lines = Object.entries({ host: authority, ...headers }).map(([k, v]) => `${k}: ${v}\r\n`);
      socket.write(`CONNECT ${authority} HTTP/1.1\r\n${lines.join("")}\r\n${head}`);
    });
    let got = Buffer.alloc(0);
    const onData = (d: Buffer) => {
      got = Buffer.concat([got, d]);
      const end = got.indexOf("\r\n\r\n");
      if (end < 0) return;
      socket.off("data", onData);
      const response = got.subarray(0, end + 4).toString("latin1");
      const rest = got.subarray(end + 4);
      socket.pause();
      if (rest.length) socket.unshift(rest);
      resolve({ socket, status: Number(/^HTTP\/1\.1 (\d{3})/.exec(response)?.[1] ?? 0), response });
    };
    socket.on("data", onData);
    socket.once("error", reject);
    socket.once("close", () => {
      if (!got.includes("\r\n\r\n")) reject(new Error(`CONNECT closed with ${JSON.stringify(got.toString())}`));
    });
  });
}

/** Reads a socket to its end. */
export function readAll(s: Duplex): Promise<string> {
  return new Promise((resolve) => {
    let out = "";
    s.on("data", (d: Buffer) => (out += d.toString("utf8")));
    s.once("end", () => resolve(out));
    s.once("close", () => resolve(out));
    s.resume();
  });
}

/** Sums the samples of a metric whose line starts with `prefix` in the proxy's /metrics text. */
export function metric(text: string, prefix: string): number {
  return text
    .split("\n")
    .filter((l) => l.startsWith(prefix))
    .reduce((sum, l) => sum + Number(l.split(" ").pop()), 0);
}
