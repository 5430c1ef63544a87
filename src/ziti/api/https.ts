/**
 * One bounded HTTPS exchange, shared by the controller client (controller.ts) and enrollment (enroll.ts): a request,
 * a deadline for the complete answer, a size limit on the body (declared and received), and an optional check of the
 * response before its body is read (enrollment pins the controller's certificate that way). The answer is raw:
 * callers map statuses and errors to their own ZitiErrors. EgressAgent is the https.Agent whose connections go
 * through the egress proxy (HTTPS_PROXY, egressProxy) where the route says so.
 */
import type http from "node:http";
import https from "node:https";
import type { Duplex } from "node:stream";
import tls from "node:tls";
import { egressSocket, type EgressRoute } from "../transport/egress-proxy.js";

export interface ExchangeOptions {
  method: string;
  headers?: Record<string, string>;
  body?: Buffer | string | undefined;
  /** TLS and agent options (agent, ca, rejectUnauthorized, servername, ...). */
  tls?: https.RequestOptions;
  timeoutMs: number;
  maxBodyBytes: number;
  /** Runs on the response head; an Error returned aborts the exchange with it. */
  check?: (res: http.IncomingMessage) => Error | undefined;
}

export interface ExchangeAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** A failed exchange: `cause` is the network or limit error; whether it failed on a reused socket, before any answer. */
export class ExchangeError extends Error {
  constructor(
    override readonly cause: Error,
    readonly reusedSocket: boolean,
    readonly answered: boolean,
  ) {
    super(cause.message, { cause });
    this.name = "ExchangeError";
  }
}

export function httpsExchange(url: URL, o: ExchangeOptions): Promise<ExchangeAnswer> {
  const body = typeof o.body === "string" ? Buffer.from(o.body) : o.body;
  const headers = { ...o.headers, ...(body ? { "content-length": String(body.length) } : {}) };
  return new Promise((resolve, reject) => {
    let answered = false;
    let settled = false;
    const done = (fn: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(deadline);
      fn();
    };
    const req = https.request(url, { ...o.tls, method: o.method, headers }, (res) => {
      answered = true;
      const refused = o.check?.(res);
      if (refused) return void req.destroy(refused);
      const declared = Number(res.headers["content-length"] ?? 0);
      if (declared > o.maxBodyBytes) {
        return void req.destroy(
          new Error(`answer of ${declared} bytes is larger than the ${o.maxBodyBytes}-byte limit`),
        );
      }
      const chunks: Buffer[] = [];
      let size = 0;
      res.on("data", (c: Buffer) => {
        size += c.length;
        if (size > o.maxBodyBytes)
          return void req.destroy(new Error(`answer is larger than the ${o.maxBodyBytes}-byte limit`));
        chunks.push(c);
      });
      res.on("end", () =>
        done(() => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) })),
      );
      res.on("error", (err) => req.destroy(err));
    });
    const deadline = setTimeout(
      () => req.destroy(new Error(`no complete answer within ${o.timeoutMs} ms`)),
      o.timeoutMs,
    );
    req.on("error", (err) => done(() => reject(new ExchangeError(err, req.reusedSocket, answered))));
    req.end(body);
  });
}

/** How long a CONNECT through the egress proxy may take when the request gives no shorter deadline. */
const TUNNEL_TIMEOUT_MS = 15_000;

/**
 * An https.Agent whose connections to a destination the route sends through a proxy are TLS inside its CONNECT
 * tunnel: the request's TLS options (client certificate, `ca`, servername, checks) apply unchanged, only the
 * byte stream underneath differs. Destinations that go direct (no proxy, NO_PROXY) use https.Agent's own path.
 */
export class EgressAgent extends https.Agent {
  readonly #route: EgressRoute | undefined;

  constructor(route: EgressRoute | undefined, opts: https.AgentOptions = {}) {
    super(opts);
    this.#route = route;
  }

  override createConnection(
    options: http.ClientRequestArgs,
    cb?: (err: Error | null, socket: Duplex) => void,
  ): Duplex | undefined {
    const host = String(options.host ?? options.hostname ?? "localhost").replace(/^\[|\]$/g, "");
    const port = Number(options.port ?? 443);
    const proxy = this.#route?.proxyFor(host, port);
    if (!proxy) return (super.createConnection as (o: unknown, c: unknown) => Duplex)(options, cb);
    const timeoutMs = typeof options.timeout === "number" && options.timeout > 0 ? options.timeout : TUNNEL_TIMEOUT_MS;
    egressSocket(this.#route, host, port, timeoutMs).then(
      (tunnel) => {
        const socket = tls.connect({ ...(options as tls.ConnectionOptions), socket: tunnel! });
        cb?.(null, socket);
      },
      (err: Error) => cb?.(err, undefined as unknown as Duplex),
    );
    return undefined;
  }
}
