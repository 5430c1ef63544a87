/**
 * Per-connection flow control and the end-to-end FINAL marker on a real overlay (controller + edge router
 * of the line under test), with OpenZiti's Go peers (`ziti tunnel host` / `ziti tunnel proxy`) for interop.
 *
 * Issue 9 item 3: a reader that never reads must not stall its router channel. The others on the channel keep
 * round-tripping and the latency probes keep being answered while it lags; past its bound it alone is closed with
 * ZITI_READER_TOO_SLOW, and this process's memory stays bounded however big the answer.
 * Issue 9 item 12: half-close of an encrypted connection sends a secretstream FINAL message before FIN; the Go
 * peers must take it in both directions.
 */
import { randomBytes } from "node:crypto";
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorCodes, ZitiContext, type ZitiConnection, type ZitiError } from "../../src/ziti/index.js";
import { ContentType, Header, connInternals, enc } from "../../src/ziti/internal.js";
import { Overlay } from "../harness/overlay.js";
import { waitUntil } from "../harness/ports.js";
import { tunnelHost, tunnelProxy } from "../harness/ziti-tunnel.js";
import { mib, readAll, summary, writable } from "../harness/streams.js";

const KiB = 1024;
const MiB = 1024 * 1024;

let overlay: Overlay;
let server: ZitiContext;
let client: ZitiContext;
/** Forced into legacy flow control (the default is SDK flow control; sdk-xg.test.ts covers it). */
let serverLegacy: ZitiContext;
let clientLegacy: ZitiContext;
let tcpServer: net.Server;
const cleanup: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  overlay = await Overlay.start();
  // A TCP server that answers with a summary of everything it got, once the request ended (half-close).
  tcpServer = net.createServer((s) => {
    const chunks: Buffer[] = [];
    s.on("data", (d: Buffer) => chunks.push(d));
    s.on("end", () => s.end(summary(Buffer.concat(chunks))));
    s.on("error", () => s.destroy());
  });
  await new Promise<void>((r) => tcpServer.listen(0, "127.0.0.1", r));
  const hostCfg = await overlay.createConfig("final-go-host", "host.v1", {
    protocol: "tcp",
    address: "127.0.0.1",
    port: (tcpServer.address() as net.AddressInfo).port,
  });
  await overlay.service("flow-big", { encryptionRequired: true });
  await overlay.service("flow-echo", { encryptionRequired: true });
  await overlay.service("final-go-host", { encryptionRequired: true, configs: [hostCfg] });
  await overlay.service("final-ours", { encryptionRequired: true });
  await overlay.service("final-ts", { encryptionRequired: true });
  const serverFile = await overlay.identity("flow-server", ["servers"]);
  const clientFile = await overlay.identity("flow-client", ["clients"]);
  server = await ZitiContext.fromIdentityFile(serverFile);
  client = await ZitiContext.fromIdentityFile(clientFile);
  serverLegacy = await ZitiContext.fromIdentityFile(serverFile, { sdkFlowControl: false });
  clientLegacy = await ZitiContext.fromIdentityFile(clientFile, { sdkFlowControl: false });
});

afterAll(async () => {
  for (const c of cleanup.reverse()) await c().catch(() => undefined);
  await client?.close();
  await server?.close();
  await clientLegacy?.close();
  await serverLegacy?.close();
  tcpServer?.close();
  await overlay?.close();
});

