/**
 * The scope of a unit test file that drives the SDK against scripted routers (fake-router.ts): the routers and
 * channels a test opens are closed after it, and a test fails if anything escaped to `uncaughtException` meanwhile
 * (an 'error' event nobody listened to, a throw from a callback): one hostile peer must never reach the process.
 * Call it once at the top level of the file.
 */
import { afterEach, beforeEach, expect } from "vitest";
import type { Channel } from "../../src/ziti/internal.js";
import type { FakeRouter } from "./fake-router.js";

export function scriptedRouterScope(): { routers: FakeRouter[]; channels: Channel[] } {
  const routers: FakeRouter[] = [];
  const channels: Channel[] = [];
  let uncaught: unknown[] = [];
  const onUncaught = (err: unknown) => uncaught.push(err);
  beforeEach(() => {
    uncaught = [];
    process.on("uncaughtException", onUncaught);
  });
  afterEach(async () => {
    // Lets anything scheduled on nextTick/immediate run first, so a late escape is still caught here.
    await new Promise((r) => setTimeout(r, 30));
    process.off("uncaughtException", onUncaught);
    for (const ch of channels.splice(0)) ch.close("test over");
    for (const r of routers.splice(0)) await r.close();
    expect(uncaught.map((e) => (e as Error).message)).toEqual([]);
  });
  return { routers, channels };
}
