/**
 * SDK-side flow control ("xgress to SDK") on a real overlay (controller + edge router of the line under test), with
 * OpenZiti's Go peers (`ziti tunnel host` / `ziti tunnel proxy`; v2.0.3's run SDK flow control too, v1.6.3's the
 * legacy mode, where the router bridges the two).
 *
 * Issue 9 item 3, bind side: in legacy mode a dialer that sends a request and never reads the answer fills its
 * circuit; the router's receive loop for our listener's whole channel then blocks, and every other connection on
 * that channel waits until the channel is declared dead. With SDK flow control each circuit has its own window: the
 * listener's writer waits (back-pressure on that connection alone) and the others keep round-tripping.
 */
import { randomBytes } from "node:crypto";
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ZitiContext, type ZitiConnection, type ZitiListener } from "../../src/ziti/index.js";
import { connInternals } from "../../src/ziti/internal.js";
import { Overlay } from "../harness/overlay.js";
import { waitUntil } from "../harness/ports.js";
import { tunnelHost, tunnelProxy } from "../harness/ziti-tunnel.js";
import { mib, readAll, summary, writable } from "../harness/streams.js";

const KiB = 1024;
const MiB = 1024 * 1024;
const BIG = 64 * MiB;

let overlay: Overlay;
let server: ZitiContext;
let client: ZitiContext;
let serverLegacy: ZitiContext;
let clientLegacy: ZitiContext;
let tcpServer: net.Server;
const cleanup: (() => Promise<unknown>)[] = [];

const stats = (ms: number[]) => {
  const s = [...ms].sort((a, b) => a - b);
  return `median ${s[Math.floor(s.length / 2)]!.toFixed(0)} ms, max ${s[s.length - 1]!.toFixed(0)} ms`;
};

/**
 * A listener that answers by the first byte of the request: "B" = 64 MiB of 0x5a (written as fast as the
 * connection takes it), anything else = echo. Records the accepted connections' flow-control mode.
 */
function serveBigOrEcho(l: ZitiListener, modes: string[]): { written: () => number; conns: ZitiConnection[] } {
  let written = 0;
  const conns: ZitiConnection[] = [];
  l.on("connection", (c: ZitiConnection) => {
    conns.push(c);
    modes.push(c.flowControl);
    c.on("error", () => c.destroy());
    c.once("data", (first: Buffer) => {
      if (first[0] !== 0x42) {
        c.write(first);
        c.pipe(c);
        return;
      }
      const chunk = Buffer.alloc(64 * KiB, 0x5a);
      void (async () => {
        let mine = 0;
        while (mine < BIG && !c.destroyed && !c.writableEnded) {
          mine += chunk.length;
          written += chunk.length;
          if (!c.write(chunk)) await writable(c);
        }
        if (!c.destroyed && !c.writableEnded) c.end();
      })();
    });
  });
  return { written: () => written, conns };
}

beforeAll(async () => {
  overlay = await Overlay.start();
  tcpServer = net.createServer((s) => {
    const chunks: Buffer[] = [];
    s.on("data", (d: Buffer) => chunks.push(d));
    s.on("end", () => s.end(Buffer.concat([Buffer.from(`${summary(Buffer.concat(chunks))}\n`), randomBytes(MiB)])));
    s.on("error", () => s.destroy());
  });
  await new Promise<void>((r) => tcpServer.listen(0, "127.0.0.1", r));
  const hostCfg = await overlay.createConfig("xg-go-host", "host.v1", {
    protocol: "tcp",
    address: "127.0.0.1",
    port: (tcpServer.address() as net.AddressInfo).port,
  });
  await overlay.service("xg-go-host", { encryptionRequired: true, configs: [hostCfg] });
  await overlay.service("xg-ours", { encryptionRequired: true });
  await overlay.service("xg-stall", { encryptionRequired: true });
  await overlay.service("xg-slow", { encryptionRequired: true });
  await overlay.service("xg-speed", { encryptionRequired: true });
  await overlay.service("legacy-speed", { encryptionRequired: true });
  await overlay.service("xg-self", { encryptionRequired: true });
  const serverFile = await overlay.identity("xg-server", ["servers"]);
  const clientFile = await overlay.identity("xg-client", ["clients"]);
  server = await ZitiContext.fromIdentityFile(serverFile);
  client = await ZitiContext.fromIdentityFile(clientFile);
  serverLegacy = await ZitiContext.fromIdentityFile(serverFile, { sdkFlowControl: false });
  clientLegacy = await ZitiContext.fromIdentityFile(clientFile, { sdkFlowControl: false });
});

