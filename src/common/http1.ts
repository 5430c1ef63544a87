/**
 * HTTP/1.1 as a relay needs it, as pure code with no I/O: the head of a request or an answer found in a byte
 * stream and parsed strictly, and the end of a body found without decoding it (Content-Length or chunked), so the
 * body's bytes pass on as they came. What a scrape's relay checks (method, path, status, headers) is in the head;
 * the body is only counted and scanned for where it ends.
 *
 * Strict on purpose, as the peers are untrusted and a relay that read a message's end differently from the next
 * hop would let one scrape's bytes be read as another's (RFC 9112 11.2):
 * - every line ends in CRLF (a bare CR or LF anywhere is refused);
 * - no line folding, no whitespace before a header's colon, header names are tokens, values have no control
 *   characters but tab (what Node's server and llhttp refuse by default);
 * - Content-Length is digits only, repeated values must agree, and it never comes with Transfer-Encoding;
 * - Transfer-Encoding is `chunked` alone; chunk sizes are hex and bounded, extensions and trailers bounded.
 * Every violation throws Http1Error with a stable `reason`; the message (and its connection) is then not used.
 */

/** Why bytes are not the HTTP/1.1 this relay passes on. */
export class Http1Error extends Error {
  constructor(
    readonly reason: Http1ErrorReason,
    /** The llhttp error code (Node's `HPE_*`) of the same fault, so answers read as they did with Node's parser. */
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "Http1Error";
  }
}

export type Http1ErrorReason =
  /** The head did not end within the limit. */
  | "head-too-large"
  /** A line of the head is not what HTTP/1.1 allows (which line and why is in the message). */
  | "head-syntax"
  /** Content-Length and Transfer-Encoding disagree, or either is invalid. */
  | "framing"
  /** The chunked body is malformed or one of its bounds was passed. */
  | "chunk-syntax";

/** How long a head may be (Node's server default, `--max-http-header-size`). */
export const DEFAULT_MAX_HEAD_BYTES = 16 * 1024;

const CRLF2 = Buffer.from("\r\n\r\n", "latin1");
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** A field value's characters: visible ASCII, space, tab and obs-text (RFC 9110 5.5). */
const BAD_VALUE_CHAR = /[^\t\x20-\x7e\x80-\xff]/;
/** A request-target: visible ASCII, no space (RFC 9112 3.2). */
const TARGET = /^[\x21-\x7e]+$/;
const VERSION = /^HTTP\/1\.([01])$/;

/**
 * Finds the end of a head in a stream: push() the bytes as they arrive; once the blank line has come it returns the
 * head (without it) and the bytes after it. Throws Http1Error "head-too-large" when `maxBytes` pass first.
 */
export class HeadReader {
  readonly maxBytes: number;
  #chunks: Buffer[] = [];
  #buffered = 0;

  constructor(maxBytes = DEFAULT_MAX_HEAD_BYTES) {
    this.maxBytes = maxBytes;
  }

  /** Bytes held while waiting for the rest of a head. */
  get buffered(): number {
    return this.#buffered;
  }

