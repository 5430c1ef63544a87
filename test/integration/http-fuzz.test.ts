/**
 * HTTP fuzz of `scrapez proxy` as a real process on the real overlay (scrapez bind + node_exporter behind it):
 * 10,000 random and mutated raw requests (fixed seed; generator in test/harness/http-fuzz.ts: odd methods,
 * absolute/origin/authority forms, CONNECT targets, header soups, over-long lines, bad chunked bodies, pipelining,
 * half-sent requests abandoned) over TCP. The process never exits; every request the client finished gets a
 * well-formed HTTP answer or a close; RSS and fds stay bounded; a good scrape works afterwards.
 * Other seeds: HTTP_FUZZ_SEED=<n>. The bind side's own surface: test/unit/http-fuzz.test.ts.
 */
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCase, runFuzz, type FuzzCase } from "../harness/http-fuzz.js";
import { NodeExporter } from "../harness/node-exporter.js";
import { Overlay } from "../harness/overlay.js";
import { freePort, waitUntil } from "../harness/ports.js";
import { mib, procStats } from "../harness/proc-stats.js";
import { tempDir } from "../harness/process.js";
import { ScrapezProcess } from "../harness/scrapez.js";
import { prng } from "../unit/prng.js";

const SEED = Number(process.env.HTTP_FUZZ_SEED ?? 0x5eed_0009) >>> 0;
const COUNT = Number(process.env.HTTP_FUZZ_COUNT ?? 10_000);
const HOSTS = ["node", "node:80", "bind-a~node", "nosuch", "127.0.0.1:1", "localhost", "evil.example", ""];

let overlay: Overlay;
let exporter: NodeExporter;
let bind: ScrapezProcess;
let proxy: ScrapezProcess;
let port: number;
const dir = tempDir("http-fuzz");

beforeAll(async () => {
  overlay = await Overlay.start();
  exporter = await NodeExporter.start();
  await overlay.service("node", { dial: ["#clients"], bind: ["#servers"] });
  bind = new ScrapezProcess("scrapez-bind", "bind", {
    identity: await overlay.identity("bind-a", ["servers"], dir),
    targets: [{ service: "node", upstream: exporter.url }],
  });
  bind.start();
  port = await freePort();
  proxy = new ScrapezProcess("scrapez-proxy", "proxy", {
    identities: [await overlay.identity("prometheus-central", ["clients"], dir)],
    listen: `127.0.0.1:${port}`,
  });
  proxy.start();
  await bind.waitFor(() => bind.logLines().some((l) => l.msg === "service bound"), 60_000, "node bound");
  await proxy.waitFor(() => proxy.logLines().some((l) => l.msg === "listening"), 60_000, "proxy listening");
}, 180_000);

afterAll(async () => {
  await proxy?.close();
  await bind?.close();
  await exporter?.close();
  await overlay?.close();
});

const good: FuzzCase = {
  kind: "good",
  chunks: [Buffer.from("GET http://node/metrics HTTP/1.1\r\nHost: node\r\n\r\n")],
  finish: "end",
};
const connect = () => net.connect({ host: "127.0.0.1", port });

describe(`HTTP fuzz of scrapez proxy, a real process on the real overlay (seed ${SEED})`, () => {
  it(`${COUNT} random and mutated requests: no exit, each answered well-formed or closed, RSS and fds bounded`, async () => {
    await waitUntil(
      async () => (await runCase(connect(), good, 10_000, 10_000)).status === 200,
      60_000,
      "a good scrape",
    );
    const warm = await runFuzz({
      count: 1_000,
      concurrency: 16,
      rngFor: (i) => prng((SEED ^ 0xabcdef ^ Math.imul(i + 1, 0x9e3779b1)) >>> 0),
      surface: "proxy",
      hosts: HOSTS,
      connect,
      timeoutMs: 5_000,
    });
    expect(warm.failures, JSON.stringify(warm.failures, null, 1)).toEqual([]);
    const s0 = procStats(proxy.pid!);
    const t0 = Date.now();
    const tally = await runFuzz({
      count: COUNT,
      concurrency: 16,
      rngFor: (i) => prng((SEED ^ Math.imul(i + 1, 0x85ebca6b)) >>> 0),
      surface: "proxy",
      hosts: HOSTS,
      connect,
      timeoutMs: 5_000,
      maxFailures: 50,
    });
    const took = Date.now() - t0;
    const sEnd = procStats(proxy.pid!);
    // Connections just closed may take a moment to be released; wait (bounded) for the fd count to settle.
    const t1 = Date.now();
    while (procStats(proxy.pid!).fds > s0.fds + 16 && Date.now() - t1 < 30_000)
      await new Promise((r) => setTimeout(r, 250));
    const s1 = procStats(proxy.pid!);
    process.stdout.write(
      `[http-fuzz] scrapez proxy process, seed ${SEED}: ${tally.summary()} in ${(took / 1000).toFixed(1)} s; ` +
        `RSS ${mib(s0.rss)} -> ${mib(s1.rss)}, fds ${s0.fds} -> ${sEnd.fds} at the end -> ${s1.fds} after ${Date.now() - t1} ms\n`,
    );
    expect(proxy.running, proxy.logTail(4000)).toBe(true);
    expect(bind.running, bind.logTail(4000)).toBe(true);
    expect(tally.failures, JSON.stringify(tally.failures, null, 1)).toEqual([]);
    expect(tally.total).toBe(COUNT);
    expect(s1.fds).toBeLessThanOrEqual(s0.fds + 16);
    expect(s1.rss - s0.rss).toBeLessThan(64 * 2 ** 20);
    // One bad client never stalls the others: a good scrape right after the storm is answered at once.
    const after = await runCase(connect(), good, 10_000, 10_000);
    const why = async () => {
      const m = await fetch(`http://127.0.0.1:${port}/metrics`).then(
        (r) => r.text(),
        (e: Error) => e.message,
      );
      const lines = m.split("\n").filter((l) => /^scrapez_proxy_(active|dials_total|requests_total)/.test(l));
      return `proxy metrics:\n${lines.join("\n")}\nproxy log:\n${proxy.logTail(3000)}`;
    };
    expect(after, after.status === 200 ? "" : await why()).toMatchObject({ outcome: "answered", status: 200 });
  }, 300_000);
});
