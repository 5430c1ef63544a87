/**
 * One scrape on the bind's relay (./relay.ts): a request head already parsed is checked (caller, method, path) as
 * ./exchange.ts checks it, sent to the exporter on a pooled socket (./upstream-pool.ts), and the exporter's answer
 * passed back with its head checked and rewritten (hop-by-hop headers out, our framing header in) and its body's
 * bytes as they came: no HTTP client, server or re-encoding in between (src/common/http1.ts finds where it ends).
 */
import { EventEmitter } from "node:events";
import type net from "node:net";
import { rawAnswer } from "../common/answer.js";
import { SCRAPE_TIMEOUT_HEADER } from "../common/deadline.js";
import { answerProblem, hopByHopRaw, keepsAlive, requestHead, type ForwardFailure } from "../common/forward.js";
import {
  BodyScanner,
  checkAnswerStart,
  fieldValues,
  type Framing,
  HeadReader,
  Http1Error,
  parseResponseHead,
  type RawHeaders,
  type RequestHead,
  responseFraming,
} from "../common/http1.js";
import type { Logger } from "../common/log.js";
import type { OverlayConnection } from "../overlay/types.js";
import { callerOf } from "./admission.js";
import type { BindTarget } from "./config.js";
import { pathAllowed } from "./config.js";
import { statusLabel, type BindMetrics } from "./metrics.js";
import { normalizeRequestTarget } from "./paths.js";
import { audit, forwardFailure, upstreamTimeoutMs } from "./respond.js";
import type { Lease, UpstreamPool } from "./upstream-pool.js";

export interface RelayTarget {
  target: BindTarget;
  upstream: { host: string };
  pool: UpstreamPool;
}

export interface RelayExchangeDeps {
  metrics: BindMetrics;
  log: Logger;
  draining: () => boolean;
}

/** Upstream errors of a reused socket that mean it died while idle: the request goes once more, on a new one. */
const STALE = new Set(["ECONNRESET", "EPIPE"]);

/**
 * One exchange. Emits 'close' once, when it is over (answered, cut, or its connection gone); `keepAlive` then says
 * whether the connection may carry the next request.
 */
export class RelayExchange extends EventEmitter {
  /** False once the connection must close after this answer (the request asked, or a graceful stop began). */
  keepAlive: boolean;
  /** Our head has been written: from now on the only failure signal left is cutting the connection. */
  headSent = false;
  readonly #conn: OverlayConnection;
  readonly #rt: RelayTarget;
  readonly #deps: RelayExchangeDeps;
  readonly #req: RequestHead;
  readonly #started = process.hrtime.bigint();
  #status = 0;
  #bytes = 0;
  #upstreamErrorKind: string | undefined;
  #timer: NodeJS.Timeout | undefined;
  #socket: net.Socket | undefined;
  #cancelWait: (() => void) | undefined;
  /** Stops listening to the exporter's socket (before it is destroyed for a reason of ours). */
  #detach: (() => void) | undefined;
  /** Writes to the connection not yet accepted by it (their callbacks not called). */
  #pending = 0;
  /** Everything is written: the exchange is over once the connection accepted it all. */
  #finishing = false;
  #over = false;

  constructor(conn: OverlayConnection, rt: RelayTarget, req: RequestHead, deps: RelayExchangeDeps) {
    super();
    this.#conn = conn;
    this.#rt = rt;
    this.#req = req;
    this.#deps = deps;
    this.keepAlive = keepsAlive(req.minor, req.headers);
  }

  start(): void {
    const t = this.#rt.target;
    const req = this.#req;
    if (this.#deps.draining()) {
      this.keepAlive = false;
      return this.#answer(503, `scrapez bind: service "${t.service}": shutting down`);
    }
    const who = callerOf(this.#conn, t.service, t.allow);
    const rawUrl = req.target;
    const q = rawUrl.indexOf("?");
    const rawPath = q < 0 ? rawUrl : rawUrl.slice(0, q);
    const target = normalizeRequestTarget(rawUrl);
    const path = target.ok ? target.path : rawPath;
    this.once("close", () => this.#record(who, path, rawPath, target.ok ? undefined : target.reason));
    if (who.refusal) return this.#answer(403, who.refusal);
    if (req.method !== "GET" && req.method !== "HEAD") {
      return this.#answer(405, `scrapez bind: service "${t.service}" answers only GET and HEAD, not ${req.method}`, {
        allow: "GET, HEAD",
      });
    }
    if (!target.ok) {
      return this.#answer(400, `scrapez bind: service "${t.service}": ambiguous request path: ${target.reason}`);
    }
    if (!pathAllowed(t.paths, path)) {
      return this.#answer(
        404,
        `scrapez bind: service "${t.service}" does not expose ${path} (allowed: ${t.paths.join(", ")})`,
      );
    }
    const timeoutMs = upstreamTimeoutMs(
      fieldValues(req.headers, SCRAPE_TIMEOUT_HEADER)[0],
      t.timeoutSeconds,
      t.maxTimeoutSeconds,
    );
    this.#timer = setTimeout(() => this.#deadline(timeoutMs), timeoutMs);
    // What was checked is what is fetched: the exporter gets the normalized path, never the raw one, with the
    // dialer's end-to-end headers and our Host.
    const head = requestHead(req.method, target.path + target.query, this.#rt.upstream.host, req.headers);
    this.#send(head, timeoutMs, 0);
  }

