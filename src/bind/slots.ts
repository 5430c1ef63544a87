/**
 * Connection slots of one bound target: at most `cap` overlay connections count at a time, and when the target is
 * full a new connection takes the slot of one that makes no progress instead of being refused. Pure (the clock and
 * the "exchange over" test are passed in); the bind server destroys the victims it is handed.
 *
 * Terms:
 * - group: who the caller is, as far as the SDK verified it: the pin of a key whose caller proof verified, else the
 *   identity a v2.0+ router asserted, else the one "unverified" group;
 * - admitted: the target's allow-list admits the caller (every caller when there is none). A caller it refuses can
 *   only get a 403, so its connections make no progress and never displace an admitted caller's;
 * - head: the connection delivered a complete request head (its first exchange started);
 * - busy: an exchange is in flight (head received, response not finished); never evicted;
 * - idle: a kept-alive connection with nothing in flight after at least one exchange;
 * - done: our side of the exchange is over (we ended our writing side, or destroyed it). Such a connection may still
 *   wait for the last acknowledgements of its circuit before the SDK emits 'close', but it holds no slot.
 *
 * When a connection arrives at a full target, the victim is, in this order (the first class with a candidate wins):
 *   1. not_allowed: (only for an admitted newcomer) a connection of a caller the allow-list refuses, not busy;
 *   2. stalled: no complete head, open for `graceMs` or longer, from any group;
 *   3. idle: a kept-alive connection with nothing in flight, the longest idle first, from the newcomer's own group
 *      or a group holding more slots than the newcomer's;
 *   4. fair_share: no complete head yet (still within the grace), from the newcomer's own group or from a group
 *      holding at least two slots more than the newcomer's group.
 * Within a class the group holding the most slots gives first, then the oldest connection. Apart from stalled
 * connections, no group grows past another by taking its slots: while the target is full, arrivals move the slots
 * toward an equal split among the groups that want them. A newcomer the allow-list refuses only ever replaces other
 * refused callers' connections. With no candidate the newcomer is refused (every slot is busy, or held fairly by
 * others).
 */

/** Why a connection lost its slot (the `reason` label of scrapez_bind_connections_evicted_total). */
export type EvictReason = "not_allowed" | "stalled" | "idle" | "fair_share";

export const EVICT_REASONS: readonly EvictReason[] = ["not_allowed", "stalled", "idle", "fair_share"];

/**
 * How long a new connection has to deliver its request head before it counts as stalled. A dialer writes its head
 * as soon as the dial completes, so on the overlay it arrives within one round trip of the circuit (milliseconds,
 * a few hundred across regions); 1 s is well past that, and short enough that a flood of stalled connections frees a
 * slot for the next arrival within a second. headersTimeoutSeconds (10 s) still closes a stalled connection when
 * nobody needs its slot.
 */
export const STALL_GRACE_MS = 1_000;

/** Who the caller of a connection is, as the slot table groups it. */
export interface SlotCaller {
  group: string;
  admitted: boolean;
}

/** The group of a caller: the verified key's pin, else the router-asserted identity, else "unverified". */
export function callerGroup(facts: { key?: string | undefined; routerName?: string | undefined }): string {
  if (facts.key) return `key:${facts.key}`;
  if (facts.routerName) return `identity:${facts.routerName}`;
  return "unverified";
}

interface Slot {
  group: string;
  admitted: boolean;
  openedAt: number;
  head: boolean;
  inFlight: number;
  /** When the last exchange ended (idle since). */
  idleSince: number;
}

export type Admission<C> = { ok: true; evicted?: { conn: C; reason: EvictReason } } | { ok: false };

export interface SlotOptions<C> {
  cap: number;
  graceMs?: number;
  now?: () => number;
  /** True when our side of the connection's exchange is over (it then holds no slot). */
  isDone?: (conn: C) => boolean;
}

export class SlotTable<C> {
  readonly #slots = new Map<C, Slot>();
  readonly #cap: number;
  readonly #grace: number;
  readonly #now: () => number;
  readonly #isDone: (conn: C) => boolean;

