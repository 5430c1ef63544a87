/**
 * Layer 2: a Duplex with the net.Socket look-alikes that http.Server and http.Agent call on their sockets, so a
 * virtual connection (conn.ts) can be one: an idle timeout ("timeout" after `ms` without reads or writes), the byte
 * counters, and the no-op socket options.
 */
import { Duplex, type DuplexOptions } from "node:stream";

export class SocketDuplex extends Duplex {
  #idleMs = 0;
  #idleTimer: NodeJS.Timeout | undefined;
  bytesRead = 0;
  bytesWritten = 0;

  constructor(opts?: DuplexOptions) {
    super(opts);
  }

  /** Emits 'timeout' after `ms` without reads or writes (0 disables), like net.Socket. */
  setTimeout(ms: number, cb?: () => void): this {
    this.#idleMs = ms;
    // As net.Socket: a callback is added for a timeout, and removed when the timeout is cleared with 0.
    if (cb) {
      if (ms === 0) this.removeListener("timeout", cb);
      else this.once("timeout", cb);
    }
    this.touch();
    return this;
  }

  /** A read or a write: the idle timeout starts again. */
  protected touch(): void {
    if (this.#idleTimer) clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
    if (this.#idleMs > 0 && !this.destroyed) {
      this.#idleTimer = setTimeout(() => this.emit("timeout"), this.#idleMs);
      this.#idleTimer.unref();
    }
  }

  /** The stream is being destroyed: no timeout any more. */
  protected stopIdleTimer(): void {
    if (this.#idleTimer) clearTimeout(this.#idleTimer);
  }

  setNoDelay(_noDelay?: boolean): this {
    return this;
  }

  setKeepAlive(_enable?: boolean, _delay?: number): this {
    return this;
  }

  ref(): this {
    return this;
  }

  unref(): this {
    return this;
  }

  get remoteAddress(): string | undefined {
    return undefined;
  }
}