  push(chunk: Buffer): { head: Buffer; rest: Buffer } | undefined {
    const before = this.#buffered;
    const at = before === 0 ? chunk.indexOf(CRLF2) : this.#find(chunk);
    if (at < 0) {
      this.#chunks.push(chunk);
      this.#buffered += chunk.length;
      if (this.#buffered > this.maxBytes) {
        this.#chunks = [];
        this.#buffered = 0;
        throw new Http1Error(
          "head-too-large",
          "HPE_HEADER_OVERFLOW",
          `the head passed ${this.maxBytes} bytes without ending`,
        );
      }
      return undefined;
    }
    const end = at + 4;
    if (end > this.maxBytes) {
      this.#chunks = [];
      this.#buffered = 0;
      throw new Http1Error(
        "head-too-large",
        "HPE_HEADER_OVERFLOW",
        `the head is ${end} bytes, more than ${this.maxBytes}`,
      );
    }
    // Joined once, when the head is complete: a head that trickles in byte by byte is not copied per byte.
    const held = before === 0 ? chunk : Buffer.concat([...this.#chunks, chunk], before + chunk.length);
    this.#chunks = [];
    this.#buffered = 0;
    return { head: held.subarray(0, end - 4), rest: held.subarray(end) };
  }

  /**
   * Where the terminator begins, counted from the first held byte (-1: not there). It may straddle what was held
   * and this chunk, so the last 3 held bytes are searched together with the chunk's start.
   */
  #find(chunk: Buffer): number {
    const tail: number[] = [];
    for (let i = this.#chunks.length - 1; i >= 0 && tail.length < 3; i--) {
      const c = this.#chunks[i]!;
      for (let j = c.length - 1; j >= 0 && tail.length < 3; j--) tail.unshift(c[j]!);
    }
    const window = Buffer.from([...tail, ...chunk.subarray(0, 3)]);
    const w = window.indexOf(CRLF2);
    if (w >= 0) return this.#buffered - tail.length + w;
    const at = chunk.indexOf(CRLF2);
    return at < 0 ? -1 : this.#buffered + at;
  }
}

const HTTP_PREFIX = Buffer.from("HTTP/", "latin1");

/**
 * Checks an answer's first bytes as they arrive, so that an exporter sending something that is not HTTP is told
 * at once rather than when its connection closes: `seen` bytes were checked before `piece`; returns the new count.
 * Throws Http1Error "head-syntax" (HPE_INVALID_CONSTANT, as llhttp).
 */
export function checkAnswerStart(piece: Buffer, seen: number): number {
  let i = 0;
  for (; i < piece.length && seen < HTTP_PREFIX.length; i++, seen++) {
    if (piece[i] !== HTTP_PREFIX[seen]) {
      throw new Http1Error("head-syntax", "HPE_INVALID_CONSTANT", 'the answer does not begin with "HTTP/"');
    }
  }
  return seen;
}

/** A parsed head's header fields, as Node's `rawHeaders`: name, value, name, value (names as sent). */
export type RawHeaders = string[];

export interface RequestHead {
  method: string;
  target: string;
  /** 0 for HTTP/1.0, 1 for HTTP/1.1. */
  minor: 0 | 1;
  headers: RawHeaders;
}

export interface ResponseHead {
  minor: 0 | 1;
  status: number;
  reason: string;
  headers: RawHeaders;
}

/** Parses a request head (HeadReader's `head`). Throws Http1Error "head-syntax". */
export function parseRequestHead(head: Buffer): RequestHead {
  const lines = splitLines(head);
  const start = lines[0]!;
  const parts = start.split(" ");
  if (parts.length !== 3) {
    throw syntax(`request line "${shown(start)}" is not "METHOD target HTTP/1.x"`, "HPE_INVALID_CONSTANT");
  }
  const [method, target, version] = parts as [string, string, string];
  if (!TOKEN.test(method)) throw syntax(`method "${shown(method)}" is not a token`, "HPE_INVALID_METHOD");
  if (!TARGET.test(target)) {
    throw syntax(`request target "${shown(target)}" has characters HTTP does not allow`, "HPE_INVALID_URL");
  }
  const v = VERSION.exec(version);
  if (!v) throw syntax(`version "${shown(version)}" is not HTTP/1.0 or HTTP/1.1`, "HPE_INVALID_VERSION");
  return { method, target, minor: v[1] === "1" ? 1 : 0, headers: parseFields(lines) };
}

/**
 * Parses an answer's head (HeadReader's `head`). Throws Http1Error "head-syntax". The reason phrase's characters
 * are the caller's to check (src/common/forward.ts answerProblem words that answer), as Node's client took them.
 */
export function parseResponseHead(head: Buffer): ResponseHead {
  const lines = splitLines(head);
  const start = lines[0]!;
  const sp = start.indexOf(" ");
  const v = VERSION.exec(sp < 0 ? start : start.slice(0, sp));
  if (!v) {
    throw syntax(`status line "${shown(start)}" does not begin with HTTP/1.0 or HTTP/1.1`, "HPE_INVALID_CONSTANT");
  }
  const code = start.slice(sp + 1, sp + 4);
  if (sp < 0 || !/^[0-9]{3}$/.test(code) || (start.length > sp + 4 && start[sp + 4] !== " ")) {
    throw syntax(`status line "${shown(start)}" has no three-digit status`, "HPE_INVALID_STATUS");
  }
  const reason = start.slice(sp + 5);
  return { minor: v[1] === "1" ? 1 : 0, status: Number(code), reason, headers: parseFields(lines) };
}

function splitLines(head: Buffer): string[] {
  const text = head.toString("latin1");
  const lines = text.split("\r\n");
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i]!;
    if (l.includes("\r") || l.includes("\n")) throw syntax(`line ${i + 1} has a bare CR or LF`, "HPE_LF_EXPECTED");
  }
  if (lines[0] === "") throw syntax("the head begins with an empty line", "HPE_INVALID_CONSTANT");
  return lines;
}

function parseFields(lines: string[]): RawHeaders {
  const out: RawHeaders = [];
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    if (line[0] === " " || line[0] === "\t") {
      throw syntax(`line ${i + 1} is folded (obsolete line folding)`, "HPE_INVALID_HEADER_TOKEN");
    }
    const colon = line.indexOf(":");
    if (colon <= 0) throw syntax(`line ${i + 1} "${shown(line)}" is not "name: value"`, "HPE_INVALID_HEADER_TOKEN");
    const name = line.slice(0, colon);
    const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, "");
    if (!TOKEN.test(name)) {
      throw syntax(`header name "${shown(name)}" is not a token`, "HPE_INVALID_HEADER_TOKEN");
    }
    if (BAD_VALUE_CHAR.test(value)) {
      throw syntax(`header ${name}'s value has a control character`, "HPE_INVALID_HEADER_TOKEN");
    }
    out.push(name, value);
  }
  return out;
}

