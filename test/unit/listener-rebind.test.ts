/**
 * A listener whose routers are down keeps its Bind session (its retries, at most REBIND_MAX_MS apart, cost a
 * connection attempt each, not a controller request; the fault test "router restart" measures the re-bind on the
 * real overlay); a session that lists no online router is dropped, so the next try asks the controller again.
 */
import { describe, expect, it } from "vitest";
import { ZitiListener, type ListenerHost } from "../../src/ziti/api/listener.js";
import { ErrorCodes, ZitiError } from "../../src/ziti/errors.js";

class Host implements ListenerHost {
  readonly identityName = "bind-a";
  readonly bindTimeoutMs = 1_000;
  routerUrls = ["tls://127.0.0.1:1"];
  sessions = 0;
  drops = 0;
  channelAttempts: number[] = [];

  async bindSession(): Promise<{ token: string; encrypt: boolean; routerUrls: string[] }> {
    this.sessions++;
    return { token: "t", encrypt: false, routerUrls: this.routerUrls };
  }
  dropSession(): void {
    this.drops++;
  }
  channel(): Promise<never> {
    this.channelAttempts.push(Date.now());
    return Promise.reject(new ZitiError(ErrorCodes.CHANNEL_CLOSED, "connect ECONNREFUSED 127.0.0.1:1"));
  }
}

describe("listener re-bind while its routers are down", () => {
  it("keeps its Bind session when the router is only unreachable (a retry costs a connection, not a controller call)", async () => {
    const host = new Host();
    const l = new ZitiListener(host, "node");
    await expect(l.start()).rejects.toThrow(/ECONNREFUSED/);
    await expect(l.start()).rejects.toThrow(/ECONNREFUSED/);
    expect(host.channelAttempts).toHaveLength(2);
    expect(host.drops).toBe(0);
    await l.close();
  });

  it("drops a session that lists no online router, so the next attempt gets a fresh one", async () => {
    const host = new Host();
    host.routerUrls = [];
    const l = new ZitiListener(host, "node");
    await expect(l.start()).rejects.toThrow(/the session lists no online routers/);
    expect(host.drops).toBe(1);
    await l.close();
  });
});
