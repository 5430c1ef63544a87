/**
 * scrapez's OpenZiti SDK: a pure-TypeScript implementation of the OpenZiti edge protocol.
 */
export {
  ZitiContext,
  type ContextOptions,
  type OpenOptions,
  type DialOptions,
  type AuthenticatedEvent,
  type AuthFailedEvent,
  type RouterStatus,
  type CertRenewedEvent,
  type CertRenewalFailedEvent,
} from "./api/context.js";
export {
  ZitiAgent,
  asSocket,
  type AgentDialer,
  type AgentTarget,
  type ZitiAgentOptions,
  type ZitiRequestOptions,
} from "./api/agent.js";
export { Backoff, type BackoffOptions } from "./backoff.js";
export { ZitiListener, ListenerState, type ListenOptions } from "./api/listener.js";
export { ZitiConnection, ConnState } from "./protocol/conn.js";
export { AUTH_MODES, type AuthMode, type ApiSessionInfo, type ServiceInfo } from "./api/controller-wire.js";
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
