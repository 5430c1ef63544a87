/**
 * A small HTTPS stand-in for the OpenZiti controller's client API, for fast unit tests of ZitiContext (start-up,
 * back-off, the router connector). Each test answers the routes it needs; what it does not answer is a 404 in the
 * controller's error shape. The real controller (test/harness/overlay.ts) is the proof of every feature.
 */
import { once } from "node:events";
import { readFileSync } from "node:fs";
import https from "node:https";
import type net from "node:net";

/** An answer: status and JSON body. */
export type StandInAnswer = [status: number, body: unknown];

/** A legacy API session, as POST /authenticate answers it. */
export function apiSession(token: string, id = "session-1"): StandInAnswer {
  const now = Date.now();
  return [
    200,
    {
      data: {
        id,
        token,
        identity: { id: "id-1", name: "unit-client" },
        expirationSeconds: 1800,
        lastActivityAt: new Date(now).toISOString(),
        expiresAt: new Date(now + 1_800_000).toISOString(),
      },
    },
  ];
}

/**
 * Starts the stand-in on 127.0.0.1 with the PKI's server certificate. `route` gets the method and the path below
 * /edge/client/v1/ (no query) and returns the answer, or undefined for a 404.
 */
export async function startControllerStandIn(
  pki: Record<string, string>,
  route: (method: string, path: string) => StandInAnswer | undefined,
) {
  const seen: string[] = [];
  const server = https.createServer(
    { cert: readFileSync(pki["server.crt"]!), key: readFileSync(pki["server.key"]!) },
    (req, res) => {
      const path = (req.url ?? "").split("?")[0]!.replace("/edge/client/v1/", "");
      seen.push(`${req.method} ${path}`);
      req.resume();
      const [status, body] = route(req.method ?? "", path) ?? [
        404,
        { error: { code: "NOT_FOUND", message: "no such thing" } },
      ];
      const text = JSON.stringify(body);
      res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
      res.end(text);
    },
  );
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    port: (server.address() as net.AddressInfo).port,
    /** Every request, as "METHOD path". */
    seen,
    count: (what: string) => seen.filter((s) => s === what).length,
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((r) => server.close(() => r()));
    },
  };
}
