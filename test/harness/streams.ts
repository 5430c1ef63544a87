/**
 * Small stream helpers the SDK tests share: reading a connection to its end, waiting until it takes more writes,
 * and how a transferred buffer is named in a message (its length and hash, never its bytes).
 */
import { createHash } from "node:crypto";
import type { Duplex } from "node:stream";

/** Everything `s` lets its reader see, up to its end; rejects on its error. */
export function readAll(s: Duplex): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    s.on("data", (d: Buffer) => chunks.push(d));
    s.on("end", () => resolve(Buffer.concat(chunks)));
    s.on("error", reject);
  });
}

/** Resolves on 'drain', or once `s` can take no more writes (ended by the peer, or closed). */
export function writable(s: Duplex): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      for (const ev of ["drain", "finish", "close"]) s.off(ev, done);
      resolve();
    };
    for (const ev of ["drain", "finish", "close"]) s.once(ev, done);
  });
}

/** A buffer as a test names it: `len=N sha256=...`. */
export const summary = (b: Buffer): string => `len=${b.length} sha256=${createHash("sha256").update(b).digest("hex")}`;

/** Bytes in MiB with one decimal. */
export const mib = (n: number): string => (n / (1024 * 1024)).toFixed(1);
