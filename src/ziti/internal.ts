/**
 * The SDK's internal entry, for its own tests (test/unit, test/integration): the wire layers (frames, headers,
 * channel, connection, edge messages, xgress, end-to-end crypto), the API layer's parts (controller client, listener,
 * caller proofs and handshake, enrollment, certificate renewal) and a context's internals. Not part of the public
 * API (./index.ts is; docs/architecture.md lists it): nothing here is stable, and applications must not import it.
 */
import type { ZitiConnection as PublicConnection } from "./api/public.js";
import type { ZitiConnection } from "./protocol/conn.js";

export * from "./protocol/headers.js";
export * from "./protocol/frame.js";
export * from "./protocol/crypto.js";
export * from "./protocol/xgress.js";
export * from "./protocol/channel.js";
export * from "./protocol/channel-types.js";
export * from "./protocol/channel-writer.js";
export * from "./protocol/conn.js";
export * from "./protocol/conn-e2e.js";
export * from "./protocol/xgress-circuit.js";
export * from "./protocol/xgress-circuit-types.js";
export * from "./protocol/wire-stats.js";
export * from "./protocol/edge.js";
export { ZitiContext, contextInternals, type ContextInternals, type ChannelRole } from "./api/context.js";
export { ControllerClient, type ControllerClientOptions } from "./api/controller.js";
export { jwtPayload } from "./api/controller-oidc.js";
export type { EdgeRouterInfo, SessionInfo } from "./api/controller-wire.js";
export * from "./api/listener.js";
export * from "./api/caller-handshake.js";
export * from "./api/caller-proof.js";
export * from "./api/identity.js";
export * from "./api/enroll.js";
export * from "./api/renew.js";

/** The connection class behind a public ZitiConnection (its channel, flow-control figures, FINAL handling). */
export function connInternals(c: PublicConnection): ZitiConnection {
  return c as ZitiConnection;
}