  /** The exchange's end from outside: its connection closed. */
  abort(): void {
    if (this.#over) return;
    this.keepAlive = false;
    this.#dropSocket();
    this.#end();
  }

  /** Lets the exporter's socket go, unheard: what it does next is not this exchange's business. */
  #dropSocket(): void {
    this.#detach?.();
    this.#socket?.destroy();
  }

  #send(head: Buffer, timeoutMs: number, attempt: number): void {
    const wait = this.#rt.pool.acquire((lease) => {
      this.#cancelWait = undefined;
      if (this.#over) return this.#rt.pool.release(lease.socket);
      this.#relay(lease, head, timeoutMs, attempt);
    });
    this.#cancelWait = wait.cancel;
  }

  #relay(lease: Lease, request: Buffer, timeoutMs: number, attempt: number): void {
    const socket = lease.socket;
    this.#socket = socket;
    const reader = new HeadReader();
    let scanner: BodyScanner | undefined;
    let chunkOut = false;
    let reusable = true;
    let got = 0;
    let checked = 0;
    const fail = (f: ForwardFailure) => {
      detach();
      socket.destroy();
      if (this.headSent) return this.#cut();
      const out = forwardFailure(f, this.#rt.target, timeoutMs);
      if (out.kind) this.#upstreamErrorKind = out.kind;
      this.#answer(out.status, out.text);
    };
    const onError = (err: Error & { code?: string }) => {
      if (!this.headSent && lease.reused && got === 0 && attempt === 0 && STALE.has(err.code ?? "")) {
        detach();
        socket.destroy();
        return this.#send(request, timeoutMs, 1);
      }
      fail({ kind: "error", err });
    };
    const onEnd = () => {
      if (scanner?.framing.kind === "close") {
        detach();
        socket.destroy();
        return this.#finish("0\r\n\r\n");
      }
      if (got === 0 && lease.reused && attempt === 0) {
        detach();
        socket.destroy();
        return this.#send(request, timeoutMs, 1);
      }
      fail(
        this.headSent
          ? { kind: "error", err: Object.assign(new Error("the answer was cut short"), { code: "ECONNRESET" }) }
          : { kind: "invalid", problem: { kind: "no-answer" } },
      );
    };
    const onData = (piece: Buffer) => {
      got += piece.length;
      try {
        if (!scanner) {
          if (checked < 5) checked = checkAnswerStart(piece, checked);
          const found = reader.push(piece);
          if (!found) return;
          const head = parseResponseHead(found.head);
          const problem = answerProblem(head.status, head.reason, head.headers);
          if (problem) return fail({ kind: "invalid", problem });
          const framing = responseFraming(this.#req.method, head.status, head.headers);
          if (!keepsAlive(head.minor, head.headers)) reusable = false;
          scanner = new BodyScanner(framing);
          chunkOut = framing.kind === "close";
          this.#status = head.status;
          this.#conn.cork();
          this.#write(answerHead(head.status, head.reason, head.headers, framing, this.keepAlive));
          this.headSent = true;
          piece = found.rest;
        }
        const n = scanner.scan(piece);
        this.#bytes = scanner.data;
        if (n > 0) {
          const body = piece.subarray(0, n);
          if (!this.#write(chunkOut ? Buffer.concat([Buffer.from(`${n.toString(16)}\r\n`), body, CRLF]) : body)) {
            socket.pause();
            this.#conn.once("drain", () => socket.resume());
          }
        }
        if (n < piece.length) reusable = false; // bytes after the answer: not HTTP we understand
        this.#uncork();
        if (scanner.done) {
          detach();
          if (reusable) this.#rt.pool.release(socket);
          else socket.destroy();
          this.#finish();
        }
      } catch (err) {
        this.#uncork();
        if (err instanceof Http1Error) {
          return fail({ kind: "error", err: Object.assign(new Error(err.message), { code: err.code }) });
        }
        // A bug, or input we failed to foresee: it ends this exchange only.
        this.#deps.log.error("relay failed; connection closed", { what: "exporter answer", reason: String(err) });
        detach();
        socket.destroy();
        this.#cut();
      }
    };
    const detach = () => {
      socket.off("data", onData);
      socket.off("error", onError);
      socket.off("end", onEnd);
      socket.off("close", onEnd);
    };
    this.#detach = detach;
    socket.on("data", onData);
    socket.on("error", onError);
    socket.on("end", onEnd);
    socket.on("close", onEnd);
    socket.write(request);
    socket.resume();
  }

  /** Writes to the connection, counting the write until the connection accepts it (see #finish). */
  #write(b: Buffer | string): boolean {
    if (this.#conn.destroyed) return true;
    this.#pending++;
    return this.#conn.write(b, () => {
      this.#pending--;
      if (this.#finishing && this.#pending === 0) this.#end();
    });
  }

  #uncork(): void {
    if (this.#conn.writableCorked) process.nextTick(() => this.#conn.uncork());
  }

  /** One of our own one-line answers (as answerPlain words them), when no answer has begun. */
  #answer(status: number, text: string, extra: Record<string, string> = {}): void {
    if (this.headSent) return this.#cut();
    this.#status = status;
    const raw = rawAnswer(status, text, { connection: this.keepAlive ? "keep-alive" : "close", ...extra });
    // A HEAD gets the head alone (its Content-Length still says what a GET's body would be).
    this.#write(this.#req.method === "HEAD" ? raw.slice(0, raw.indexOf("\r\n\r\n") + 4) : raw);
    this.headSent = true;
    this.#finish();
  }

  /**
   * The answer is all written; the exchange ends when the connection has accepted all of it (a dialer that stops
   * reading holds it open until the request deadline closes the connection, as a response's 'close' did).
   */
  #finish(tail?: string): void {
    if (tail) this.#write(tail);
    this.#finishing = true;
    if (this.#pending === 0 || this.#conn.destroyed) this.#end();
  }

  /** An answer that cannot be finished: the dialer must see it was incomplete, so the connection goes. */
  #cut(): void {
    this.keepAlive = false;
    this.#dropSocket();
    this.#conn.destroy();
    this.#end();
  }

  #deadline(timeoutMs: number): void {
    // All written (an answer, or our own 502), waiting for the dialer to take it: that is not a timeout, and the
    // connection's own deadlines close it if the dialer never reads.
    if (this.#over || this.#finishing) return;
    this.#upstreamErrorKind = "timeout";
    this.#cancelWait?.();
    this.#dropSocket();
    if (this.headSent) return this.#cut();
    const out = forwardFailure({ kind: "timeout" }, this.#rt.target, timeoutMs);
    this.#answer(out.status, out.text);
  }

  #end(): void {
    if (this.#over) return;
    this.#over = true;
    clearTimeout(this.#timer);
    this.#cancelWait?.();
    this.emit("close");
  }

  #record(who: ReturnType<typeof callerOf>, path: string, rawPath: string, refused: string | undefined): void {
    const t = this.#rt.target;
    const { metrics, log } = this.#deps;
    const seconds = Number(process.hrtime.bigint() - this.#started) / 1e9;
    metrics.scrapes.inc({ service: t.service, caller: who.label, status: statusLabel(this.#status) });
    metrics.duration.observe({ service: t.service }, seconds);
    if (this.#upstreamErrorKind) metrics.upstreamErrors.inc({ service: t.service, kind: this.#upstreamErrorKind });
    if (!log.enabled("info")) return;
    log.info("scrape", {
      ...audit(who),
      service: t.service,
      method: this.#req.method,
      path,
      ...(rawPath !== path ? { raw_path: rawPath } : {}),
      ...(refused ? { path_refused: refused } : {}),
      status: this.#status,
      bytes: this.#bytes,
      duration_ms: Math.round(seconds * 1000),
    });
  }
}

const CRLF = Buffer.from("\r\n");

/** Our answer's head: the exporter's status and end-to-end headers, with our framing and connection headers. */
export function answerHead(
  status: number,
  reason: string,
  headers: RawHeaders,
  framing: Framing,
  keepAlive: boolean,
): Buffer {
  const drop = hopByHopRaw(headers);
  let out = `HTTP/1.1 ${status} ${reason}\r\n`;
  for (let i = 0; i + 1 < headers.length; i += 2) {
    const name = headers[i]!;
    const lower = name.toLowerCase();
    if (drop.has(lower) || (lower === "content-length" && framing.kind !== "none")) continue;
    out += `${name}: ${headers[i + 1]}\r\n`;
  }
  if (framing.kind === "length") out += `content-length: ${framing.length}\r\n`;
  else if (framing.kind === "chunked" || framing.kind === "close") out += "transfer-encoding: chunked\r\n";
  out += `connection: ${keepAlive ? "keep-alive" : "close"}\r\n\r\n`;
  return Buffer.from(out, "latin1");
}