describe("legacy flow control (forced): per-connection bound on the real overlay (issue 9 item 3)", () => {
  it("a dialer that never reads a 64 MiB answer is closed alone; 20 other dials on its channel round-trip meanwhile; RSS bounded", async () => {
    const total = 64 * MiB;
    const firstPart = 3 * MiB;
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let written = 0;
    const big = await serverLegacy.listen("flow-big");
    cleanup.push(() => big.close());
    big.on("connection", (c: ZitiConnection) => {
      c.on("error", () => undefined);
      const chunk = Buffer.alloc(64 * KiB, 0x5a);
      void (async () => {
        while (written < total && !c.destroyed && !c.writableEnded) {
          // The first 3 MiB (under the reader's 4 MiB bound), then the rest once the test has looked around.
          if (written === firstPart) await released;
          written += chunk.length;
          if (!c.write(chunk)) await writable(c);
        }
        if (!c.destroyed && !c.writableEnded) c.end();
      })();
    });
    const echo = await serverLegacy.listen("flow-echo");
    cleanup.push(() => echo.close());
    echo.on("connection", (c: ZitiConnection) => {
      c.on("error", () => c.destroy());
      c.pipe(c);
    });

    // Memory of this process (both ends live here: the writer is bounded by socket back-pressure).
    const baseline = process.memoryUsage().rss;
    let peak = baseline;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
    try {
      const laggard = await clientLegacy.dial("flow-big");
      let heldAtError = -1;
      const laggardErr = new Promise<ZitiError>((resolve) =>
        laggard.once("error", (e) => {
          heldAtError = laggard.readableLength;
          resolve(e as ZitiError);
        }),
      );
      // Never read. With the old engine the socket paused at the stream's 64 KiB high-water mark: this waited forever.
      await waitUntil(() => laggard.readableLength >= firstPart, 60_000, "3 MiB unread on the laggard");
      const ch = connInternals(laggard).channel;

      // While it lags: a latency probe on its channel is answered, and 20 dials on the same channel round-trip.
      const probeStart = performance.now();
      const probe = await ch.request(
        ContentType.Latency,
        new Map([[Header.Reflected, enc.u64(BigInt(Date.now()) * 1_000_000n)]]),
        Buffer.alloc(0),
        10_000,
      );
      const probeMs = performance.now() - probeStart;
      expect(probe.contentType).toBe(ContentType.Result);
      const roundTrip = async (i: number) => {
        const t0 = performance.now();
        const c = await clientLegacy.dial("flow-echo");
        expect(connInternals(c).channel).toBe(ch);
        const msg = randomBytes(16 * KiB + i);
        c.end(msg);
        const got = await readAll(c);
        return { ok: got.equals(msg), ms: performance.now() - t0 };
      };
      const during = await Promise.all(Array.from({ length: 20 }, (_, i) => roundTrip(i)));
      expect(during.every((r) => r.ok)).toBe(true);
      expect(laggard.destroyed).toBe(false);
      expect(laggard.readableLength).toBe(firstPart);

      // The rest of the 64 MiB: the laggard passes its bound and is closed alone.
      release();
      const err = await laggardErr;
      expect(err.code).toBe(ErrorCodes.READER_TOO_SLOW);
      expect(err.message).toContain("flow-big");
      expect(err.message).toContain(`connection ${laggard.connId}`);
      expect(heldAtError).toBeLessThanOrEqual(laggard.maxBufferedBytes + 64 * KiB);
      const after = await Promise.all(Array.from({ length: 20 }, (_, i) => roundTrip(i)));
      expect(after.every((r) => r.ok)).toBe(true);
      expect(ch.isOpen).toBe(true);

      const ms = (rs: { ms: number }[]) => {
        const s = rs.map((r) => r.ms).sort((a, b) => a - b);
        return `median ${s[Math.floor(s.length / 2)]!.toFixed(0)} ms, max ${s[s.length - 1]!.toFixed(0)} ms`;
      };
      process.stdout.write(
        `[sdk-flow] laggard holding ${mib(firstPart)} MiB unread: latency probe ${probeMs.toFixed(1)} ms; ` +
          `20 echo dials ${ms(during)}; after it was closed (at ${mib(heldAtError)} MiB unread, writer at ` +
          `${mib(written)} MiB): ${ms(after)}; RSS baseline ${mib(baseline)} MiB, peak ${mib(peak)} MiB ` +
          `(+${mib(peak - baseline)})\n`,
      );
      // Bounded: far below the 64 MiB answer (which the old engine left in kernel and router buffers instead).
      expect(peak - baseline).toBeLessThan(48 * MiB);
    } finally {
      clearInterval(sampler);
      release();
    }
  });
});

