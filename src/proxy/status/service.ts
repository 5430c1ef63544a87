/**
 * The proxy's status feature: records each forwarded scrape (`track`) and serves `/status` and `/status.json`
 * (`serve`). The proxy's server.ts calls only these two; everything else lives under src/proxy/status/.
 */
import { randomBytes } from "node:crypto";
import { answerPlain } from "../../common/answer.js";
import type http from "node:http";
import type { TLSSocket } from "node:tls";
import { gunzipSync, inflateSync, constants as zc } from "node:zlib";
import type { AuthResult } from "../auth.js";
import type { Resolved, ServiceCatalog } from "../catalog.js";
import type { DialOverlay } from "../../overlay/types.js";
import { buildStatus, parseFilter, type StatusDocument, type StatusFilter } from "./json.js";
import { renderPage } from "./page.js";
import { ERROR_TEXT_MAX, cleanText } from "../../common/format.js";
import type { RequestLike, ResponseLike } from "../../common/http-like.js";
import { fieldValues, type RawHeaders } from "../../common/http1.js";
import { ScrapeRecorder, isOk, type RecorderOptions } from "./recorder.js";

/** Bytes of a non-2xx answer kept to find its error text (more than ERROR_TEXT_MAX: it may be compressed). */
const CAPTURE_BYTES = 2_048;

/** Hooks for one forwarded scrape; the record is written when the client's response closes. */
export interface ScrapeTracker {
  /**
   * The upstream (bind side's) answer arrived: returns what counts its body's data and keeps the start of a
   * non-2xx body.
   */
  upstream(status: number, headers: RawHeaders): (data: Buffer) => void;
  /** The proxy answered with its own error text (dial failure, timeout, ...). */
  failed(text: string): void;
}

const NOOP: ScrapeTracker = { upstream: () => () => undefined, failed: () => undefined };

/** Who made a request: the client certificate's subject CN, else the auth principal, else `anonymous`. */
export function principalOf(req: RequestLike, auth: AuthResult): string {
  const sock = req.socket as Partial<TLSSocket>;
  if (typeof sock.getPeerCertificate === "function" && sock.authorized) {
    const cn = sock.getPeerCertificate().subject?.CN;
    if (cn) return `cert:${Array.isArray(cn) ? cn.join(",") : cn}`;
  }
  return auth.principal ?? "anonymous";
}

/** The readable start of a captured error body: decompressed when it says it is compressed, cleaned, capped. */
export function errorText(body: Buffer, encoding: string | undefined, status: number): string {
  let b = body;
  const enc = (encoding ?? "").trim().toLowerCase();
  try {
    if (enc === "gzip" || enc === "x-gzip") b = gunzipSync(body, { finishFlush: zc.Z_SYNC_FLUSH });
    else if (enc === "deflate") b = inflateSync(body, { finishFlush: zc.Z_SYNC_FLUSH });
    else if (enc && enc !== "identity") return `HTTP ${status} (${cleanText(enc, 40)}-encoded body)`;
  } catch {
    return `HTTP ${status} (${cleanText(enc, 40)} body that does not decode)`;
  }
  const text = cleanText(b.subarray(0, ERROR_TEXT_MAX * 4).toString("utf8"));
  return text || `HTTP ${status} with an empty body`;
}

export class StatusService {
  readonly recorder: ScrapeRecorder;
  readonly #catalog: ServiceCatalog;
  readonly #overlays: readonly DialOverlay[];

  constructor(catalog: ServiceCatalog, overlays: readonly DialOverlay[], opts: Partial<RecorderOptions> = {}) {
    this.#catalog = catalog;
    this.#overlays = overlays;
    this.recorder = new ScrapeRecorder(opts);
  }

