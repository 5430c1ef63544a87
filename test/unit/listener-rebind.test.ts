/**
 * Listener re-binds (issue 18 item 9). A listener whose routers are down keeps its Bind session and retries at most
 * REBIND_MAX_MS (1 s) apart: a retry costs a connection attempt, not a controller request (the fault test "router
 * restart" measures the re-bind on the real overlay). A router that answers and refuses is another matter: each
 * retry may cost a new Bind session, so refusals back off 0.25 s doubling to 60 s (±25 %), the session is replaced
 * only when the refusal is about the session, and the back-off starts over only after a bind that held.
 *
 * The refusing router is a stub of the channel (the few members BindHandle uses) on fake timers, so a simulated
 * minute takes milliseconds; the scripted router (fake-router.ts) and the real overlay cover the wire.
 */
import { afterEach, describe, expect, it, vi } from "vitest";
import {
  type Channel,
  ContentType,
  dec,
  Header,
  type ListenerHost,
  type Message,
  ZitiListener,
} from "../../src/ziti/internal.js";
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

/** A router channel that answers Binds as the test says: accept, refuse with a reason, or accept and end at once. */
class StubRouter {
  readonly url = "tls://router-a:3022";
  readonly routerId = "router-a";
  readonly sdkFlowControl = false;
  readonly supportsBindSuccess = false;
  isOpen = true;
  /** undefined: accept; a string: refuse with it (StateClosed reply, as a v1.6 router does). */
  refusal: string | undefined;
  /** Accepted binds are ended by the router right away with this reason (a bind that never holds). */
  endAtOnce: string | undefined;
  /** When each Bind request arrived (fake-timer ms). */
  readonly binds: number[] = [];
  #nextId = 1;
  readonly #sinks = new Map<number, { handle(m: Message): void; channelClosed(e: ZitiError): void }>();