afterAll(async () => {
  for (const c of cleanup.reverse()) await c().catch(() => undefined);
  for (const ctx of [client, server, clientLegacy, serverLegacy]) await ctx?.close();
  tcpServer?.close();
  await overlay?.close();
});

describe("SDK flow control: one context dialing a service it hosts itself", () => {
  it("both ends of the circuit reach the same router over different channels, and the echo is byte-exact", async () => {
    // A v1.6 router keys an SDK connection's circuits by circuit id alone: both ends on one channel would collide.
    const self = await ZitiContext.fromIdentityFile(await overlay.identity("xg-self", ["clients", "servers"]));
    cleanup.push(() => self.close());
    const l = await self.listen("xg-self");
    l.on("connection", (c: ZitiConnection) => c.pipe(c));
    const payload = randomBytes(256 * KiB);
    const c = await waitUntil(
      () => self.dial("xg-self", { timeoutMs: 5_000 }).catch(() => undefined),
      30_000,
      "dial of its own service",
    );
    expect(c.flowControl).toBe("sdk");
    c.end(payload);
    expect(summary(await readAll(c))).toBe(summary(payload));
    expect(
      self
        .routerStatus()
        .map((r) => r.role)
        .sort(),
    ).toEqual(["bind", "dial"]);
  });
});

describe("SDK flow control interop with OpenZiti's Go peers", () => {
  it("our dial (SDK flow control) to `ziti tunnel host`: 1 MiB each way byte-exact, half-close and the answer", async () => {
    const host = await tunnelHost(await overlay.identity("xg-go-host", ["servers"]), ["xg-go-host"]);
    cleanup.push(() => host.close());
    for (const size of [MiB, 1]) {
      const c = await waitUntil(
        () => client.dial("xg-go-host", { timeoutMs: 5_000 }).catch(() => undefined),
        30_000,
        "dial via tunnel host",
      );
      expect(c.flowControl).toBe("sdk");
      const payload = randomBytes(size);
      c.end(payload);
      const reply = await readAll(c);
      expect(reply.subarray(0, reply.indexOf(10)).toString()).toBe(summary(payload));
      expect(reply.length - reply.indexOf(10) - 1).toBe(MiB);
    }
  });

  it("`ziti tunnel proxy` to our listener (SDK flow control): request and 1 MiB answer byte-exact, ends both ways", async () => {
    const modes: string[] = [];
    const l = await server.listen("xg-ours");
    cleanup.push(() => l.close());
    l.on("connection", (c: ZitiConnection) => {
      modes.push(c.flowControl);
      c.on("error", () => undefined);
      void readAll(c).then((req) => c.end(Buffer.concat([Buffer.from(`${summary(req)}\n`), Buffer.alloc(MiB, 0x61)])));
    });
    const proxy = await tunnelProxy(await overlay.identity("xg-go-client", ["clients"]), "xg-ours");
    cleanup.push(() => proxy.proc.close());
    const req = randomBytes(256 * KiB);
    const reply = await new Promise<Buffer>((resolve, reject) => {
      const s = net.connect(proxy.port, "127.0.0.1");
      s.on("connect", () => s.end(req));
      readAll(s).then(resolve, reject);
    });
    expect(reply.subarray(0, reply.indexOf(10)).toString()).toBe(summary(req));
    expect(reply.length - reply.indexOf(10) - 1).toBe(MiB);
    expect(modes.length).toBeGreaterThan(0);
    expect(modes.every((m) => m === "sdk")).toBe(true);
  });
});

