/**
 * The connection-slot rules of a bound target (src/bind/slots.ts), on plain objects and a hand-moved clock: who gives
 * way when the target is full, per-caller fairness, and connections whose exchange is over holding no slot. The
 * real-overlay proof (200 stalled connections, then two scrapes) is in test/integration/bind-hardening.test.ts.
 */
import { describe, expect, it } from "vitest";
import { SlotTable, callerGroup, STALL_GRACE_MS, type EvictReason, type SlotCaller } from "../../src/bind/slots.js";

interface Conn {
  name: string;
  done?: boolean;
}

const A: SlotCaller = { group: "key:A", admitted: true };
const B: SlotCaller = { group: "key:B", admitted: true };
const C: SlotCaller = { group: "key:C", admitted: true };
const NOT_ALLOWED: SlotCaller = { group: "key:X", admitted: false };
const UNVERIFIED: SlotCaller = { group: "unverified", admitted: false };

/** A table with a clock the test moves. */
function table(cap: number) {
  let now = 0;
  const t = new SlotTable<Conn>({ cap, graceMs: STALL_GRACE_MS, now: () => now, isDone: (c) => c.done === true });
  const conns = new Map<string, Conn>();
  return {
    t,
    tick: (ms: number) => (now += ms),
    /** Opens `name` as `caller`; returns what the admission did, as "refused" or "admitted[, evicted <name> (reason)]". */
    open(name: string, caller: SlotCaller): string {
      const c: Conn = { name };
      const a = t.admit(c, caller);
      if (!a.ok) return "refused";
      conns.set(name, c);
      return a.evicted ? `evicted ${a.evicted.conn.name} (${a.evicted.reason})` : "admitted";
    },
    conn: (name: string) => conns.get(name)!,
  };
}

type Step =
  | ["open", string, SlotCaller, string]
  | ["tick", number]
  | ["request", string]
  | ["responded", string]
  | ["close", string]
  | ["done", string];

/** Steps opening each of `names` as `caller`, in order, each admitted without evicting anyone. */
function admitted(caller: SlotCaller, ...names: string[]): Step[] {
  return names.map((n): Step => ["open", n, caller, "admitted"]);
}

/** Steps starting a request (its head read) on each of `names`, in order. */
function requests(...names: string[]): Step[] {
  return names.map((n): Step => ["request", n]);
}

function run(cap: number, steps: Step[]): ReturnType<typeof table> {
  const x = table(cap);
  for (const s of steps) {
    if (s[0] === "open") expect(x.open(s[1], s[2]), `open ${s[1]}`).toBe(s[3]);
    else if (s[0] === "tick") x.tick(s[1]);
    else if (s[0] === "request") x.t.requestStarted(x.conn(s[1]));
    else if (s[0] === "responded") x.t.requestEnded(x.conn(s[1]));
    else if (s[0] === "close") x.t.release(x.conn(s[1]));
    else x.conn(s[1]).done = true;
  }
  return x;
}