  allocConnId(): number {
    return this.#nextId++;
  }
  register(id: number, sink: { handle(m: Message): void; channelClosed(e: ZitiError): void }): void {
    this.#sinks.set(id, sink);
  }
  unregister(id: number): void {
    this.#sinks.delete(id);
  }
  hasConn(id: number): boolean {
    return this.#sinks.has(id);
  }
  send(): boolean {
    return true;
  }
  reply(): boolean {
    return true;
  }
  async request(contentType: number, headers: Map<number, Buffer>): Promise<Message> {
    expect(contentType).toBe(ContentType.Bind);
    this.binds.push(Date.now());
    const connId = dec.u32(headers, Header.ConnId)!;
    const msg = (ct: number, body = ""): Message => ({
      contentType: ct,
      sequence: 0,
      headers: new Map([[Header.ConnId, headers.get(Header.ConnId)!]]),
      body: Buffer.from(body),
    });
    if (this.refusal !== undefined) return msg(ContentType.StateClosed, this.refusal);
    if (this.endAtOnce !== undefined) {
      const reason = this.endAtOnce;
      setTimeout(() => this.#sinks.get(connId)?.handle(msg(ContentType.StateClosed, reason)), 5);
    }
    return msg(ContentType.StateConnected);
  }
  /** The router ends every bind it holds (StateClosed on the bind connection). */
  endBinds(reason: string): void {
    for (const [id, sink] of [...this.#sinks]) {
      sink.handle({ contentType: ContentType.StateClosed, sequence: 0, headers: new Map(), body: Buffer.from(reason) });
      this.#sinks.delete(id);
    }
  }
  /** The channel is lost (router restart): every bind on it ends, and it is not open any more. */
  lose(): void {
    this.isOpen = false;
    for (const sink of [...this.#sinks.values()]) sink.channelClosed(new ZitiError(ErrorCodes.CHANNEL_CLOSED, "lost"));
    this.#sinks.clear();
  }
}

class RouterHost implements ListenerHost {
  readonly identityName = "bind-a";
  readonly bindTimeoutMs = 1_000;
  router = new StubRouter();
  /** When each Bind session was handed out from the controller (not from the cache). */
  readonly sessions: number[] = [];
  #cached = false;

  async bindSession(): Promise<{ token: string; encrypt: boolean; routerUrls: string[] }> {
    if (!this.#cached) this.sessions.push(Date.now());
    this.#cached = true;
    return { token: `session-${this.sessions.length}`, encrypt: false, routerUrls: [this.router.url] };
  }
  dropSession(): void {
    this.#cached = false;
  }
  async channel(): Promise<Channel> {
    if (!this.router.isOpen) {
      this.router = Object.assign(new StubRouter(), { refusal: this.router.refusal, endAtOnce: this.router.endAtOnce });
    }
    return this.router as unknown as Channel;
  }
}

const MINUTE = 60_000;
const count = (times: number[], from: number, to: number) => times.filter((t) => t >= from && t < to).length;

describe("listener re-bind after refusals (issue 18 item 9)", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  async function boundListener(): Promise<{ host: RouterHost; l: ZitiListener }> {
    vi.useFakeTimers();
    const host = new RouterHost();
    const l = new ZitiListener(host, "node");
    await l.start();
    expect(l.state).toBe("bound");
    return { host, l };
  }

  /** Lets the first minute from t0 pass and checks it held 5-10 Bind tries (the back-off's start); returns how many. */
  async function triesInFirstMinute(host: RouterHost, t0: number): Promise<number> {
    await vi.advanceTimersByTimeAsync(MINUTE);
    const firstMinute = count(host.router.binds, t0, t0 + MINUTE);
    expect(firstMinute).toBeGreaterThanOrEqual(5);
    expect(firstMinute).toBeLessThanOrEqual(10);
    return firstMinute;
  }

  it("a router that refuses with 'invalid session' for good: new sessions, but backed off to 60 s, not one a second", async () => {
    const { host, l } = await boundListener();
    const t0 = Date.now();
    host.router.refusal = "invalid session";
    host.router.endBinds("session ended");
    // 0.25 s doubling (±25 %): 6-9 tries in the first minute (the old 1 s cap made ~60, each with a new session).
    const firstMinute = await triesInFirstMinute(host, t0);
    // A session refusal asks for a new session each time, never more often than the binds it serves.
    expect(count(host.sessions, t0, t0 + MINUTE)).toBeLessThanOrEqual(firstMinute);
    expect(count(host.sessions, t0, t0 + MINUTE)).toBeGreaterThanOrEqual(firstMinute - 1);
    // Then at most one try per 45-75 s (60 s ±25 %), for as long as the refusal lasts.
    await vi.advanceTimersByTimeAsync(10 * MINUTE);
    const later = host.router.binds.filter((t) => t >= t0 + 3 * MINUTE);
    const gaps = later.slice(1).map((t, i) => t - later[i]!);
    // 8 minutes with every gap at most 75 s hold at least 6 tries, so 5 gaps (6 was one too many: a run whose six
    // draws of the ±25 % jitter averaged over 68.6 s had only 6 tries, ~1 % of runs; seen once in a rehearsal).
    expect(gaps.length).toBeGreaterThanOrEqual(5);
    for (const g of gaps) {
      expect(g).toBeGreaterThanOrEqual(45_000);
      expect(g).toBeLessThanOrEqual(75_000);
    }
    expect(l.state).toBe("rebinding");
    await l.close();
  });

  it("a refusal that is not about the session keeps it: one Bind session in all, and the same back-off", async () => {
    const { host, l } = await boundListener();
    const t0 = Date.now();
    host.router.refusal = "no controller available, cannot create terminator";
    host.router.endBinds("terminator removed");
    const errors: Error[] = [];
    l.on("rebindError", (e) => errors.push(e));
    const firstMinute = await triesInFirstMinute(host, t0);
    expect(host.sessions).toHaveLength(1);
    // Each failed try is reported (the last one's report may still be on its way when the minute ends).
    expect(errors.length).toBeGreaterThanOrEqual(firstMinute - 1);
    expect(errors[0]!.message).toMatch(/no controller available/);
    // The refusal ends: the next try binds, with the session it had all along.
    host.router.refusal = undefined;
    await vi.advanceTimersByTimeAsync(2 * MINUTE);
    expect(l.state).toBe("bound");
    expect(host.sessions).toHaveLength(1);
    await l.close();
  });

  it("a bind the router ends at once does not reset the back-off; one that held does, and a lost channel is retried within ~1 s", async () => {
    const { host, l } = await boundListener();
    const t0 = Date.now();
    // Accepted, then ended at once, over and over (e.g. the terminator cannot be created).
    host.router.endAtOnce = "terminator creation failed";
    host.router.endBinds("terminator creation failed");
    await triesInFirstMinute(host, t0);
    expect(host.sessions).toHaveLength(1);

    // The router behaves again: once the next try binds and the bind holds, the back-off starts over.
    host.router.endAtOnce = undefined;
    await vi.advanceTimersByTimeAsync(2 * MINUTE);
    expect(l.state).toBe("bound");
    await vi.advanceTimersByTimeAsync(15_000);
    const t1 = Date.now();
    host.router.endBinds("terminator removed");
    await vi.advanceTimersByTimeAsync(400);
    expect(count(host.router.binds, t1, t1 + 400)).toBe(1);
    expect(l.state).toBe("bound");

    // A channel lost (router restart) is only unreachable: the session is kept and the re-bind follows within
    // REBIND_MAX_MS (+25 %) once the router takes connections again.
    await vi.advanceTimersByTimeAsync(15_000);
    const t2 = Date.now();
    host.router.lose();
    await vi.advanceTimersByTimeAsync(1_250);
    expect(count(host.router.binds, t2, t2 + 1_250)).toBe(1);
    expect(l.state).toBe("bound");
    expect(host.sessions).toHaveLength(1);
    await l.close();
  });
});
