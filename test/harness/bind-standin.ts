/**
 * An in-memory stand-in for the overlay on the bind side, and raw upstreams: each "overlay connection" is one end of
 * an in-process Duplex pair handed to the listener's "connection" event, exactly as the SDK hands a ZitiConnection.
 * Used by the bind server, hardening, path and fuzz unit tests; the proof over the real overlay is test/integration/bind*.test.ts.
 */
import { EventEmitter } from "node:events";
import http from "node:http";
import net from "node:net";
import { Duplex } from "node:stream";

/**
 * Two connected in-memory Duplex ends (Node 20 has no stream.duplexPair). With `stalled()`, writes from the server
 * end are never acknowledged: a dialer that does not read.
 */
export function duplexPair(): { client: Duplex; server: Duplex; stall: () => void } {
  const ends: Duplex[] = [];
  let stalled = false;
  const make = (other: () => Duplex, isServer: boolean) =>
    new Duplex({
      read() {},
      write(chunk: Buffer, _enc, cb) {
        if (isServer && stalled) return; // never calls back: the bytes are not taken
        other().push(chunk);
        cb();
      },
      final(cb) {
        other().push(null);
        cb();
      },
      destroy(err, cb) {
        if (!other().destroyed) other().destroy();
        cb(err);
      },
    });
  ends.push(
    make(() => ends[1]!, false),
    make(() => ends[0]!, true),
  );
  // The dialer's end passes for a socket in an http.Agent's pool (the server's end stays without timers, so the
  // bind side's deadlines are shown not to rely on socket timers).
  const self = () => ends[0];
  Object.assign(ends[0]!, { setKeepAlive: self, setNoDelay: self, setTimeout: self, ref: self, unref: self });
  return { client: ends[0]!, server: ends[1]!, stall: () => (stalled = true) };
}

export class FakeListener extends EventEmitter {
  state = "bound";
  closed = false;
  constructor(
    readonly service: string,
    readonly opts: Record<string, unknown>,
  ) {
    super();
  }
  async close(): Promise<void> {
    this.closed = true;
    this.state = "closed";
  }
}

export class FakeOverlay {
  readonly identityName = "bind-host";
  readonly calls: { service: string; opts: Record<string, unknown> }[] = [];
  readonly listeners: FakeListener[] = [];
  /** Services whose listen() rejects, as when no Bind policy lets this identity host them. */
  readonly refuse = new Set<string>();
  /** When set, every dial arrives unverified (a caller that only claims a name). */
  unverified = false;

  /**
   * @param verifiedKeys callers whose caller proofs the stand-in SDK "verified", with their keys' pins: with it, a
   *   caller named there arrives with `callerKey` (as the SDK hands a connection whose proof verified) and any other
   *   with `callerProofError`; without it, connections carry no caller information beyond `callerId`.
   */
  constructor(readonly verifiedKeys?: Readonly<Record<string, string>>) {}

  async listen(service: string, opts: Record<string, unknown> = {}): Promise<FakeListener> {
    this.calls.push({ service, opts });
    if (this.refuse.has(service)) throw new Error(`no Bind permission for service "${service}"`);
    const l = new FakeListener(service, opts);
    this.listeners.push(l);
    return l;
  }

  /** Open listeners of a service. */
  open(service: string): FakeListener[] {
    return this.listeners.filter((l) => l.service === service && !l.closed);
  }

  /**
   * Dials `service` as `callerId` ("prom" when not given; `undefined` given: no caller id at all), to its
   * `which`-th listener; returns the dialer's end and `stall`.
   */
  dialRaw(
    service: string,
    ...rest: [callerId?: string | undefined, which?: number]
  ): { conn: Duplex; stall: () => void } {
    const callerId = rest.length === 0 ? "prom" : rest[0];
    const which = rest[1] ?? 0;
    const l = this.open(service)[which];
    if (!l) throw new Error(`stand-in: service "${service}" is not bound`);
    const { client, server, stall } = duplexPair();
    Object.assign(server, { callerId, service, connId: 1, circuitId: "c1" });
    if (this.verifiedKeys) {
      const key = callerId === undefined || this.unverified ? undefined : this.verifiedKeys[callerId];
      Object.assign(
        server,
        key ? { callerKey: key, callerVerifiedBy: "proof" } : { callerProofError: "no caller proof (stand-in)" },
      );
    }
    l.emit("connection", server);
    return { conn: client, stall };
  }

  dial(service: string, ...rest: [callerId?: string | undefined, which?: number]): Duplex {
    return this.dialRaw(service, ...rest).conn;
  }
}

export interface Resp {
  status: number;
  statusMessage: string;
  headers: http.IncomingHttpHeaders;
  body: string;
  ms: number;
}

/** One HTTP request over a stand-in overlay connection. */
export function scrape(
  overlay: FakeOverlay,
  service: string,
  path = "/metrics",
  headers: Record<string, string> = {},
): Promise<Resp> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: service, path, headers, createConnection: () => overlay.dial(service) as unknown as net.Socket },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (body += d));
        res.on("end", () =>
          resolve({
            status: res.statusCode ?? 0,
            statusMessage: res.statusMessage ?? "",
            headers: res.headers,
            body,
            ms: Date.now() - started,
          }),
        );
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end();
  });
}

/** Everything a stand-in connection receives until it closes (it ends its side when the peer does), and when. */
export function collect(conn: Duplex): Promise<{ text: string; ms: number }> {
  const started = Date.now();
  return new Promise((resolve) => {
    let text = "";
    conn.on("data", (d: Buffer) => (text += d.toString("latin1")));
    conn.on("end", () => conn.end());
    conn.on("error", () => undefined);
    conn.once("close", () => resolve({ text, ms: Date.now() - started }));
  });
}

/**
 * A raw TCP upstream on a runtime-chosen loopback port: `answer` gets each connection once a request head arrived
 * (or at once with `onConnect`), and writes whatever bytes it likes.
 */
export async function rawUpstream(
  answer: (socket: net.Socket) => void,
  opts: { onConnect?: boolean } = {},
): Promise<{ url: string; server: net.Server; open: () => Promise<number>; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
    s.on("error", () => undefined);
    if (opts.onConnect) return answer(s);
    let head = "";
    const onData = (d: Buffer) => {
      head += d.toString("latin1");
      if (!head.includes("\r\n\r\n")) return;
      s.off("data", onData);
      answer(s);
    };
    s.on("data", onData);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    server,
    open: () => new Promise((r, j) => server.getConnections((e, n) => (e ? j(e) : r(n)))),
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
