/**
 * Wire constants of the OpenZiti channel and edge protocols, and typed header values.
 * Layouts and numbers from the channel "V2" format and the edge client protocol (see docs/protocol.md).
 */

/** Message content types: channel level (0-6) and edge level (60783...). */
export const ContentType = {
  Hello: 0,
  Ping: 1,
  Result: 2,
  Latency: 3,
  LatencyResponse: 4,
  Heartbeat: 5,
  Connect: 60783,
  StateConnected: 60784,
  StateClosed: 60785,
  Data: 60786,
  Dial: 60787,
  DialSuccess: 60788,
  DialFailed: 60789,
  Bind: 60790,
  Unbind: 60791,
  UpdateBind: 60794,
  HealthEvent: 60795,
  TraceRoute: 60796,
  TraceRouteResponse: 60797,
  ConnInspectRequest: 60798,
  ConnInspectResponse: 60799,
  BindSuccess: 60800,
  UpdateTokenSuccess: 60801,
  UpdateTokenFailure: 60802,
  UpdateToken: 60803,
  InspectRequest: 60804,
  InspectResponse: 60805,
  /** SDK flow control ("xgress to SDK", routers v1.6.0+): see xgress.ts. */
  XgPayload: 1100,
  XgAcknowledgement: 1101,
  XgControl: 1102,
  XgClose: 1103,
} as const;

const contentTypeNames = new Map<number, string>(Object.entries(ContentType).map(([k, v]) => [v, k]));
export function contentTypeName(t: number): string {
  return contentTypeNames.get(t) ?? `type(${t})`;
}

/** Header ids: channel 0-127, reflected 128-255, edge 1000-1099. */
export const Header = {
  ConnectionId: 0,
  ReplyFor: 1,
  ResultSuccess: 2,
  HelloVersion: 4,
  Id: 8,
  /** Reflected range start: the edge UUID header and latency probe timestamps ride here. */
  Reflected: 128,
  ConnId: 1000,
  Seq: 1001,
  SessionToken: 1002,
  PublicKey: 1003,
  Cost: 1004,
  Precedence: 1005,
  TerminatorIdentity: 1006,
  TerminatorIdentitySecret: 1007,
  CallerId: 1008,
  CryptoMethod: 1009,
  Flags: 1010,
  AppData: 1011,
  RouterProvidedConnId: 1012,
  HealthStatus: 1013,
  ErrorCode: 1014,
  ListenerId: 1021,
  ConnType: 1022,
  SupportsInspect: 1023,
  SupportsBindSuccess: 1024,
  ConnectionMarker: 1025,
  CircuitId: 1026,
  /** bool: ask for (Connect, Bind) or announce (StateConnected, Dial) SDK flow control. */
  UseXgressToSdk: 1028,
  XgressCtrlId: 1029,
  XgressAddress: 1030,
  InspectRequestedValues: 1031,
  StructuredError: 1033,
  DialerIdentityId: 1034,
  DialerIdentityName: 1035,
} as const;

/** Headers of xgress payloads and acknowledgements (sdk-golang xgress/messages.go). */
export const XgHeader = {
  /** Payload headers ride at 2000 + their one-byte key. */
  PayloadHeaderBase: 2000,
  /** Payload header 0x01: the sender's xgress capabilities (u32 big-endian; sdk-golang v1.7, OpenZiti 2.0). */
  Capabilities: 2001,
  /** Payload header 0x10: the edge Flags (FIN, MULTIPART_MSG, ...), carried end to end. */
  EdgeFlags: 2016,
  CircuitId: 2256,
  Sequence: 2257,
  Flags: 2258,
  RecvBufferSize: 2259,
  RTT: 2260,
} as const;

/** Data message flags (header 1010). */
export const Flag = {
  FIN: 1,
  TRACE_UUID: 2,
  MULTIPART: 4,
  STREAM: 8,
  MULTIPART_MSG: 16,
} as const;

/** Terminator precedence (header 1005). */
export const Precedence = { default: 0, required: 1, failed: 2 } as const;

/** ConnType (header 1022) in ConnInspectResponse. */
export const ConnType = { Invalid: 0, Dial: 1, Bind: 2, Unknown: 3 } as const;

export type Headers = Map<number, Buffer>;

/** Encoders for typed header values (little-endian). */
export const enc = {
  u8(v: number): Buffer {
    return Buffer.from([v & 0xff]);
  },
  bool(v: boolean): Buffer {
    return Buffer.from([v ? 1 : 0]);
  },
  u16(v: number): Buffer {
    const b = Buffer.allocUnsafe(2);
    b.writeUInt16LE(v);
    return b;
  },
  u32(v: number): Buffer {
    const b = Buffer.allocUnsafe(4);
    b.writeUInt32LE(v >>> 0);
    return b;
  },
  i32(v: number): Buffer {
    const b = Buffer.allocUnsafe(4);
    b.writeInt32LE(v);
    return b;
  },
  u64(v: bigint): Buffer {
    const b = Buffer.allocUnsafe(8);
    b.writeBigUInt64LE(v);
    return b;
  },
  str(v: string): Buffer {
    return Buffer.from(v, "utf8");
  },
};

/** Typed reads; undefined when the header is absent or has the wrong size. */
export const dec = {
  bool(h: Headers, id: number): boolean | undefined {
    const b = h.get(id);
    return b && b.length >= 1 ? b[0] === 1 : undefined; // as the Go channel: only 1 is true
  },
  u8(h: Headers, id: number): number | undefined {
    const b = h.get(id);
    return b && b.length >= 1 ? b[0] : undefined;
  },
  u16(h: Headers, id: number): number | undefined {
    const b = h.get(id);
    return b && b.length === 2 ? b.readUInt16LE(0) : undefined;
  },
  u32(h: Headers, id: number): number | undefined {
    const b = h.get(id);
    return b && b.length === 4 ? b.readUInt32LE(0) : undefined;
  },
  str(h: Headers, id: number): string | undefined {
    const b = h.get(id);
    return b ? b.toString("utf8") : undefined;
  },
};
