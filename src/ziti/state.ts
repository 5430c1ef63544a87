/**
 * A small explicit state machine: a table of allowed transitions and one function that moves between them,
 * logs the move and publishes it on diagnostics_channel. Illegal moves are programming errors and throw.
 */
import { publishState, type Logger, type StateEvent } from "./debug.js";

export class StateMachine<S extends string> {
  #state: S;
  readonly #allowed: Readonly<Record<S, readonly S[]>>;
  readonly #kind: StateEvent["kind"];
  readonly #id: string;
  readonly #log: Logger;

  constructor(
    kind: StateEvent["kind"],
    id: string,
    initial: S,
    allowed: Readonly<Record<S, readonly S[]>>,
    log: Logger,
  ) {
    this.#kind = kind;
    this.#id = id;
    this.#state = initial;
    this.#allowed = allowed;
    this.#log = log;
  }

  get state(): S {
    return this.#state;
  }

  is(...states: S[]): boolean {
    return states.includes(this.#state);
  }

  /** Moves to `next`; returns false (and does nothing) if already there. */
  to(next: S, reason?: string): boolean {
    const from = this.#state;
    if (from === next) return false;
    if (!this.#allowed[from].includes(next)) {
      throw new Error(`${this.#kind} ${this.#id}: illegal state transition ${from} -> ${next}`);
    }
    this.#state = next;
    this.#log("%s %s: %s -> %s%s", this.#kind, this.#id, from, next, reason ? ` (${reason})` : "");
    publishState({ kind: this.#kind, id: this.#id, from, to: next, ...(reason ? { reason } : {}) });
    return true;
  }
}
