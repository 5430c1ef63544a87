/**
 * The answer to one scrape read by the proxy's front (./front.ts), written to the client's socket as Node's
 * ServerResponse would write it, for the parts the proxy uses: writeHead (Date, Connection and Keep-Alive added,
 * a body without a length chunked), write with backpressure, end, destroy, and the 'drain', 'finish' and 'close'
 * events. Its request is FrontRequest: the head's fields in IncomingMessage's shape.
 */
import { EventEmitter } from "node:events";
import type http from "node:http";
import type net from "node:net";
import type { RawHeaders } from "../common/http1.js";
import type { RequestLike } from "../common/http-like.js";

/** Fields a duplicate of which Node's IncomingMessage drops (the first value counts). */
const FIRST_WINS = new Set([
  "content-type",
  "content-length",
  "user-agent",
  "referer",
  "host",
  "authorization",
  "proxy-authorization",
  "if-modified-since",
  "if-unmodified-since",
  "from",
  "location",
  "max-forwards",
  "retry-after",
  "etag",
  "last-modified",
  "server",
  "age",
  "expires",
]);

/** Raw header lines as IncomingMessage's `headers` (lower-case names, duplicates joined or dropped as Node does). */
export function headerObject(raw: RawHeaders): http.IncomingHttpHeaders {
  const out: Record<string, string | string[]> = {};
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    const value = raw[i + 1]!;
    const had = out[name];
    if (had === undefined) out[name] = name === "set-cookie" ? [value] : value;
    else if (name === "set-cookie") (had as string[]).push(value);
    else if (FIRST_WINS.has(name)) continue;
    else out[name] = `${had as string}${name === "cookie" ? "; " : ", "}${value}`;
  }
  return out;
}

/** A request the front answers: a RequestLike whose method and URL the head always has. */
export interface FrontRequest extends RequestLike {
  readonly method: string;
  readonly url: string;
}

/** Node's Date header value, made at most once a second. */
let dateText = "";
let dateAt = 0;
function httpDate(): string {
  const now = Date.now();
  if (now - dateAt >= 1000) {
    dateAt = now - (now % 1000);
    dateText = new Date(now).toUTCString();
  }
  return dateText;
}

export class FrontResponse extends EventEmitter {
  statusCode = 200;
  statusMessage = "";
  /** False: the connection closes after this answer (a graceful stop sets it before the head is written). */
  shouldKeepAlive = true;
  /** Each write is framed as a chunk (set by writeHead for a body without a length; the caller may clear it). */
  chunkedEncoding = false;
  headersSent = false;
  writableEnded = false;
  writableFinished = false;
  readonly #socket: net.Socket;
  readonly #hasBody: boolean;
  readonly #keepAliveSeconds: number;
  /** The head, until the first write sends it with the body's first bytes. */
  #head: string | undefined;
  readonly #done: (keepAlive: boolean) => void;
  #closed = false;
  #destroyed = false;

  /** `done(keepAlive)` runs once the answer is all handed to the socket. */
  constructor(socket: net.Socket, method: string, keepAliveSeconds: number, done: (keepAlive: boolean) => void) {
    super();
    this.#done = done;
    this.#socket = socket;
    this.#hasBody = method !== "HEAD";
    this.#keepAliveSeconds = keepAliveSeconds;
  }

  get destroyed(): boolean {
    return this.#destroyed || this.#socket.destroyed;
  }

  /** Headers are never set one by one on this response: nothing to list or remove. */
  getHeaderNames(): string[] {
    return [];
  }

  removeHeader(_name: string): void {}

  writeHead(status: number, reason: string, headers: http.OutgoingHttpHeaders | readonly string[] = []): this {
    if (this.headersSent) throw new Error("the head was already written");
    const lines = Array.isArray(headers)
      ? (headers as readonly string[])
      : flatten(headers as http.OutgoingHttpHeaders);
    let head = `HTTP/1.1 ${status} ${reason}\r\n`;
    let length = false;
    let chunked = false;
    let date = false;
    for (let i = 0; i + 1 < lines.length; i += 2) {
      const name = lines[i]!;
      const value = lines[i + 1]!;
      if (/[\r\n]/.test(name) || /[\r\n]/.test(value)) throw new TypeError(`Invalid character in header "${name}"`);
      const lower = name.toLowerCase();
      if (lower === "content-length") length = true;
      else if (lower === "transfer-encoding") chunked = /(^|,)\s*chunked\s*$/i.test(value);
      else if (lower === "date") date = true;
      head += `${name}: ${value}\r\n`;
    }
    if (!date) head += `Date: ${httpDate()}\r\n`;
    const bodyless = !this.#hasBody || status === 204 || status === 304 || (status >= 100 && status < 200);
    if (this.shouldKeepAlive) head += `Connection: keep-alive\r\nKeep-Alive: timeout=${this.#keepAliveSeconds}\r\n`;
    else head += "Connection: close\r\n";
    if (!length && !chunked && !bodyless) {
      head += "Transfer-Encoding: chunked\r\n";
      chunked = true;
    }
    this.chunkedEncoding = chunked && !bodyless;
    this.statusCode = status;
    this.statusMessage = reason;
    this.#head = `${head}\r\n`;
    this.headersSent = true;
    return this;
  }

  write(chunk: Buffer | string): boolean {
    if (this.writableEnded || this.destroyed) return false;
    const s = this.#socket;
    if (!s.writableCorked) {
      s.cork();
      process.nextTick(() => s.uncork());
    }
    let ok = this.#flushHead();
    if (!this.#hasBody || chunk.length === 0) return ok;
    if (this.chunkedEncoding) {
      const n = typeof chunk === "string" ? Buffer.byteLength(chunk) : chunk.length;
      s.write(`${n.toString(16)}\r\n`, "latin1");
      s.write(chunk);
      ok = s.write("\r\n", "latin1");
    } else ok = s.write(chunk);
    return ok;
  }

  end(chunk?: Buffer | string): this {
    if (this.writableEnded || this.destroyed) return this;
    if (!this.headersSent) this.writeHead(this.statusCode, this.statusMessage || "OK");
    if (chunk !== undefined) this.write(chunk);
    else this.#flushHead();
    this.writableEnded = true;
    const last = this.chunkedEncoding && this.#hasBody ? "0\r\n\r\n" : "";
    this.#socket.write(last, "latin1", () => {
      if (this.destroyed) return;
      this.writableFinished = true;
      this.emit("finish");
      this.#close();
      this.#done(this.shouldKeepAlive);
    });
    return this;
  }

  destroy(err?: Error): this {
    if (this.#destroyed) return this;
    this.#destroyed = true;
    this.#socket.destroy(err);
    this.#close();
    return this;
  }

  /** The socket closed (or the answer finished): 'close', once. */
  closed(): void {
    this.#close();
  }

  #close(): void {
    if (this.#closed) return;
    this.#closed = true;
    process.nextTick(() => this.emit("close"));
  }

  #flushHead(): boolean {
    if (this.#head === undefined) return true;
    const h = this.#head;
    this.#head = undefined;
    return this.#socket.write(h, "latin1");
  }
}

function flatten(headers: http.OutgoingHttpHeaders): string[] {
  const out: string[] = [];
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined) continue;
    if (Array.isArray(v)) for (const x of v) out.push(k, String(x));
    else out.push(k, String(v));
  }
  return out;
}
