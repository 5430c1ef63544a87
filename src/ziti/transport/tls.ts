/**
 * Layer 1: the TLS socket to an edge router. Presents the identity's certificate, trusts only the identity's CA
 * bundle, and verifies the router's name (DNS names through SNI; IP literals against the certificate's IP SANs),
 * directly or inside an egress proxy's CONNECT tunnel (./egress-proxy.ts).
 */
import { isIP, type Socket } from "node:net";
import tls from "node:tls";
import { ErrorCodes, ZitiError } from "../errors.js";
import { egressSocket, type EgressRoute } from "./egress-proxy.js";

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

/**
 * The TLS connection to an edge router, presenting the identity's certificate. With an `egress` route that sends
 * this router through a proxy, TLS runs inside its CONNECT tunnel (same server name, same checks); one deadline
 * covers the tunnel and the handshake.
 */
export async function connectTls(
  addr: RouterAddress,
  creds: TlsCredentials,
  timeoutMs: number,
  egress?: EgressRoute,
): Promise<tls.TLSSocket> {
  const startedAt = Date.now();
  let tunnel: Socket | undefined;
  try {
    tunnel = await egressSocket(egress, addr.host, addr.port, timeoutMs);
  } catch (err) {
    const e = err as ZitiError;
    throw new ZitiError(e.code, `cannot connect to edge router ${addr.host}:${addr.port}: ${e.message}`, {
      cause: err,
    });
  }
  const via = tunnel ? ` through ${egress!.proxy!.display}` : "";
  const left = Math.max(1, timeoutMs - (Date.now() - startedAt));
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      ...(tunnel ? { socket: tunnel } : { host: addr.host, port: addr.port }),
      cert: creds.certPem,
      key: creds.keyPem,
      ca: creds.caPem,
      minVersion: "TLSv1.2",
      ...(isIP(addr.host) ? {} : { servername: addr.host }),
      checkServerIdentity: (_host, cert) => tls.checkServerIdentity(addr.host, cert),
    });
    const timer = setTimeout(() => {
      socket.destroy();
      tunnel?.destroy();
      reject(
        new ZitiError(
          ErrorCodes.CHANNEL_CLOSED,
          `TLS connection to edge router ${addr.host}:${addr.port}${via} timed out`,
        ),
      );
    }, left);
    const onError = (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      tunnel?.destroy();
      reject(
        new ZitiError(
          ErrorCodes.CHANNEL_CLOSED,
          `cannot connect to edge router ${addr.host}:${addr.port}${via}: ${err.message}`,
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
