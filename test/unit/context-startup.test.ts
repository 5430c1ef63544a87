/**
 * ZitiContext start-up without a controller (issue 9, items 13 and 14): background authentication with back-off
 * and jitter, its state and reasons, the service poll's back-off, and close()/destroy() while an attempt is in
 * flight. Fast tests on real loopback sockets: a port that drops every connection, one that holds connections
 * without answering, and a small HTTPS stand-in for the controller's client API. The real controller is the proof
 * in test/integration/startup.test.ts.
 */
import { once } from "node:events";
import { readFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { ErrorCodes, ZitiContext, type AuthFailedEvent, type Identity } from "../../src/ziti/index.js";
import { apiSession, startControllerStandIn } from "../harness/controller-standin.js";
import { makePki } from "../harness/pki.js";
import { removeDir, tempDir } from "../harness/process.js";

const realSetTimeout = globalThis.setTimeout;
const sleep = (ms: number) => new Promise<void>((r) => realSetTimeout(r, ms));

let dir: string;
let pki: Record<string, string>;

beforeAll(() => {
  dir = tempDir("ctx-startup");
  pki = makePki(join(dir, "pki"));
});
afterAll(() => removeDir(dir));
afterEach(() => {
  vi.useRealTimers();
});

function identity(port: number): Identity {
  return {
    ztAPI: `https://127.0.0.1:${port}/edge/client/v1`,
    certPem: readFileSync(pki["client.crt"]!, "utf8"),
    keyPem: readFileSync(pki["client.key"]!, "utf8"),
    caPem: readFileSync(pki["ca.crt"]!, "utf8"),
    name: "client",
    raw: {},
  };
}

/** A TCP port that accepts and at once drops every connection (a controller behind a load balancer, down). */
async function dropper(): Promise<{ port: number; connections: () => number; close: () => Promise<void> }> {
  let n = 0;
  const server = net.createServer((s) => {
    n++;
    s.destroy();
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    port: (server.address() as net.AddressInfo).port,
    connections: () => n,
    close: () => new Promise((r) => server.close(() => r())),
  };
}

/** A TCP port that accepts and never answers (a controller that hangs). */
async function blackHole(): Promise<{ port: number; sockets: Set<net.Socket>; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.resume(); // read (and drop) what comes, so the peer's close is seen
    s.on("error", () => undefined);
    s.once("close", () => sockets.delete(s));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    port: (server.address() as net.AddressInfo).port,
    sockets,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((r) => server.close(() => r()));
    },
  };
}

type Mode = { auth: "refuse" | "ok"; poll: "ok" | "fail" };

/** The controller's client API, just enough of it: certificate authentication, services, service-updates. */
function standInController(mode: Mode) {
  return startControllerStandIn(pki, (method, path) => {
    if (method === "POST" && path === "authenticate") {
      if (mode.auth === "refuse") {
        return [401, { error: { code: "INVALID_AUTH", message: "The authentication request failed" } }];
      }
      return apiSession("secret-token");
    }
    if (method === "GET" && path === "services") return [200, { data: [], meta: { pagination: { totalCount: 0 } } }];
    if (method === "GET" && path === "current-api-session/service-updates") {
      if (mode.poll === "fail") return [503, { error: { code: "UNHANDLED", message: "down for a moment" } }];
      return [200, { data: { lastChangeAt: "2025-01-01T00:00:00Z" } }];
    }
    if (method === "DELETE" && path === "current-api-session") return [200, {}];
    return undefined;
  });
}

/** Lets real I/O run for a moment while the (fake) timers stand still. */
async function settle(): Promise<void> {
  await sleep(30);
}

