/**
 * Library diagnostics: util.debuglog sections (NODE_DEBUG=scrapez:channel,...) and diagnostics_channel events.
 * The library never writes to the console itself.
 */
import { debuglog } from "node:util";
import diagnostics_channel from "node:diagnostics_channel";

export type Logger = (msg: string, ...args: unknown[]) => void;

export function debug(
  section: "channel" | "conn" | "ctrl" | "listener" | "enroll" | "context" | "http" | "egress",
): Logger {
  return debuglog(`scrapez:${section}`) as Logger;
}

/** State transitions of channels, connections and listeners, for tools that want them. */
export const stateChannel = diagnostics_channel.channel("scrapez:ziti:state");

export interface StateEvent {
  kind: "channel" | "conn" | "listener" | "context" | "xgress";
  id: string;
  from: string;
  to: string;
  reason?: string;
}

export function publishState(ev: StateEvent): void {
  if (stateChannel.hasSubscribers) stateChannel.publish(ev);
}
