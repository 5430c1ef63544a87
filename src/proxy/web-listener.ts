/**
 * The proxy listener's `--web.config.file` at work (the file's format and reading are ./web-config.ts): the TLS a
 * connection gets and the client certificate checks after its handshake, the proxy's own rules for a web config,
 * the response headers, and the bcrypt users' checks before a request is answered.
 */
import type http from "node:http";
import https from "node:https";
import type { Socket } from "node:net";
import type tls from "node:tls";
import type { Logger } from "../common/log.js";
import { WebUsersScheme } from "./auth.js";
import { configAuthenticates, isLoopback, type ProxyConfig } from "./config.js";
import { WebConfigFile, type WebConfig, type WebConfigState } from "./web-config.js";
import { sansAllowed } from "./web-config-tls.js";

/**
 * Adds the web config's http_server_config.headers to whatever answer `res` gets: set as its head is written, so
 * an answer that replaces the headers set so far (answerPlain, a forwarded scrape's) still carries them.
 */
function withHeaders(res: http.ServerResponse, headers: Readonly<Record<string, string>>): void {
  const writeHead = res.writeHead.bind(res) as (...a: unknown[]) => http.ServerResponse;
  res.writeHead = ((...args: unknown[]) => {
    for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
    return writeHead(...args);
  }) as typeof res.writeHead;
}

/** The listener's web config: the file, its users, and what it does to connections and requests. */
export class WebListener {
  readonly #file: WebConfigFile;
  /** The web config's basic_auth_users, one of the proxy's auth schemes. */
  readonly users: WebUsersScheme;
  readonly #log: Logger;
  /** Whether the listener's TLS comes from the web config: fixed at start, as in the toolkit (unset while first read). */
  readonly #tls: boolean | undefined;
  /** The web config generation whose TLS settings the listener has. */
  #tlsGeneration = -1;
  /** The listener, when its TLS comes from the web config. */
  #server: https.Server | undefined;

  /**
   * Reads the web config; throws the ConfigError of one that is invalid now (the proxy does not start with it).
   * `config` is the proxy config as it is now.
   */
  constructor(file: string, config: () => ProxyConfig, log: Logger) {
    this.#log = log;
    this.#file = new WebConfigFile(
      file,
      (c) => this.check(c, config()),
      (s) => this.#changed(s),
    );
    this.#tls = this.#file.last.ok && !!this.#file.last.config.tls;
    this.users = new WebUsersScheme(this.#file, { log });
  }

