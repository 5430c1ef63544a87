/**
 * Fuzz benches (`npm run bench -- frames` / `-- http`): larger runs of what the tests do at a fixed, smaller size.
 *
 * - frames: random, valid and mutated frames into the SDK's FrameDecoder, in random chunks. Counts decoded
 *   messages and rejected streams by error code; anything thrown other than a ProtocolError is a bug and fails.
 *   Reference in the same run: the same bytes through Buffer.concat + copy (the least work any framing could do).
 * - http: random and mutated raw HTTP requests (test/harness/http-fuzz.ts) at the bind side's request handling
 *   (a real BindServer fed through in-memory overlay connections). The proxy surface is fuzzed as a real process
 *   on the real overlay by the soak section's stack (see soak.ts), so it runs there.
 */
import { EventEmitter } from "node:events";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Duplex } from "node:stream";
import { parseBindConfig } from "../src/bind/config.js";
import { BindServer, type BindOverlay } from "../src/bind/server.js";
import { createLogger } from "../src/common/log.js";
import { ProtocolError } from "../src/ziti/errors.js";
import { FrameDecoder, encodeMessage, type Message } from "../src/ziti/protocol/frame.js";
import { runFuzz, type Rng } from "../test/harness/http-fuzz.js";
import { prng } from "../test/unit/prng.js";

const out = (s: string) => process.stdout.write(`${s}\n`);
const int = (r: Rng, n: number) => Math.floor(r() * n);

function randomBytes(r: Rng, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = int(r, 256);
  return b;
}

function randomMessage(r: Rng): Message {
  const headers = new Map<number, Buffer>();
  const nh = int(r, 6);
  for (let i = 0; i < nh; i++) headers.set(int(r, 2) ? int(r, 1100) : int(r, 2 ** 31), randomBytes(r, int(r, 40)));
  return {
    contentType: int(r, 3) === 0 ? int(r, 2 ** 31) : 60780 + int(r, 30),
    sequence: int(r, 2 ** 31),
    headers,
    body: randomBytes(r, int(r, 10) === 0 ? int(r, 20_000) : int(r, 200)),
  };
}

/** Damage to an encoded stream: flipped bytes, a corrupted length field, truncation, inserted junk. */
function mutate(r: Rng, b: Buffer): Buffer {
  const x = Buffer.from(b);
  const n = 1 + int(r, 3);
  let res = x;
  for (let i = 0; i < n && res.length > 0; i++) {
    const at = int(r, res.length);
    switch (int(r, 4)) {
      case 0:
        res[at] = int(r, 256);
        break;
      case 1: // a length field (preamble offsets 8..19) set to something odd
        if (res.length >= 20)
          res.writeUInt32LE([0, 1, 0x7fffffff, 0xffffffff, int(r, 2 ** 32)][int(r, 5)]! >>> 0, 8 + 4 * int(r, 3));
        break;
      case 2:
        res = res.subarray(0, at);
        break;
      default:
        res = Buffer.concat([res.subarray(0, at), randomBytes(r, 1 + int(r, 16)), res.subarray(at)]);
    }
  }
  return res;
}

export async function framesBench(count: number, seed: number): Promise<void> {
  const r = prng(seed);
  let frames = 0;
  let decoded = 0;
  let bytes = 0;
  const rejected: Record<string, number> = {};
  let otherThrows = 0;
  let firstOther = "";
  const kinds = { valid: 0, mutated: 0, random: 0 };
  const streams: Buffer[] = [];
  const t0 = process.hrtime.bigint();
  while (frames < count) {
    // A stream of 1-16 frames: valid, mutated, or random bytes; fed in random chunks.
    const n = Math.min(count - frames, 1 + int(r, 16));
    frames += n;
    let stream: Buffer = Buffer.concat(Array.from({ length: n }, () => encodeMessage(randomMessage(r))));
    const k = r();
    if (k < 0.5) kinds.valid += n;
    else if (k < 0.9) {
      stream = mutate(r, stream);
      kinds.mutated += n;
    } else {
      stream = randomBytes(r, int(r, 400));
      kinds.random += n;
    }
    bytes += stream.length;
    if (streams.length < 2000) streams.push(stream);
    const d = new FrameDecoder({ maxFrameBytes: int(r, 2) ? 4096 : 4 * 1024 * 1024 });
    try {
      for (let off = 0; off < stream.length;) {
        const c = 1 + int(r, int(r, 2) ? 32 : 8192);
        decoded += d.push(stream.subarray(off, off + c)).length;
        off += c;
      }
    } catch (err) {
      if (err instanceof ProtocolError) rejected[err.code] = (rejected[err.code] ?? 0) + 1;
      else {
        otherThrows++;
        firstOther ||= `${String(err)} on ${stream.toString("hex").slice(0, 200)}`;
      }
    }
  }
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  // Reference: copying the same number of bytes in 16 KiB chunks.
  const t1 = process.hrtime.bigint();
  let copied = 0;
  while (copied < bytes) {
    for (const s of streams) {
      const parts: Buffer[] = [];
      for (let off = 0; off < s.length; off += 16 * 1024) parts.push(Buffer.from(s.subarray(off, off + 16 * 1024)));
      Buffer.concat(parts);
      copied += s.length;
      if (copied >= bytes) break;
    }
  }
  const refMs = Number(process.hrtime.bigint() - t1) / 1e6;
  const rej = Object.entries(rejected)
    .map(([c, v]) => `${c} ${v}`)
    .join(", ");
  out(
    `frames: ${frames} frames (${kinds.valid} in valid streams, ${kinds.mutated} mutated, ${kinds.random} as random ` +
      `bytes), ${(bytes / 2 ** 20).toFixed(0)} MiB, seed ${seed}: decoded ${decoded} messages; rejected streams: ` +
      `${rej || "none"}; other throws: ${otherThrows}${firstOther ? ` (first: ${firstOther})` : ""}; ` +
      `${(ms / 1000).toFixed(1)} s (generation included) vs ${(refMs / 1000).toFixed(2)} s to copy the same bytes`,
  );
  if (otherThrows > 0) process.exitCode = 1;
}