describe("SDK flow control: one stalled dialer never stalls the listener's channel (issue 9 item 3, bind side)", () => {
  it("a 64 MiB answer to dialers that never read (Go proxy + TCP client, and our SDK): 20 other dials round-trip meanwhile", async () => {
    const modes: string[] = [];
    const l = await server.listen("xg-stall");
    cleanup.push(() => l.close());
    const big = serveBigOrEcho(l, modes);
    const proxy = await tunnelProxy(await overlay.identity("xg-stall-go", ["clients"]), "xg-stall");
    cleanup.push(() => proxy.proc.close());

    // Two dialers ask for 64 MiB and never read: a TCP client through `ziti tunnel proxy`, and our own SDK.
    const tcp = net.connect(proxy.port, "127.0.0.1");
    tcp.on("error", () => undefined);
    tcp.pause();
    tcp.write("B");
    cleanup.push(async () => tcp.destroy());
    const ours = await client.dial("xg-stall");
    ours.on("error", () => undefined);
    ours.pause();
    ours.write("B");
    // Wait until both answers are blocked on their windows: the writer stops advancing.
    let last = -1;
    await waitUntil(
      async () => {
        const now = big.written();
        const still = now === last && now > 2 * MiB;
        last = now;
        await new Promise((r) => setTimeout(r, 1_000));
        return still;
      },
      90_000,
      "the listener's writers held back by the stalled dialers' windows",
    );
    const heldAt = big.written();
    expect(heldAt).toBeLessThan(2 * BIG);

    // 20 other dials to the same listener (its accepted connections share its router channel) round-trip.
    const rss0 = process.memoryUsage().rss;
    const roundTrip = async (i: number) => {
      const t0 = performance.now();
      const c = await client.dial("xg-stall", { timeoutMs: 15_000 });
      const msg = Buffer.concat([Buffer.from("E"), randomBytes(16 * KiB + i)]);
      c.write(msg);
      const got: Buffer[] = [];
      let n = 0;
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`round trip ${i} took over 15 s`)), 15_000);
        c.on("data", (d: Buffer) => {
          got.push(d);
          n += d.length;
          if (n >= msg.length) {
            clearTimeout(timer);
            resolve();
          }
        });
        c.on("error", reject);
      });
      c.destroy();
      return { ok: Buffer.concat(got).equals(msg), ms: performance.now() - t0 };
    };
    const rounds = await Promise.all(Array.from({ length: 20 }, (_, i) => roundTrip(i)));
    expect(rounds.every((r) => r.ok)).toBe(true);
    // The stalled ones are still there, held, not failed.
    expect(ours.destroyed).toBe(false);
    expect(ours.flowControl).toBe("sdk");
    // The receive bound is strict up to one payload (the one an idle reader waits for): at most 64 KiB.
    expect(ours.readableLength).toBeLessThanOrEqual(ours.maxBufferedBytes + 64 * KiB);
    expect(modes.every((m) => m === "sdk")).toBe(true);
    process.stdout.write(
      `[sdk-xg] two dialers stalled on 64 MiB answers (writer held at ${mib(heldAt)} MiB, our stalled dialer holds ` +
        `${mib(ours.readableLength)} MiB unread): 20 echo dials on the listener's channel: ${stats(rounds.map((r) => r.ms))}; ` +
        `RSS ${mib(rss0)} MiB\n`,
    );
    ours.destroy();
    tcp.destroy();
    await l.close();
  });

  it("a dialer reading slowly gets every byte of a 64 MiB answer (no READER_TOO_SLOW), memory bounded", async () => {
    const modes: string[] = [];
    const l = await server.listen("xg-slow");
    cleanup.push(() => l.close());
    serveBigOrEcho(l, modes);
    const c = await client.dial("xg-slow");
    expect(c.flowControl).toBe("sdk");
    const baseline = process.memoryUsage().rss;
    let peak = baseline;
    let maxUnread = 0;
    const sampler = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage().rss);
      maxUnread = Math.max(maxUnread, c.readableLength);
    }, 20);
    const t0 = performance.now();
    let got = 0;
    let ok = true;
    try {
      c.write("B");
      // Slow: after every 2 MiB the reader stops for 150 ms (well under what the writer can send meanwhile).
      await new Promise<void>((resolve, reject) => {
        let sincePause = 0;
        c.on("data", (d: Buffer) => {
          got += d.length;
          ok &&= d.every((b) => b === 0x5a);
          sincePause += d.length;
          if (sincePause >= 2 * MiB) {
            sincePause = 0;
            c.pause();
            setTimeout(() => c.resume(), 150);
          }
        });
        c.on("end", resolve);
        c.on("error", reject);
      });
    } finally {
      clearInterval(sampler);
    }
    const secs = (performance.now() - t0) / 1000;
    expect(got).toBe(BIG);
    expect(ok).toBe(true);
    expect(maxUnread).toBeLessThanOrEqual(c.maxBufferedBytes + 64 * KiB);
    process.stdout.write(
      `[sdk-xg] slow reader: 64 MiB in ${secs.toFixed(1)} s, at most ${mib(maxUnread)} MiB unread, retransmits ` +
        `${connInternals(c).xgressStats?.retransmits ?? 0}; RSS baseline ${mib(baseline)} MiB, peak ${mib(peak)} MiB ` +
        `(+${mib(peak - baseline)})\n`,
    );
    expect(peak - baseline).toBeLessThan(48 * MiB);
    c.destroy();
    await l.close();
  });
});