  /**
   * The listener with the web config's TLS (a connection gets the web config's TLS as it is then), or undefined
   * when the web config has no tls_server_config.
   */
  createServer(opts: http.ServerOptions, handler: http.RequestListener): https.Server | undefined {
    const webTls = this.#file.last.ok ? this.#file.last.config.tls : undefined;
    if (!webTls) return undefined;
    const server = https.createServer(
      {
        ...opts,
        ...webTls.secure,
        requestCert: webTls.requestCert,
        rejectUnauthorized: webTls.rejectUnauthorized,
      },
      handler,
    );
    this.#server = server;
    this.#tlsGeneration = this.#file.last.generation;
    // Before tls.Server's own listener makes the TLSSocket: the web config as it is now applies to this handshake.
    server.prependListener("connection", (socket: Socket) => this.#tlsFor(socket));
    server.prependListener("secureConnection", (socket: tls.TLSSocket) => this.#checkClientCert(socket));
    return server;
  }

  /** Whether the web config as last read requires a verified client certificate. */
  get requiresClientCert(): boolean {
    const s = this.#file.last;
    return s.ok && s.config.tls?.clientAuth === "RequireAndVerifyClientCert";
  }

  /** Adds the web config's headers (as last read) to the answer `res` gets. */
  addHeaders(res: http.ServerResponse): void {
    const s = this.#file.last;
    if (s.ok && Object.keys(s.config.headers).length) withHeaders(res, s.config.headers);
  }

  /** A reloaded proxy config (SIGHUP): throws when the web config as it is now breaks the proxy's rules with it. */
  recheck(next: ProxyConfig): void {
    const s = this.#file.current();
    if (s.ok) this.check(s.config, next);
  }

  /**
   * The proxy's own rules for a web config, on top of the format's: TLS from one place, TLS not turned on or off
   * while running (the toolkit decides it at start too), and no unauthenticated listener on a non-loopback address.
   */
  check(c: WebConfig, config: ProxyConfig): void {
    if (c.tls && config.tls) {
      throw new Error(
        `web config ${c.file}: tls_server_config and the proxy config's tls are both set: use one of them`,
      );
    }
    if (this.#tls !== undefined && !!c.tls !== this.#tls) {
      throw new Error(
        `web config ${c.file}: tls_server_config ${c.tls ? "turns TLS on" : "turns TLS off"}: ` +
          "restart scrapez proxy to change that (it is decided at start, as in exporter-toolkit)",
      );
    }
    const authenticated =
      configAuthenticates(config) || c.users.size > 0 || c.tls?.clientAuth === "RequireAndVerifyClientCert";
    if (!isLoopback(config.listenHost) && !authenticated && !config.insecureAllowUnauthenticated) {
      throw new Error(
        `web config ${c.file}: listen ${config.listen} is not a loopback address, so auth is required: add ` +
          "basic_auth_users or client_auth_type: RequireAndVerifyClientCert (or auth in the proxy config)",
      );
    }
  }

  /** A web config that changed while running: logged (an invalid one fails requests until it is fixed). */
  #changed(s: WebConfigState): void {
    if (s.ok) {
      this.#log.info("web config reloaded", {
        file: s.config.file,
        users: s.config.users.size,
        tls: !!s.config.tls,
        clientAuth: s.config.tls?.clientAuth,
      });
    } else {
      this.#log.error("web config is invalid: requests are refused (500) until it is fixed", {
        reason: s.error.message,
      });
    }
  }

  /** A new connection: the web config's TLS as it is now (a new one's certificate and settings), or refused. */
  #tlsFor(socket: Socket): void {
    const s = this.#file.current();
    const t = s.ok ? s.config.tls : undefined;
    if (!t) {
      socket.destroy();
      return;
    }
    const server = this.#server as https.Server & { requestCert: boolean; rejectUnauthorized: boolean };
    if (s.generation !== this.#tlsGeneration) {
      server.setSecureContext(t.secure);
      this.#tlsGeneration = s.generation;
    }
    // tls.Server hands these to each new TLSSocket.
    server.requestCert = t.requestCert;
    server.rejectUnauthorized = t.rejectUnauthorized;
  }

  /**
   * After the handshake: what Node's handshake does not check for the client auth type (a certificate present for
   * RequireAnyClientCert, verified when given for VerifyClientCertIfGiven) and client_allowed_sans.
   */
  #checkClientCert(socket: tls.TLSSocket): void {
    const s = this.#file.last;
    const t = s.ok ? s.config.tls : undefined;
    if (!t) return void socket.destroy();
    const cert = socket.getPeerCertificate();
    const presented = !!cert && Object.keys(cert).length > 0;
    let why: string | undefined;
    if (t.clientAuth === "RequireAnyClientCert" && !presented) why = "no client certificate";
    else if (t.clientAuth === "VerifyClientCertIfGiven" && presented && !socket.authorized) {
      why = `client certificate not verified: ${String(socket.authorizationError)}`;
    } else if (t.allowedSans) {
      if (!presented || !socket.authorized) why = "no verified client certificate";
      else if (!sansAllowed(cert.subjectaltname, t.allowedSans)) {
        why = `client certificate SANs (${cert.subjectaltname ?? "none"}) include none of client_allowed_sans`;
      }
    }
    if (why) {
      this.#log.warn("TLS client refused", { remote: socket.remoteAddress, reason: why });
      socket.destroy();
    }
  }

  /**
   * The web config for a request: false when it is invalid now; a promise when Basic credentials must be checked
   * with bcrypt first (in the worker thread; the request's headers then carry the answer); undefined when the request
   * can go on at once.
   */
  warm(req: http.IncomingMessage): Promise<unknown> | false | undefined {
    const s = this.#file.current();
    if (!s.ok) return false;
    return this.users.warm(req.headers);
  }
}
