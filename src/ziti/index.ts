/**
 * scrapez's OpenZiti SDK: a pure-TypeScript implementation of the OpenZiti edge protocol. Everything exported here
 * is listed in docs/architecture.md ("The SDK's public API"), and test/unit/sdk-surface.test.ts checks the two
 * agree. The SDK's own tests reach its internals through ./internal.ts, which is not part of the API.
 */
export {
  ZitiContext,
  type ContextOptions,
  type OpenOptions,
  type DialOptions,
  type ZitiContextEvents,
  type AuthenticatedEvent,
  type AuthFailedEvent,
  type RouterStatus,
  type CertRenewedEvent,
  type CertRenewalFailedEvent,
} from "./api/context.js";
export type { ZitiConnection, ZitiListener } from "./api/public.js";
export {
  ZitiAgent,
  asSocket,
  type AgentDialer,
  type AgentTarget,
  type ZitiAgentOptions,
  type ZitiRequestOptions,
} from "./api/agent.js";
export type { BackoffOptions } from "./backoff.js";
export { ListenerState, type ListenOptions, type ZitiListenerEvents } from "./api/listener.js";
export { ConnState } from "./protocol/conn.js";
export { AUTH_MODES, type AuthMode, type ServiceInfo } from "./api/controller-wire.js";
export {
  CallerProofVerifier,
  identityKeyPin,
  isKeyPin,
  makeCallerProof,
  verifyCallerProof,
  type ProofBinding,
  type ProofResult,
} from "./api/caller-proof.js";
export { loadIdentity, saveIdentity, type Identity } from "./api/identity.js";
export { enroll, parseEnrollmentJwt, verifyJwtSignature, type EnrollOptions } from "./api/enroll.js";
export { ZitiError, ProtocolError, ControllerError, ErrorCodes, isZitiError, type ErrorCode } from "./errors.js";
