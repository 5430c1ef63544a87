/**
 * Layer 1: the TLS socket to an edge router. Presents the identity's certificate, trusts only the identity's CA
 * bundle, and verifies the router's name (DNS names through SNI; IP literals against the certificate's IP SANs).
 */
import { isIP } from "node:net";
import tls from "node:tls";
import { ErrorCodes, ZitiError } from "../errors.js";

export interface TlsCredentials {
  certPem: string;
  keyPem: string;
  caPem: string;
}

export interface RouterAddress {
  host: string;
  port: number;
}

/** Parses an edge router URL as the controller gives it: `tls://host:port` (or `tls:host:port`). */
export function parseRouterUrl(url: string): RouterAddress {
  const m = /^tls:(?:\/\/)?(\[[^\]]+\]|[^:/]+):(\d+)\/?$/.exec(url);
  if (!m)
    throw new ZitiError(
      ErrorCodes.PROTOCOL_ERROR,
      `unsupported edge router address "${url}" (expected tls://host:port)`,
    );
  const port = Number(m[2]);
  if (!(port > 0 && port < 65536))
    throw new ZitiError(ErrorCodes.PROTOCOL_ERROR, `bad port in edge router address "${url}"`);
  return { host: m[1]!.replace(/^\[|\]$/g, ""), port };
}

export function connectTls(addr: RouterAddress, creds: TlsCredentials, timeoutMs: number): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host: addr.host,
      port: addr.port,
      cert: creds.certPem,
      key: creds.keyPem,
      ca: creds.caPem,
      minVersion: "TLSv1.2",
      ...(isIP(addr.host) ? {} : { servername: addr.host }),
      checkServerIdentity: (_host, cert) => tls.checkServerIdentity(addr.host, cert),
    });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(
        new ZitiError(ErrorCodes.CHANNEL_CLOSED, `TLS connection to edge router ${addr.host}:${addr.port} timed out`),
      );
    }, timeoutMs);
    const onError = (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(
        new ZitiError(
          ErrorCodes.CHANNEL_CLOSED,
          `cannot connect to edge router ${addr.host}:${addr.port}: ${err.message}`,
          {
            cause: err,
          },
        ),
      );
    };
    socket.once("error", onError);
    socket.once("secureConnect", () => {
      clearTimeout(timer);
      socket.off("error", onError);
      socket.setNoDelay(true);
      socket.setKeepAlive(true, 30_000);
      resolve(socket);
    });
  });
}
