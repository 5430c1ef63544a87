/**
 * `npm run bench`: throughput of the SDK's hot paths, each as a ratio against a reference measured in the same
 * run on the same machine (absolute numbers vary between machines; ratios much less so).
 *
 * - e2ee: our secretstream (push + pull; src/ziti/protocol/secretstream.ts) vs Node's built-in chacha20-poly1305
 *   AEAD (OpenSSL, native): the fastest comparable thing the platform has. Not interoperable; only the yardstick.
 * - e2ee vs libsodium: the same secretstream against libsodium-wrappers' (WebAssembly; what crypto.ts used per
 *   message before), at lengths on each of its paths (JavaScript below ~1.5 KiB, one native AEAD call when
 *   |m| mod 16 is 0 or 8, a derived MAC otherwise).
 * - frame codec: encodeMessage + FrameDecoder over a stream of Data frames vs Buffer.concat + copy of the same
 *   bytes (the least work any framing could do).
 * - soak, frames, http-bind, http-proxy: see bench/soak.ts and bench/fuzz.ts.
 *
 * - generate: `scrapez generate central` for 1,000 clusters (bench/generate.ts).
 * - e2e: the scrape end to end vs OpenZiti's Go tunnelers (bench/e2e.ts; `--e2e-seconds=N` per cell, `--rounds=N`,
 *   `--e2e-warmup=N` seconds of unmeasured load per cell first, `--e2e-concurrency=1,16,64` the cells' concurrencies:
 *   one alone for a profile of that load).
 * - scale: one bind with 1,000 services, a proxy with 2,000 targets scraped by Prometheus (bench/scale.ts;
 *   `--scale-services=N`, `--scale-steps=10,100,1000`, `--scale-step-minutes=N`, `--scale-minutes=N`). ~15 min.
 *
 * Sections: `npm run bench -- [throughput] [soak] [frames] [http-bind] [http-proxy] [generate] [e2e] [scale]` (default: all), with
 * `--scrapes=N` (soak, default 30000: ~3 min here; issue 9's figure is `--scrapes=100000`, ~11 min), `--frames=N` (default 1000000), `--requests=N` (each HTTP fuzz, default
 * 50000), `--seed=N`. The default run takes about 35 minutes on a 2-core machine (scale ~16, e2e ~10, soak ~3); name sections to run fewer.
 */
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import sodium from "libsodium-wrappers";
import { StreamDecryptor, StreamEncryptor, initCrypto } from "../src/ziti/protocol/crypto.js";
import { FrameDecoder, encodeMessage } from "../src/ziti/protocol/frame.js";
import { ContentType, Header, enc } from "../src/ziti/protocol/headers.js";

import { bindHttpFuzzBench, framesBench } from "./fuzz.js";
import { e2eBench } from "./e2e.js";
import { generateBench } from "./generate.js";
import { scaleBench } from "./scale.js";
import { proxyHttpFuzzBench, soakBench, startStack, type Stack } from "./soak.js";

function measure(fn: () => number, minMs = 400): number {
  fn(); // warm up
  let bytes = 0;
  const t0 = process.hrtime.bigint();
  let elapsed = 0;
  while (elapsed < minMs) {
    bytes += fn();
    elapsed = Number(process.hrtime.bigint() - t0) / 1e6;
  }
  return bytes / 1024 / 1024 / (elapsed / 1000); // MiB/s
}

const rows: string[][] = [];
function row(name: string, ours: number, ref: number): void {
  rows.push([name, `${ours.toFixed(0)} MiB/s`, `${ref.toFixed(0)} MiB/s`, `${(ours / ref).toFixed(2)}`]);
}

/** `n` messages through our secretstream, each encrypted and decrypted: the bytes they held. */
function roundTrips(key: Buffer, msg: Buffer, n: number): number {
  const e = new StreamEncryptor(key);
  const d = new StreamDecryptor(key);
  d.init(e.header);
  for (let i = 0; i < n; i++) d.decrypt(e.encrypt(msg));
  return n * msg.length;
}