describe("ZitiContext.open({ waitForController: false })", () => {
  it("resolves at once, is not ready with the reason, and retries with back-off (0.5 s doubling, capped)", async () => {
    const ctrl = await dropper();
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval"] });
    const ctx = await ZitiContext.open(identity(ctrl.port), {
      waitForController: false,
      authBackoff: { initialMs: 500, maxMs: 4_000, random: () => 0.5 },
    });
    try {
      expect(ctx.ready).toBe(false);
      expect(ctx.notReadyReason).toMatch(/^authenticating to the controller at https:\/\/127\.0\.0\.1:\d+$/);
      const expected = [500, 1_000, 2_000, 4_000, 4_000, 4_000];
      let failed = once(ctx, "authFailed") as Promise<[AuthFailedEvent]>;
      vi.advanceTimersByTime(0); // the first attempt is scheduled at once
      for (let i = 0; i < expected.length; i++) {
        const [e] = await failed;
        failed = once(ctx, "authFailed") as Promise<[AuthFailedEvent]>;
        expect(e.attempts).toBe(i + 1);
        expect(e.retryInMs).toBe(expected[i]);
        expect(e.rejected).toBe(false);
        expect(e.error.code).toBe(ErrorCodes.CONTROLLER_UNREACHABLE);
        expect(ctrl.connections()).toBe(i + 1);
        expect(ctx.ready).toBe(false);
        expect(ctx.notReadyReason).toBe(e.reason);
        expect(e.reason).toContain(`cannot authenticate to the controller (attempt ${i + 1}, next in`);
        expect(e.reason).toContain("cannot reach the controller");
        await expect(ctx.services()).rejects.toMatchObject({ code: ErrorCodes.NOT_READY });
        await expect(ctx.dial("anything")).rejects.toMatchObject({ code: ErrorCodes.NOT_READY });
        // Nothing is sent before the delay is over ...
        vi.advanceTimersByTime(expected[i]! - 1);
        await settle();
        expect(ctrl.connections()).toBe(i + 1);
        // ... and the next attempt goes out when it is.
        vi.advanceTimersByTime(1);
      }
      await failed;
      expect(ctrl.connections()).toBe(expected.length + 1);
    } finally {
      await ctx.close();
      await ctrl.close();
    }
    expect(vi.getTimerCount()).toBe(0);
  });

  it("an invalid identity file is still an error at once (a configuration error, not a transient one)", async () => {
    const bad = join(dir, "bad.json");
    const { writeFileSync } = await import("node:fs");
    writeFileSync(
      bad,
      JSON.stringify({ ztAPI: "https://127.0.0.1:1/", id: { cert: "pem:nope", key: "pem:x", ca: "pem:y" } }),
      {
        mode: 0o600,
      },
    );
    await expect(ZitiContext.open(bad, { waitForController: false })).rejects.toMatchObject({
      code: ErrorCodes.IDENTITY_INVALID,
    });
    await expect(ZitiContext.open(join(dir, "missing.json"), { waitForController: false })).rejects.toMatchObject({
      code: ErrorCodes.IDENTITY_INVALID,
    });
  });

  it("fromIdentity keeps throwing when the controller is unreachable (existing callers)", async () => {
    const ctrl = await dropper();
    try {
      await expect(ZitiContext.fromIdentity(identity(ctrl.port))).rejects.toMatchObject({
        code: ErrorCodes.CONTROLLER_UNREACHABLE,
      });
      await expect(ZitiContext.open(identity(ctrl.port))).rejects.toMatchObject({
        code: ErrorCodes.CONTROLLER_UNREACHABLE,
      });
    } finally {
      await ctrl.close();
    }
  });

  it("a controller that refuses the identity (401) is reported as such, retried, and ready once it accepts", async () => {
    const mode: Mode = { auth: "refuse", poll: "ok" };
    const ctrl = await standInController(mode);
    const ctx = await ZitiContext.open(identity(ctrl.port), {
      waitForController: false,
      authBackoff: { initialMs: 20, maxMs: 40 },
    });
    try {
      const [e] = (await once(ctx, "authFailed")) as [AuthFailedEvent];
      expect(e.rejected).toBe(true);
      expect(e.error.code).toBe(ErrorCodes.AUTH_FAILED);
      expect(ctx.notReadyReason).toContain('the controller refused identity "client"');
      expect(ctx.notReadyReason).toMatch(/deleted or re-enrolled/);
      expect(ctx.notReadyReason).not.toContain("secret-token");
      await once(ctx, "authFailed"); // it keeps trying
      mode.auth = "ok";
      const [ok] = (await once(ctx, "authenticated")) as [{ identityName: string; attempts: number }];
      expect(ok.identityName).toBe("unit-client");
      expect(ok.attempts).toBeGreaterThanOrEqual(3);
      expect(ctx.ready).toBe(true);
      expect(ctx.notReadyReason).toBeUndefined();
      await ctx.whenReady();
      expect(await ctx.services()).toEqual([]);
    } finally {
      await ctx.close();
      await ctrl.close();
    }
    expect(ctx.notReadyReason).toMatch(/closed/);
  });

  it("the service poll backs off while the controller fails and returns to its interval when it answers", async () => {
    // The fake clock is installed before open(), so every poll timer is on it: when the first poll timer was set
    // on the real clock, a slow open() (a loaded machine) let the first poll and its back-off run on real time,
    // and the test saw 2 polls where 1 was expected (seen twice in CI).
    const mode: Mode = { auth: "ok", poll: "fail" };
    const ctrl = await standInController(mode);
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    const ctx = await ZitiContext.open(identity(ctrl.port), { servicePollMs: 1_000 });
    const POLL = "GET current-api-session/service-updates";
    // Advances the fake clock, then gives a poll it started (a real HTTP round trip to the stand-in) up to 3 s of
    // real time to arrive when one is expected (`atLeast`): a fixed 30 ms missed it on a loaded machine (CI).
    const pollsAfter = async (ms: number, atLeast = 0) => {
      vi.advanceTimersByTime(ms);
      for (const t0 = Date.now(); ctrl.count(POLL) < atLeast && Date.now() - t0 < 3_000;) await sleep(20);
      await settle();
      return ctrl.count(POLL);
    };
    try {
      expect(await pollsAfter(999)).toBe(0);
      expect(await pollsAfter(1, 1)).toBe(1); // the first poll, servicePollMs after open()
      // After the 1st failure: 2 s ±25 %; after the 2nd: 4 s ±25 %; after the 3rd: 8 s ±25 %.
      let polls = 1;
      for (const base of [2_000, 4_000, 8_000]) {
        expect(await pollsAfter(Math.floor(base * 0.75) - 1)).toBe(polls);
        expect(await pollsAfter(Math.ceil(base * 0.5) + 2, polls + 1)).toBe(++polls);
      }
      // A fixed 1 s rate would have polled ~18 times in that time.
      mode.poll = "ok";
      expect(await pollsAfter(Math.ceil(16_000 * 1.25), polls + 1)).toBe(++polls); // succeeds ...
      expect(await pollsAfter(1_000, polls + 1)).toBe(++polls); // ... and is back to every second
      expect(await pollsAfter(1_000, polls + 1)).toBe(++polls);
    } finally {
      await ctx.close();
      await ctrl.close();
    }
    expect(vi.getTimerCount()).toBe(0);
  });
});