/** Two connected in-memory Duplex ends, as the SDK hands an overlay connection to the bind server. */
function duplexPair(): [Duplex, Duplex] {
  const ends: Duplex[] = [];
  const make = (other: () => Duplex) =>
    new Duplex({
      read() {},
      write(chunk: Buffer, _enc, cb) {
        if (!other().destroyed) other().push(chunk);
        cb();
      },
      final(cb) {
        if (!other().destroyed) other().push(null);
        cb();
      },
      destroy(err, cb) {
        if (!other().destroyed) other().destroy();
        cb(err);
      },
    });
  ends.push(
    make(() => ends[1]!),
    make(() => ends[0]!),
  );
  return [ends[0]!, ends[1]!];
}

export async function bindHttpFuzzBench(count: number, seed: number): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "scrapez-bench-fuzz-"));
  writeFileSync(join(dir, "id.json"), "{}");
  const upstream = http.createServer((req, res) => {
    req.resume();
    res.writeHead(200, { "content-type": "text/plain; version=0.0.4" });
    res.end("# TYPE fuzz_up gauge\nfuzz_up 1\n");
  });
  await new Promise<void>((ok) => upstream.listen(0, "127.0.0.1", ok));
  const url = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
  const listeners = new Map<string, EventEmitter & { state: string; close(): Promise<void> }>();
  const overlay = {
    identityName: "bind-host",
    async listen(service: string) {
      const l = Object.assign(new EventEmitter(), { state: "bound", close: async () => undefined });
      if (!listeners.has(service)) listeners.set(service, l);
      return l;
    },
  };
  const config = parseBindConfig(
    {
      identity: "id.json",
      targets: [
        { service: "node", upstream: url, bindUsingEdgeIdentity: false },
        { service: "probe", upstream: url, paths: ["/probe*", "/metrics"], bindUsingEdgeIdentity: false },
      ],
    },
    "bind.yaml",
    dir,
    {},
  );
  const server = new BindServer(
    overlay as unknown as BindOverlay,
    config,
    createLogger("error", { component: "bind" }, () => undefined),
  );
  await server.start();
  let n = 0;
  const rss0 = process.memoryUsage().rss;
  const t0 = Date.now();
  const tally = await runFuzz({
    count,
    concurrency: 64,
    rngFor: (i) => prng((seed ^ Math.imul(i + 1, 0x85ebca6b)) >>> 0),
    surface: "bind",
    hosts: ["node", "localhost", "evil.example", ""],
    connect: () => {
      const [client, srv] = duplexPair();
      const service = n++ % 2 ? "node" : "probe";
      Object.assign(srv, { callerId: "prometheus-central", service, connId: 1, circuitId: "c1" });
      listeners.get(service)!.emit("connection", srv);
      return client;
    },
    timeoutMs: 5_000,
  });
  out(
    `http (bind side, in-memory overlay connections), seed ${seed}: ${tally.summary()} in ` +
      `${((Date.now() - t0) / 1000).toFixed(1)} s; failures ${tally.failed}; RSS ${(rss0 / 2 ** 20).toFixed(0)} -> ` +
      `${(process.memoryUsage().rss / 2 ** 20).toFixed(0)} MiB`,
  );
  for (const f of tally.failures.slice(0, 5)) out(`  failure: ${JSON.stringify(f)}`);
  if (tally.failed > 0) process.exitCode = 1;
  await server.close();
  upstream.closeAllConnections();
  upstream.close();
  rmSync(dir, { recursive: true, force: true });
}