async function throughput(): Promise<void> {
  await initCrypto();
  const key = randomBytes(32);
  for (const size of [100, 16 * 1024, 32 * 1024]) {
    const msg = randomBytes(size);
    const n = Math.max(1, Math.floor((256 * 1024) / size));
    const ours = measure(() => roundTrips(key, msg, n));
    const ref = measure(() => {
      for (let i = 0; i < n; i++) {
        const iv = randomBytes(12);
        const c = createCipheriv("chacha20-poly1305", key, iv, { authTagLength: 16 });
        const ct = Buffer.concat([c.update(msg), c.final()]);
        const tag = c.getAuthTag();
        const dc = createDecipheriv("chacha20-poly1305", key, iv, { authTagLength: 16 });
        dc.setAuthTag(tag);
        Buffer.concat([dc.update(ct), dc.final()]);
      }
      return n * size;
    });
    row(`e2ee encrypt+decrypt, ${size} B messages`, ours, ref);
  }
  // The MAC path depends on |m| mod 16 (0 or 8: one native call): 32768 is the SDK's full Data chunk.
  for (const size of [100, 300, 1000, 1500, 4099, 16389, 32731, 32768]) {
    const msg = randomBytes(size);
    const n = Math.max(4, Math.floor((256 * 1024) / size));
    const ours = measure(() => roundTrips(key, msg, n));
    const ref = measure(() => {
      const { state, header } = sodium.crypto_secretstream_xchacha20poly1305_init_push(key);
      const pull = sodium.crypto_secretstream_xchacha20poly1305_init_pull(header, key);
      for (let i = 0; i < n; i++) {
        const c = sodium.crypto_secretstream_xchacha20poly1305_push(state, msg, null, 0);
        const m = sodium.crypto_secretstream_xchacha20poly1305_pull(pull, c, null);
        if (!m) throw new Error("libsodium refused its own message");
        Buffer.from(m.message.buffer, m.message.byteOffset, m.message.byteLength);
      }
      return n * size;
    });
    row(`e2ee secretstream vs libsodium's, ${size} B`, ours, ref);
  }

  for (const size of [100, 32 * 1024]) {
    const body = randomBytes(size);
    const frames = Array.from({ length: 64 }, (_, i) => ({
      contentType: ContentType.Data,
      sequence: i,
      headers: new Map([
        [Header.ConnId, enc.u32(7)],
        [Header.Seq, enc.u32(i)],
      ]),
      body,
    }));
    const chunk = 16 * 1024; // a typical TLS read
    const ours = measure(() => {
      const stream = Buffer.concat(frames.map(encodeMessage));
      const d = new FrameDecoder();
      for (let off = 0; off < stream.length; off += chunk) d.push(stream.subarray(off, off + chunk));
      return frames.length * size;
    });
    const ref = measure(() => {
      const stream = Buffer.concat(frames.map((f) => Buffer.concat([Buffer.alloc(36), f.body])));
      const copies: Buffer[] = [];
      for (let off = 0; off < stream.length; off += chunk) copies.push(Buffer.from(stream.subarray(off, off + chunk)));
      Buffer.concat(copies);
      return frames.length * size;
    });
    row(`frame encode+decode, ${size} B bodies, 16 KiB reads`, ours, ref);
  }

  const widths = [0, 1, 2, 3].map((i) =>
    Math.max(...[["benchmark", "scrapez", "reference", "ratio"], ...rows].map((r) => r[i]!.length)),
  );
  const fmt = (r: string[]) => r.map((c, i) => c.padEnd(widths[i]!)).join("  ");
  process.stdout.write(`${fmt(["benchmark", "scrapez", "reference", "ratio"])}\n${rows.map(fmt).join("\n")}\n`);
  process.stdout.write(
    "\nreference: e2ee = Node's native chacha20-poly1305 AEAD; e2ee vs libsodium = libsodium-wrappers' secretstream\n" +
      "(WebAssembly), same messages; frame = Buffer.concat + copy of the same bytes.\n",
  );
}

const SECTIONS = ["throughput", "soak", "frames", "http-bind", "http-proxy", "generate", "e2e", "scale"] as const;
const args = process.argv.slice(2);
const flag = (name: string, dflt: number) => {
  const a = args.find((x) => x.startsWith(`--${name}=`));
  const v = a ? Number(a.slice(name.length + 3)) : dflt;
  if (!Number.isInteger(v) || v <= 0) throw new Error(`--${name}: expected a positive integer, got ${a}`);
  return v;
};
/** A comma-separated list of positive integers, e.g. `--scale-steps=10,100,1000`. */
const listFlag = (name: string, dflt: string) => {
  const a = args.find((x) => x.startsWith(`--${name}=`));
  const v = (a ? a.slice(name.length + 3) : dflt).split(",").map(Number);
  if (v.some((n) => !Number.isInteger(n) || n <= 0)) throw new Error(`--${name}: expected e.g. ${dflt}, got ${a}`);
  return v;
};
const unknown = args.filter((a) => !a.startsWith("--") && !(SECTIONS as readonly string[]).includes(a));
if (unknown.length) {
  process.stderr.write(`unknown bench section(s) ${unknown.join(", ")}; sections: ${SECTIONS.join(", ")}\n`);
  process.exit(2);
}
const chosen = args.filter((a) => !a.startsWith("--"));
const run = (s: (typeof SECTIONS)[number]) => chosen.length === 0 || chosen.includes(s);
const seed = flag("seed", 0x5eed_0009);
// The scrapez processes the benches start run with the image's NODE_OPTIONS (its Dockerfile's ENV), as a deployed
// bind or proxy does; a NODE_OPTIONS given to `npm run bench` wins (NODE_OPTIONS= measures node's defaults).
const imageNodeOptions = /^\s+NODE_OPTIONS=(\S+)/m.exec(readFileSync("Dockerfile", "utf8"))?.[1];
if (imageNodeOptions && process.env.NODE_OPTIONS === undefined) process.env.NODE_OPTIONS = imageNodeOptions;
process.stdout.write(`scrapez processes run with NODE_OPTIONS=${process.env.NODE_OPTIONS ?? ""}\n`);

if (run("throughput")) await throughput();
if (run("frames")) {
  process.stdout.write("\n");
  await framesBench(flag("frames", 1_000_000), seed);
}
if (run("http-bind")) {
  process.stdout.write("\n");
  await bindHttpFuzzBench(flag("requests", 50_000), seed);
}
if (run("soak") || run("http-proxy")) {
  process.stdout.write("\n");
  const stack: Stack = await startStack();
  try {
    if (run("soak")) await soakBench(stack, flag("scrapes", 30_000));
    if (run("http-proxy")) await proxyHttpFuzzBench(stack, flag("requests", 50_000), seed);
  } finally {
    await stack.close();
  }
}
if (run("generate")) {
  process.stdout.write("\n");
  generateBench();
}
if (run("e2e")) {
  process.stdout.write("\n");
  await e2eBench({
    seconds: flag("e2e-seconds", 3),
    rounds: flag("rounds", 3),
    concurrency: listFlag("e2e-concurrency", "1,16,64"),
    warmupSeconds: flag("e2e-warmup", 3),
  });
}
if (run("scale")) {
  process.stdout.write("\n");
  await scaleBench({
    services: flag("scale-services", 1000),
    steps: listFlag("scale-steps", "10,100,1000"),
    stepMinutes: flag("scale-step-minutes", 1),
    minutes: flag("scale-minutes", 5),
  });
}