describe("secretstream FINAL on half-close, with OpenZiti's Go peers (issue 9 item 12)", () => {
  it("our dial half-closes (FINAL, then FIN) to `ziti tunnel host`: the Go host takes the end and answers", async () => {
    const host = await tunnelHost(await overlay.identity("go-host", ["servers"]), ["final-go-host"]);
    cleanup.push(() => host.close());
    for (const size of [1 * MiB, 1]) {
      const c = await waitUntil(
        () => client.dial("final-go-host", { timeoutMs: 5_000 }).catch(() => undefined),
        30_000,
        "dial via tunnel host",
      );
      const payload = randomBytes(size);
      c.end(payload);
      expect((await readAll(c)).toString()).toBe(summary(payload));
    }
    expect(host.logTail()).not.toMatch(/crypto failed|failed to receive crypto header/);
  });

  it("`ziti tunnel proxy` to our listener, which answers and half-closes with FINAL + FIN: every byte and the end arrive", async () => {
    let expectFinal = false;
    // What each accepted connection saw. (The harness's port probe makes the proxy dial once with nothing.)
    const seen: { bytes: number; expectFinal: boolean; finalReceived: boolean; error?: string }[] = [];
    const l = await server.listen("final-ours");
    cleanup.push(() => l.close());
    l.on("connection", (conn: ZitiConnection) => {
      const c = connInternals(conn);
      c.expectFinal = expectFinal;
      c.on("error", () => undefined);
      readAll(c).then(
        (req) => {
          seen.push({ bytes: req.length, expectFinal: c.expectFinal, finalReceived: c.finalReceived });
          c.end(Buffer.concat([Buffer.from(`${summary(req)}\n`), Buffer.alloc(1 * MiB, 0x61)]));
        },
        (e: ZitiError) => seen.push({ bytes: -1, expectFinal: c.expectFinal, finalReceived: false, error: e.code }),
      );
    });
    const proxy = await tunnelProxy(await overlay.identity("go-client", ["clients"]), "final-ours");
    cleanup.push(() => proxy.proc.close());
    const viaProxy = (req: Buffer) =>
      new Promise<Buffer>((resolve, reject) => {
        const s = net.connect(proxy.port, "127.0.0.1");
        s.on("connect", () => s.end(req));
        readAll(s).then(resolve, reject);
      });
    const req = randomBytes(256 * KiB);
    const reply = await viaProxy(req);
    expect(reply.subarray(0, reply.indexOf(10)).toString()).toBe(summary(req));
    expect(reply.length - reply.indexOf(10) - 1).toBe(1 * MiB);
    // Go never sends FINAL...
    expect(seen.find((x) => x.bytes === req.length)).toEqual({
      bytes: req.length,
      expectFinal: false,
      finalReceived: false,
    });
    // ...so a connection from a Go peer must never be told to expect one: its clean end would count as truncated.
    expectFinal = true;
    const cut = viaProxy(randomBytes(1 * KiB)).catch(() => Buffer.alloc(0));
    const truncated = await waitUntil(() => seen.find((x) => x.expectFinal), 30_000, "the connection expecting FINAL");
    expect(truncated.error).toBe(ErrorCodes.STREAM_TRUNCATED);
    await cut;
    await l.close();
  });

  it("our dial to our listener across the router: FINAL arrives, so a listener that expects it sees a clean end", async () => {
    const got: { req: Buffer; final: boolean }[] = [];
    const l = await server.listen("final-ts");
    cleanup.push(() => l.close());
    l.on("connection", (conn: ZitiConnection) => {
      const c = connInternals(conn);
      c.expectFinal = true;
      c.on("error", () => undefined);
      readAll(c).then((req) => {
        got.push({ req, final: c.finalReceived });
        c.end(summary(req));
      });
    });
    const c = await client.dial("final-ts");
    const payload = randomBytes(512 * KiB);
    c.end(payload);
    expect((await readAll(c)).toString()).toBe(summary(payload));
    expect(connInternals(c).finalReceived).toBe(true);
    expect(got).toHaveLength(1);
    expect(got[0]!.final).toBe(true);
    expect(got[0]!.req.equals(payload)).toBe(true);
  });
});
