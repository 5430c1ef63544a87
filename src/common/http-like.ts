/**
 * The parts of a request and its answer that scrapez's HTTP handlers use, so the same handler serves Node's
 * IncomingMessage and ServerResponse and the proxy's own front (src/proxy/front.ts), which reads scrapes without
 * Node's server. Node's objects satisfy these as they are.
 */
import type http from "node:http";
import type net from "node:net";

export interface RequestLike {
  readonly method?: string | undefined;
  readonly url?: string | undefined;
  readonly httpVersion: string;
  readonly headers: http.IncomingHttpHeaders;
  readonly rawHeaders: string[];
  readonly socket: net.Socket;
}

/** What a one-line answer (src/common/answer.ts answerPlain) writes to. */
export interface AnswerTarget {
  readonly headersSent: boolean;
  readonly destroyed: boolean;
  getHeaderNames(): string[];
  removeHeader(name: string): void;
  writeHead(status: number, reason: string, headers: http.OutgoingHttpHeaders | string[]): unknown;
  end(chunk?: string | Buffer): unknown;
  destroy(err?: Error): unknown;
}

export interface ResponseLike extends AnswerTarget {
  statusCode: number;
  statusMessage: string;
  shouldKeepAlive: boolean;
  readonly writableEnded: boolean;
  readonly writableFinished: boolean;
  write(chunk: string | Buffer): boolean;
  on(event: "drain" | "close" | "finish", listener: () => void): unknown;
  once(event: "drain" | "close" | "finish", listener: () => void): unknown;
  off(event: "drain" | "close" | "finish", listener: () => void): unknown;
}