  /**
   * Starts tracking a forwarded scrape of `r` (already resolved by the catalog). A target the catalog does not
   * know (e.g. a replica name no terminator has) is not recorded, so requests cannot grow the recorder.
   */
  track(req: RequestLike, res: ResponseLike, r: Resolved, auth: AuthResult, started = Date.now()): ScrapeTracker {
    if (!this.#catalog.describe(r)) return NOOP;
    let bytes = 0;
    let upstreamStatus: number | undefined;
    let failedText: string | undefined;
    let captured: Buffer[] = [];
    let capturedLen = 0;
    let encoding: string | undefined;
    res.once("close", () => {
      const status = res.writableFinished ? res.statusCode : res.headersSent ? res.statusCode : 499;
      let error: string | undefined;
      if (failedText !== undefined) error = failedText;
      else if (!res.writableFinished) {
        error = res.headersSent
          ? `the answer was cut off after ${bytes} bytes`
          : `the client closed the connection before the answer (after ${Date.now() - started} ms)`;
      } else if (!isOk(status)) {
        error = upstreamStatus !== undefined ? errorText(Buffer.concat(captured), encoding, status) : `HTTP ${status}`;
      }
      captured = [];
      this.recorder.record({
        service: r.service,
        replica: r.identity,
        at: Date.now(),
        durationMs: Date.now() - started,
        bytes,
        // A cut-off answer failed whatever its status line said.
        status: !res.writableFinished && isOk(status) ? 502 : status,
        error,
        principal: principalOf(req, auth),
        address: req.socket.remoteAddress,
        userAgent: typeof req.headers["user-agent"] === "string" ? req.headers["user-agent"] : undefined,
      });
    });
    return {
      upstream(statusCode, headers) {
        upstreamStatus = statusCode;
        const keep = !isOk(statusCode);
        const ce = fieldValues(headers, "content-encoding");
        encoding = ce.length === 1 ? ce[0] : undefined;
        return (c: Buffer) => {
          bytes += c.length;
          if (keep && capturedLen < CAPTURE_BYTES) {
            const part = c.subarray(0, CAPTURE_BYTES - capturedLen);
            captured.push(Buffer.from(part));
            capturedLen += part.length;
          }
        };
      },
      failed(text) {
        failedText = text;
        bytes = Buffer.byteLength(text) + 1;
      },
    };
  }

  /**
   * The document `/status` shows: this process's catalog and scrapes; with --workers, every worker's scrapes
   * (src/cli/workers/worker.ts replaces it).
   */
  document: (filter: StatusFilter) => StatusDocument | Promise<StatusDocument> = (filter) =>
    buildStatus(this.#catalog, this.#overlays, this.recorder, filter);

  /**
   * Answers `/status` (HTML) or `/status.json`. The caller has checked auth. A failure to build the document is
   * answered 500 here; the promise rejects when the answer itself cannot be written (the caller's guard ends it).
   */
  serve(req: http.IncomingMessage, res: http.ServerResponse, json: boolean): Promise<void> {
    const search = new URL(req.url ?? "/", "http://x").searchParams;
    return Promise.resolve()
      .then(() => this.document(parseFilter(search)))
      .then(
        (doc) => this.#send(req, res, json, doc),
        (err: Error) => answerPlain(res, 500, `scrapez proxy: cannot build the status: ${err.message}`),
      );
  }

  #send(req: http.IncomingMessage, res: http.ServerResponse, json: boolean, doc: StatusDocument): void {
    const common = {
      "cache-control": "no-store",
      "x-content-type-options": "nosniff",
      "referrer-policy": "no-referrer",
    };
    if (json) {
      const body = JSON.stringify(doc);
      res.writeHead(200, {
        ...common,
        "content-type": "application/json; charset=utf-8",
        "content-length": Buffer.byteLength(body),
      });
      return void res.end(req.method === "HEAD" ? undefined : body);
    }
    const nonce = randomBytes(16).toString("base64");
    const body = renderPage(doc, { nonce });
    res.writeHead(200, {
      ...common,
      "content-type": "text/html; charset=utf-8",
      "content-length": Buffer.byteLength(body),
      // Only this page's own script runs, and it may talk only to this proxy.
      "content-security-policy":
        `default-src 'none'; script-src 'nonce-${nonce}'; style-src 'unsafe-inline'; connect-src 'self'; ` +
        "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
      "x-frame-options": "DENY",
    });
    res.end(req.method === "HEAD" ? undefined : body);
  }
}
