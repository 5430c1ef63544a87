/**
 * src/proxy/overlay-pool.ts, one target's keep-alive overlay connections: what it promises about how many it opens,
 * which it hands out, when callers wait, and when idle ones go. Its connections here are in-memory byte streams (a
 * dial is anything that resolves to one); the real overlay's are exercised by the proxy's integration suites.
 */
import { PassThrough, type Duplex } from "node:stream";
import { describe, expect, it } from "vitest";
import { DIALED_AHEAD } from "../../src/common/forward.js";
import { OverlayPool, type Lease } from "../../src/proxy/overlay-pool.js";
import { waitUntil } from "../harness/ports.js";

/** A pool whose dials make PassThrough streams (or fail with `fail`), with what each dial was given. */
function pool(opts: { maxSockets?: number; keepAliveMs?: number; fail?: Error } = {}) {
  const dials: number[] = [];
  const made: Duplex[] = [];
  const p = new OverlayPool(
    (timeoutMs) => {
      dials.push(timeoutMs);
      if (opts.fail) return Promise.reject(opts.fail);
      const c = new PassThrough();
      made.push(c);
      return Promise.resolve(c);
    },
    { maxSockets: opts.maxSockets ?? 2, keepAliveMs: opts.keepAliveMs ?? 60_000 },
  );
  return { p, dials, made };
}

/** Acquires one connection (resolves with the lease or rejects with the dial's error). */
function lease(p: OverlayPool, timeoutMs = 1_000): Promise<Lease> {
  return new Promise((resolve, reject) =>
    p.acquire(
      () => timeoutMs,
      (err, l) => (err ? reject(err) : resolve(l!)),
    ),
  );
}

describe("overlay pool", () => {
  it("dials while fewer than maxSockets are open; the next caller waits for a release and gets that connection", async () => {
    const { p, dials } = pool({ maxSockets: 2 });
    const a = await lease(p, 700);
    const b = await lease(p);
    expect(dials).toEqual([700, 1_000]);
    expect([a.reused, b.reused]).toEqual([false, false]);
    let third: Lease | undefined;
    p.acquire(
      () => 1_000,
      (_e, l) => (third = l),
    );
    expect(p.counts).toEqual({ open: 2, idle: 0, waiting: 1 });
    p.release(a.conn);
    expect(third).toEqual({ conn: a.conn, reused: true });
    expect(dials).toHaveLength(2);
  });

  it("hands out the most recently released idle connection first", async () => {
    const { p } = pool({ maxSockets: 3 });
    const [a, b, c] = [await lease(p), await lease(p), await lease(p)];
    p.release(a.conn);
    p.release(c.conn);
    p.release(b.conn);
    expect((await lease(p)).conn).toBe(b.conn);
    expect((await lease(p)).conn).toBe(c.conn);
    expect((await lease(p)).conn).toBe(a.conn);
  });

  it("a connection dialed ahead (the warm-up's) counts as reused: its first request may be retried", async () => {
    const p = new OverlayPool(() => Promise.resolve(Object.assign(new PassThrough(), { [DIALED_AHEAD]: true })), {
      maxSockets: 1,
      keepAliveMs: 60_000,
    });
    expect((await lease(p)).reused).toBe(true);
  });

  it("a failed dial fails only its caller and frees its place", async () => {
    const err = Object.assign(new Error("no terminator"), { code: "ZITI_DIAL_FAILED" });
    const { p } = pool({ maxSockets: 1, fail: err });
    await expect(lease(p)).rejects.toBe(err);
    expect(p.counts).toEqual({ open: 0, idle: 0, waiting: 0 });
    expect(p.idle).toBe(true);
  });

  it("a busy connection that closes frees its place for a waiting caller", async () => {
    const { p, dials } = pool({ maxSockets: 1 });
    const a = await lease(p);
    const next = lease(p);
    a.conn.destroy();
    const b = await next;
    expect(b.conn).not.toBe(a.conn);
    expect(b.reused).toBe(false);
    expect(dials).toHaveLength(2);
  });

  it("an idle connection that gets bytes, ends or fails is dropped, never handed out, even if it was paused", async () => {
    for (const fault of ["data", "end", "error"] as const) {
      const { p } = pool({ maxSockets: 2 });
      const a = await lease(p);
      a.conn.pause(); // as a forward leaves it when its client read slowly
      p.release(a.conn);
      const s = a.conn as PassThrough;
      if (fault === "data") s.write("HTTP/1.1 408 Request Timeout\r\n\r\n");
      else if (fault === "end") s.end();
      else s.destroy(new Error("reset"));
      await waitUntil(() => a.conn.destroyed && p.counts.idle === 0, 2_000, `the idle connection dropped on ${fault}`);
      expect((await lease(p)).conn, fault).not.toBe(a.conn);
    }
  });

  it("idle connections close after keepAliveMs, one timer for the pool; the pool is then idle", async () => {
    const { p } = pool({ maxSockets: 2, keepAliveMs: 100 });
    const [a, b] = [await lease(p), await lease(p)];
    p.release(a.conn);
    p.release(b.conn);
    expect(p.idle).toBe(false);
    await waitUntil(() => a.conn.destroyed && b.conn.destroyed, 2_000, "both idle connections closed");
    await waitUntil(() => p.idle, 2_000, "the pool idle");
  });

  it("retire() closes idle connections now and busy ones when released; destroy() closes all and fails waiting callers", async () => {
    const { p } = pool({ maxSockets: 2 });
    const [a, b] = [await lease(p), await lease(p)];
    p.release(a.conn);
    p.retire();
    expect(a.conn.destroyed).toBe(true);
    p.release(b.conn);
    expect(b.conn.destroyed).toBe(true);

    const q = pool({ maxSockets: 1 }).p;
    const busy = await lease(q);
    const waiting = lease(q);
    q.destroy();
    await expect(waiting).rejects.toThrow(/pool is closed/);
    expect(busy.conn.destroyed).toBe(true);
  });

  it("configure() applies a larger maxSockets to callers already waiting", async () => {
    const { p, dials } = pool({ maxSockets: 1 });
    await lease(p);
    const waiting = lease(p);
    p.configure({ maxSockets: 2, keepAliveMs: 60_000 });
    expect((await waiting).reused).toBe(false);
    expect(dials).toHaveLength(2);
  });
});
