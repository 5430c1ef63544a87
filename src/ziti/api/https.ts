/**
 * One bounded HTTPS exchange, shared by the controller client (controller.ts) and enrollment (enroll.ts): a request,
 * a deadline for the complete answer, a size limit on the body (declared and received), and an optional check of the
 * response before its body is read (enrollment pins the controller's certificate that way). The answer is raw:
 * callers map statuses and errors to their own ZitiErrors.
 */
import type http from "node:http";
import https from "node:https";

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