  constructor(opts: SlotOptions<C>) {
    this.#cap = opts.cap;
    this.#grace = opts.graceMs ?? STALL_GRACE_MS;
    this.#now = opts.now ?? Date.now;
    this.#isDone = opts.isDone ?? (() => false);
  }

  /** Connections holding a slot (after dropping those whose exchange is over). */
  get size(): number {
    this.#prune();
    return this.#slots.size;
  }

  has(conn: C): boolean {
    return this.#slots.has(conn);
  }

  /**
   * Gives `conn` a slot: at once when one is free, else by evicting the victim the rules pick (the caller destroys
   * it; it has already lost its slot). `{ ok: false }`: refused, nothing evicted.
   */
  admit(conn: C, caller: SlotCaller): Admission<C> {
    if (this.#slots.has(conn)) return { ok: true };
    this.#prune();
    let evicted: { conn: C; reason: EvictReason } | undefined;
    if (this.#slots.size >= this.#cap) {
      evicted = this.#victim(caller);
      if (!evicted) return { ok: false };
      this.#slots.delete(evicted.conn);
    }
    const now = this.#now();
    this.#slots.set(conn, { ...caller, openedAt: now, head: false, inFlight: 0, idleSince: now });
    return evicted ? { ok: true, evicted } : { ok: true };
  }

  /** A complete request head arrived on `conn`: an exchange is in flight. */
  requestStarted(conn: C): void {
    const s = this.#slots.get(conn);
    if (!s) return;
    s.head = true;
    s.inFlight++;
  }

  /** An exchange on `conn` ended (its response finished or was abandoned). */
  requestEnded(conn: C): void {
    const s = this.#slots.get(conn);
    if (!s || s.inFlight === 0) return;
    s.inFlight--;
    if (s.inFlight === 0) s.idleSince = this.#now();
  }

  /** `conn` closed: its slot is free (idempotent). */
  release(conn: C): void {
    this.#slots.delete(conn);
  }

  /** Slots held per group (for tests and the status of a target). */
  groups(): Map<string, number> {
    this.#prune();
    const n = new Map<string, number>();
    for (const s of this.#slots.values()) n.set(s.group, (n.get(s.group) ?? 0) + 1);
    return n;
  }

  #prune(): void {
    for (const c of this.#slots.keys()) if (this.#isDone(c)) this.#slots.delete(c);
  }

  #victim(caller: SlotCaller): { conn: C; reason: EvictReason } | undefined {
    const now = this.#now();
    const held = this.groups();
    const mine = held.get(caller.group) ?? 0;
    const size = (g: string) => held.get(g) ?? 0;
    // Larger group first, then the oldest by `age` (smaller is older).
    const pick = (ok: (s: Slot) => boolean, age: (s: Slot) => number): C | undefined => {
      let best: [C, Slot] | undefined;
      for (const [c, s] of this.#slots) {
        if (!ok(s)) continue;
        if (
          !best ||
          size(s.group) > size(best[1].group) ||
          (size(s.group) === size(best[1].group) && age(s) < age(best[1]))
        )
          best = [c, s];
      }
      return best?.[0];
    };
    const opened = (s: Slot) => s.openedAt;
    // A refused newcomer competes only with other refused callers' connections.
    const mayTake = (s: Slot) => caller.admitted || !s.admitted;
    const fair = (s: Slot) => mayTake(s) && (s.group === caller.group || size(s.group) > mine);
    const classes: [EvictReason, (s: Slot) => boolean, (s: Slot) => number][] = [
      ["not_allowed", (s) => caller.admitted && !s.admitted && s.inFlight === 0, opened],
      ["stalled", (s) => mayTake(s) && !s.head && now - s.openedAt >= this.#grace, opened],
      ["idle", (s) => fair(s) && s.head && s.inFlight === 0, (s) => s.idleSince],
      ["fair_share", (s) => mayTake(s) && !s.head && (s.group === caller.group || size(s.group) >= mine + 2), opened],
    ];
    for (const [reason, ok, age] of classes) {
      const conn = pick(ok, age);
      if (conn !== undefined) return { conn, reason };
    }
    return undefined;
  }
}