/** At most 80 characters of what was refused, control characters shown as escapes. */
function shown(s: string): string {
  const cut = s.length > 80 ? `${s.slice(0, 80)}...` : s;
  return cut.replace(/[\x00-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
}

function syntax(message: string, code: string): Http1Error {
  return new Http1Error("head-syntax", code, message);
}

// --- framing -----------------------------------------------------------------------------------------------------

/** How a message's body ends (RFC 9112 6.3). */
export type Framing =
  | { kind: "none" }
  | { kind: "length"; length: number }
  | { kind: "chunked" }
  /** An answer without either header: it ends when its connection closes. */
  | { kind: "close" };

/** The values of every header named `lower` (a lower-case name), in order. */
export function fieldValues(headers: RawHeaders, lower: string): string[] {
  const out: string[] = [];
  for (let i = 0; i + 1 < headers.length; i += 2) if (headers[i]!.toLowerCase() === lower) out.push(headers[i + 1]!);
  return out;
}

/**
 * A request's body framing. A request with no Content-Length and no Transfer-Encoding has no body.
 * Throws Http1Error "framing".
 */
export function requestFraming(headers: RawHeaders): Framing {
  const f = declaredFraming(headers);
  return f ?? { kind: "none" };
}

/**
 * An answer's body framing, given the request's method: HEAD, 1xx, 204 and 304 answers have no body whatever
 * they say (RFC 9112 6.3 rules 1-2); one with neither header ends at close. Throws Http1Error "framing".
 */
export function responseFraming(method: string, status: number, headers: RawHeaders): Framing {
  const f = declaredFraming(headers);
  if (method === "HEAD" || (status >= 100 && status < 200) || status === 204 || status === 304) return { kind: "none" };
  return f ?? { kind: "close" };
}

function declaredFraming(headers: RawHeaders): Framing | undefined {
  const te = fieldValues(headers, "transfer-encoding");
  const cl = fieldValues(headers, "content-length");
  if (te.length > 0) {
    if (cl.length > 0)
      throw framing("both Content-Length and Transfer-Encoding are set", "HPE_UNEXPECTED_CONTENT_LENGTH");
    const codings = te
      .join(",")
      .split(",")
      .map((c) => c.trim().toLowerCase())
      .filter(Boolean);
    if (codings.length !== 1 || codings[0] !== "chunked") {
      throw framing(
        `Transfer-Encoding "${shown(te.join(", "))}" is not just "chunked"`,
        "HPE_INVALID_TRANSFER_ENCODING",
      );
    }
    return { kind: "chunked" };
  }
  if (cl.length === 0) return undefined;
  let length: number | undefined;
  for (const v of cl.join(",").split(",")) {
    const t = v.trim();
    if (!/^[0-9]{1,15}$/.test(t))
      throw framing(`Content-Length "${shown(v)}" is not a number`, "HPE_INVALID_CONTENT_LENGTH");
    const n = Number(t);
    if (length !== undefined && n !== length)
      throw framing(`Content-Length has two values, ${length} and ${n}`, "HPE_INVALID_CONTENT_LENGTH");
    length = n;
  }
  return { kind: "length", length: length! };
}

function framing(message: string, code: string): Http1Error {
  return new Http1Error("framing", code, message);
}

/** Bounds of a chunked body's framing (not of its data). */
export const MAX_CHUNK_LINE_BYTES = 4096;
export const MAX_TRAILER_BYTES = 16 * 1024;

const enum Chunk {
  /** The chunk-size line (hex digits, then maybe extensions), up to its CR. */
  Size,
  /** The LF after the size line's CR. */
  SizeLf,
  /** Chunk data. */
  Data,
  /** The CR after a chunk's data. */
  DataCr,
  /** The LF after it. */
  DataLf,
  /** The trailer section after the last chunk: lines up to an empty one. */
  Trailer,
  /** The LF of a trailer line. */
  TrailerLf,
  Done,
}

/**
 * Finds where a body ends, without changing it: scan() each piece as it arrives and pass on the bytes it says
 * belong to the body. `done` once the body's last byte was seen; bytes after it in a piece are not the body's (the
 * caller decides: on a connection with one request in flight, they are a protocol error). A "close" body never
 * ends here: its connection's end does. Throws Http1Error "chunk-syntax" on malformed chunked framing.
 */
export class BodyScanner {
  readonly framing: Framing;
  #remaining = 0;
  #state = Chunk.Size;
  #sizeDigits = 0;
  #size = 0;
  #inExtension = false;
  #lineBytes = 0;
  #trailerBytes = 0;
  #data = 0;
  #done: boolean;

  constructor(framing: Framing) {
    this.framing = framing;
    this.#done = framing.kind === "none" || (framing.kind === "length" && framing.length === 0);
    if (framing.kind === "length") this.#remaining = framing.length;
  }

  get done(): boolean {
    return this.#done;
  }

  /** The body's data bytes so far (a chunked body's without its framing). */
  get data(): number {
    return this.#data;
  }

  /**
   * How many bytes at the start of `piece` belong to the body (all of it until the body ends). `sink`, when given,
   * gets the body's data in it (views of `piece`; a chunked body's without its framing).
   */
  scan(piece: Buffer, sink?: (data: Buffer) => void): number {
    if (this.#done) return 0;
    switch (this.framing.kind) {
      case "close":
        this.#data += piece.length;
        if (sink && piece.length > 0) sink(piece);
        return piece.length;
      case "length": {
        const n = Math.min(piece.length, this.#remaining);
        this.#data += n;
        this.#remaining -= n;
        if (this.#remaining === 0) this.#done = true;
        if (sink && n > 0) sink(piece.subarray(0, n));
        return n;
      }
      default:
        return this.#chunked(piece, sink);
    }
  }

  #chunked(p: Buffer, sink: ((data: Buffer) => void) | undefined): number {
    let i = 0;
    while (i < p.length) {
      switch (this.#state) {
        case Chunk.Data: {
          const n = Math.min(p.length - i, this.#remaining);
          if (sink && n > 0) sink(p.subarray(i, i + n));
          i += n;
          this.#data += n;
          this.#remaining -= n;
          if (this.#remaining === 0) this.#state = Chunk.DataCr;
          break;
        }
        case Chunk.Size: {
          const c = p[i++]!;
          if (++this.#lineBytes > MAX_CHUNK_LINE_BYTES) throw chunkError("a chunk-size line is too long");
          if (c === 0x0d) {
            if (this.#sizeDigits === 0) throw chunkError("a chunk size has no digits");
            this.#state = Chunk.SizeLf;
          } else if (this.#inExtension) {
            if (c !== 0x09 && (c < 0x20 || c === 0x7f)) throw chunkError("a chunk extension has a control character");
          } else if (c === 0x3b /* ; */ || c === 0x20 || c === 0x09) {
            if (this.#sizeDigits === 0) throw chunkError("a chunk size has no digits");
            this.#inExtension = true;
          } else {
            const d = hexValue(c);
            if (d < 0) throw chunkError(`a chunk size has the character 0x${c.toString(16)}`);
            // 13 hex digits stay below 2^53; no body this relay passes is near that.
            if (++this.#sizeDigits > 13) throw chunkError("a chunk size is too large");
            this.#size = this.#size * 16 + d;
          }
          break;
        }
        case Chunk.SizeLf: {
          if (p[i++] !== 0x0a) throw chunkError("a chunk-size line does not end in CRLF");
          this.#remaining = this.#size;
          this.#state = this.#size === 0 ? Chunk.Trailer : Chunk.Data;
          this.#size = 0;
          this.#sizeDigits = 0;
          this.#inExtension = false;
          this.#lineBytes = 0;
          break;
        }
        case Chunk.DataCr:
          if (p[i++] !== 0x0d) throw chunkError("a chunk's data is not followed by CRLF");
          this.#state = Chunk.DataLf;
          break;
        case Chunk.DataLf:
          if (p[i++] !== 0x0a) throw chunkError("a chunk's data is not followed by CRLF");
          this.#state = Chunk.Size;
          break;
        case Chunk.Trailer: {
          const c = p[i++]!;
          if (++this.#trailerBytes > MAX_TRAILER_BYTES) throw chunkError("the trailer section is too long");
          if (c === 0x0d) this.#state = Chunk.TrailerLf;
          else if (c === 0x0a || (c < 0x20 && c !== 0x09) || c === 0x7f) {
            throw chunkError("a trailer line has a control character");
          } else this.#lineBytes++;
          break;
        }
        case Chunk.TrailerLf: {
          if (p[i++] !== 0x0a) throw chunkError("a trailer line does not end in CRLF");
          if (this.#lineBytes === 0) {
            this.#state = Chunk.Done;
            this.#done = true;
            return i;
          }
          this.#lineBytes = 0;
          this.#state = Chunk.Trailer;
          break;
        }
        default:
          return i;
      }
    }
    return i;
  }
}

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  return -1;
}

function chunkError(message: string): Http1Error {
  return new Http1Error("chunk-syntax", "HPE_INVALID_CHUNK_SIZE", message);
}