describe("slot table: who gives way when the target is full", () => {
  const cases: [string, number, Step[]][] = [
    ["below the cap every connection is admitted", 2, [...admitted(A, "a1"), ...admitted(B, "b1")]],
    [
      "a connection with no request head past the grace gives way (stalled)",
      2,
      [
        ...admitted(A, "a1"),
        ...admitted(B, "b1"),
        ...requests("b1"),
        ["tick", STALL_GRACE_MS],
        ["open", "b2", B, "evicted a1 (stalled)"],
      ],
    ],
    [
      "a busy connection never gives way: with every slot busy the newcomer is refused",
      2,
      [
        ...admitted(A, "a1"),
        ...admitted(B, "b1"),
        ...requests("a1", "b1"),
        ["tick", 60_000],
        ["open", "c1", C, "refused"],
        ["open", "a2", A, "refused"],
      ],
    ],
    [
      "an idle keep-alive connection gives way, the longest idle first",
      3,
      [
        ...admitted(A, "a1", "a2", "a3"),
        ...requests("a1", "a2", "a3"),
        ["tick", 10],
        ["responded", "a2"],
        ["tick", 10],
        ["responded", "a1"],
        ["open", "b1", B, "evicted a2 (idle)"],
      ],
    ],
    [
      "stalled connections give way before idle ones",
      2,
      [
        ...admitted(A, "a1"),
        ...requests("a1"),
        ["responded", "a1"],
        ...admitted(A, "a2"),
        ["tick", STALL_GRACE_MS],
        ["open", "b1", B, "evicted a2 (stalled)"],
      ],
    ],
    [
      "the largest group's stalled connection gives way first, then the oldest",
      4,
      [
        ...admitted(B, "b1"),
        ...admitted(A, "a1", "a2", "a3"),
        ["tick", STALL_GRACE_MS],
        ["open", "c1", C, "evicted a1 (stalled)"],
        ["open", "c2", C, "evicted a2 (stalled)"],
        // A and B hold one each now, C two: C may take only from itself or a larger group.
        ["open", "c3", C, "evicted b1 (stalled)"],
      ],
    ],
    [
      "within the grace a newcomer takes from a group holding two more slots than its own (fair_share)",
      4,
      [
        ...admitted(A, "a1", "a2", "a3", "a4"),
        ["open", "b1", B, "evicted a1 (fair_share)"],
        ["open", "b2", B, "evicted a2 (fair_share)"],
        // A 2, B 2: an even split; B's next connection replaces its own oldest one, not A's.
        ["open", "b3", B, "evicted b1 (fair_share)"],
        ["open", "a5", A, "evicted a3 (fair_share)"],
      ],
    ],
    [
      "a group at the cap replaces its own oldest connection without a head, also within the grace",
      2,
      [...admitted(A, "a1", "a2"), ["open", "a3", A, "evicted a1 (fair_share)"]],
    ],
    [
      "a group never takes a smaller group's fresh or idle connection",
      4,
      [
        ...admitted(B, "b1"),
        ...requests("b1"),
        ["responded", "b1"],
        ...admitted(A, "a1", "a2"),
        ...requests("a1", "a2"),
        ["tick", STALL_GRACE_MS],
        ...admitted(B, "b2"),
        ["open", "a3", A, "refused"],
        // A's idle connection is not B's to take while A holds no more than B: B's own idle one gives way.
        ["responded", "a1"],
        ["open", "b3", B, "evicted b1 (idle)"],
      ],
    ],
    [
      "a stalled connection gives way to any group, also a larger one",
      2,
      [
        ...admitted(B, "b1"),
        ...admitted(A, "a1"),
        ...requests("a1"),
        ["tick", STALL_GRACE_MS],
        ["open", "a2", A, "evicted b1 (stalled)"],
      ],
    ],
    [
      "a caller the allow-list refuses gives way to an admitted one (not_allowed), also when fresh",
      2,
      [...admitted(NOT_ALLOWED, "x1"), ...admitted(A, "a1"), ["open", "a2", A, "evicted x1 (not_allowed)"]],
    ],
    [
      "a refused caller never displaces an admitted caller's connection, only other refused callers'",
      2,
      [
        ...admitted(A, "a1"),
        ...admitted(UNVERIFIED, "u1"),
        ["tick", STALL_GRACE_MS],
        ["open", "x1", NOT_ALLOWED, "evicted u1 (stalled)"],
        ["open", "x2", NOT_ALLOWED, "evicted x1 (fair_share)"],
      ],
    ],
    [
      "a connection whose exchange is over on our side holds no slot, before 'close'",
      2,
      [...admitted(A, "a1", "a2"), ...requests("a1", "a2"), ["done", "a1"], ...admitted(B, "b1")],
    ],
    [
      "a closed connection's slot is free again",
      1,
      [...admitted(A, "a1"), ...requests("a1"), ["open", "b1", B, "refused"], ["close", "a1"], ...admitted(B, "b1")],
    ],
  ];
  it.each(cases)("%s", (_name, cap, steps) => {
    run(cap, steps);
  });
});

describe("slot table: fairness under a flood", () => {
  it("200 stalled connections from one caller, then one from another caller and one more from the first: both admitted", () => {
    const x = table(64);
    const reasons = new Map<EvictReason | "none" | "refused", number>();
    const count = (r: string) => {
      const k = (r === "admitted" ? "none" : r === "refused" ? "refused" : /\((\w+)\)/.exec(r)![1]) as EvictReason;
      reasons.set(k, (reasons.get(k) ?? 0) + 1);
    };
    for (let i = 0; i < 200; i++) {
      count(x.open(`a${i}`, A));
      x.tick(2); // 200 dials in 0.4 s: no connection is past the grace
    }
    expect(reasons.get("none")).toBe(64);
    expect(reasons.get("fair_share")).toBe(136);
    expect(x.open("b", B)).toMatch(/^evicted a\d+ \(fair_share\)$/);
    expect(x.open("a-scrape", A)).toMatch(/^evicted a\d+ \(fair_share\)$/);
    x.t.requestStarted(x.conn("b"));
    x.t.requestStarted(x.conn("a-scrape"));
    expect(x.t.has(x.conn("b"))).toBe(true);
    expect(x.t.has(x.conn("a-scrape"))).toBe(true);
    expect(x.t.size).toBe(64);
    // A keeps flooding: the two scrapes in flight stay, only A's own stalled connections churn.
    for (let i = 200; i < 400; i++) expect(x.open(`a${i}`, A)).toMatch(/\((fair_share|stalled)\)$/);
    expect(x.t.has(x.conn("b"))).toBe(true);
    expect(x.t.has(x.conn("a-scrape"))).toBe(true);
  });

  it("three groups competing for a full target converge to an equal split", () => {
    const x = table(12);
    for (let i = 0; i < 12; i++) x.open(`a${i}`, A);
    x.tick(STALL_GRACE_MS);
    for (let i = 0; i < 30; i++) {
      x.open(`b${i}`, B);
      x.open(`c${i}`, C);
      x.open(`a${100 + i}`, A);
    }
    expect(Object.fromEntries(x.t.groups())).toEqual({ "key:A": 4, "key:B": 4, "key:C": 4 });
  });
});

describe("callerGroup", () => {
  it.each([
    [{ key: "sha256:k", routerName: "prom" }, "key:sha256:k"],
    [{ routerName: "prom" }, "identity:prom"],
    [{ key: "", routerName: "" }, "unverified"],
    [{}, "unverified"],
  ])("%j -> %s", (facts, group) => {
    expect(callerGroup(facts)).toBe(group);
  });
});