describe("throughput, legacy vs SDK flow control (figures)", () => {
  it("64 MiB from our listener to our dialer, both modes, byte-exact", async () => {
    const figures: string[] = [];
    for (const [label, srv, cli, svc] of [
      ["legacy", serverLegacy, clientLegacy, "legacy-speed"],
      ["sdk flow control", server, client, "xg-speed"],
    ] as const) {
      const modes: string[] = [];
      const l = await srv.listen(svc);
      cleanup.push(() => l.close());
      const served = serveBigOrEcho(l, modes);
      const c = await cli.dial(svc);
      expect(c.flowControl).toBe(label === "legacy" ? "legacy" : "sdk");
      const t0 = performance.now();
      c.write("B");
      let got = 0;
      let ok = true;
      await new Promise<void>((resolve, reject) => {
        c.on("data", (d: Buffer) => {
          got += d.length;
          ok &&= d[0] === 0x5a && d[d.length - 1] === 0x5a;
        });
        c.on("end", resolve);
        c.on("error", reject);
      });
      const secs = (performance.now() - t0) / 1000;
      expect(got).toBe(BIG);
      expect(ok).toBe(true);
      expect(modes).toEqual([label === "legacy" ? "legacy" : "sdk"]);
      figures.push(`${label} ${secs.toFixed(2)} s (${(64 / secs).toFixed(1)} MiB/s)`);
      const tx = served.conns[0] ? connInternals(served.conns[0]).xgressStats : undefined;
      if (tx)
        figures.push(
          `sender: retransmits ${tx.retransmits}, window ${mib(tx.window)} MiB, rtt ${tx.rttMs?.toFixed(1)} ms; receiver: duplicates ${connInternals(c).xgressStats?.duplicates}, dropped ${connInternals(c).xgressStats?.dropped}`,
        );
      c.destroy();
      await l.close();
    }
    process.stdout.write(`[sdk-xg] 64 MiB listener -> dialer: ${figures.join("; ")}\n`);
  });
});