describe("close() and destroy() while a background authentication is in flight", () => {
  for (const how of ["close", "destroy"] as const) {
    it(`${how}() ends the attempt and leaves no timer running`, async () => {
      const ctrl = await blackHole();
      vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval"] });
      const ctx = await ZitiContext.open(identity(ctrl.port), { waitForController: false });
      const events: string[] = [];
      ctx.on("authFailed", () => events.push("authFailed"));
      ctx.on("authenticated", () => events.push("authenticated"));
      const ready = ctx.whenReady();
      ready.catch(() => undefined);
      try {
        vi.advanceTimersByTime(0);
        await vi.waitUntil(() => ctrl.sockets.size > 0, { timeout: 5_000, interval: 10 });
        // The request is in flight: its deadline timer is the only one (cleared once the aborted request fails).
        expect(vi.getTimerCount()).toBe(1);
        if (how === "close") await ctx.close();
        else ctx.destroy();
        await expect(ready).rejects.toMatchObject({ code: ErrorCodes.CLOSED });
        await vi.waitUntil(() => ctrl.sockets.size === 0, { timeout: 5_000, interval: 10 });
        await settle();
        expect(events).toEqual([]);
        expect(vi.getTimerCount()).toBe(0);
        expect(ctx.ready).toBe(false);
        await expect(ctx.services()).rejects.toMatchObject({ code: ErrorCodes.CLOSED });
        // Idempotent, in either order.
        ctx.destroy();
        await ctx.close();
      } finally {
        await ctrl.close();
      }
    });
  }
});
