import { describe, expect, it } from "vitest";
import { hopTimes, parseSegments, type HopPorts } from "../../bench/hops.js";

// The e2e bench's hop timings (bench/hops.ts) from tcpdump `-tt -n -q` lines: which packet is which step.
const ports: HopPorts = {
  dial: 8080,
  router: 3022,
  upstream: 9100,
  dialToRouter: [41000],
  hostToRouter: [42000, 42001],
};
const seg = (ms: number, from: number, to: number, bytes: number) =>
  `${(1_000 + ms / 1000).toFixed(6)} IP 127.0.0.1.${from} > 127.0.0.1.${to}: tcp ${bytes}`;

/** One scrape starting at `t` ms: request, its ack back, the upstream's answer in two payloads, two acks. */
function scrape(t: number, dialRequest: number): string[] {
  const a = t + dialRequest;
  return [
    seg(t, 50000, 8080, 111), // loader -> dial: the request
    seg(t + 0.001, 8080, 50000, 0), // its TCP ack: no data, left out
    seg(a, 41000, 3022, 191), // dial -> router
    seg(a + 0.1, 3022, 42001, 191), // router -> host (the host's second router connection)
    seg(a + 0.3, 42001, 3022, 121), // host -> router: the ack of the request, not the answer
    seg(a + 0.35, 43000, 9100, 71), // host -> upstream
    seg(a + 0.5, 9100, 43000, 47616), // upstream -> host
    seg(a + 0.55, 3022, 41000, 121), // router -> dial: the request's ack, not the answer
    seg(a + 0.6, 42000, 3022, 121), // host -> router after the answer came: a window update, not the answer
    seg(a + 0.8, 42000, 3022, 32950), // host -> router: the answer's first payload
    seg(a + 0.85, 3022, 41000, 140), // router -> dial: an ack, not the answer
    seg(a + 1.0, 3022, 41000, 16406), // router -> dial
    seg(a + 1.3, 8080, 50000, 32792), // dial -> loader: the answer's first bytes
    seg(a + 1.35, 41000, 3022, 109), // the dial side's ack
    seg(a + 1.7, 8080, 50000, 28801), // dial -> loader: the last bytes
  ];
}

describe("bench hop timings from packet timestamps", () => {
  it("reads tcpdump -q lines with data, leaving out empty segments and other lines", () => {
    const s = parseSegments([
      "1796553613.533765 IP 127.0.0.1.35094 > 127.0.0.1.1: tcp 0",
      "1796553613.637466 IP 127.0.0.1.60324 > 127.0.0.1.24498: tcp 95",
      "tcpdump: verbose output suppressed, use -v[v]... for full protocol decode",
    ]);
    expect(s).toEqual([{ ms: 1796553613637.466, from: 60324, to: 24498, bytes: 95 }]);
  });

  it("times each hop from the first packet of each step, skipping acknowledgements on the answer's edges", () => {
    const h = hopTimes(parseSegments([...scrape(0, 0.2), ...scrape(10, 0.4), ...scrape(20, 0.3)]), ports);
    expect(h.scrapes).toBe(3);
    // Medians: dial request 0.2 / 0.4 / 0.3; every other hop is the same in each scrape.
    expect(h.dialRequest).toBeCloseTo(0.3, 6);
    expect(h.routerRequest).toBeCloseTo(0.1, 6);
    expect(h.hostRequest).toBeCloseTo(0.25, 6);
    expect(h.upstream).toBeCloseTo(0.15, 6);
    expect(h.hostAnswer).toBeCloseTo(0.3, 6);
    expect(h.routerAnswer).toBeCloseTo(0.2, 6);
    expect(h.dialAnswer).toBeCloseTo(0.3, 6);
    expect(h.answerSpread).toBeCloseTo(0.4, 6);
    expect(h.total).toBeCloseTo(2.0, 6);
  });

  it("leaves out a scrape not seen to its answer, and packets of connections that are not on the path", () => {
    const cut = scrape(0, 0.2).slice(0, 7); // the capture ended before the answer left the host
    const stranger = seg(10.5, 47000, 3022, 5000); // another process's router connection
    const h = hopTimes(parseSegments([...cut, ...scrape(10, 0.2), stranger]), ports);
    expect(h.scrapes).toBe(1);
    expect(h.total).toBeCloseTo(1.9, 6);
  });

  it("gives no figures when no scrape is complete", () => {
    const h = hopTimes([], ports);
    expect(h.scrapes).toBe(0);
    expect(h.total).toBeNaN();
  });
});
