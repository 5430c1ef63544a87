/** The dark-cluster test's port scanner (test/harness/scan.ts) against real sockets on loopback. */
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { scanTcp } from "../harness/scan.js";

const listeners: net.Server[] = [];
let ports: number[] = [];

beforeAll(async () => {
  for (let i = 0; i < 3; i++) {
    const s = net.createServer((c) => c.destroy());
    await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
    listeners.push(s);
  }
  ports = listeners.map((s) => (s.address() as net.AddressInfo).port).sort((a, b) => a - b);
});

afterAll(() => {
  for (const s of listeners) s.close();
});

describe("scanTcp", () => {
  it("finds exactly the listening ports in a range and counts every other port as refused", async () => {
    for (const p of ports) {
      const [from, to] = [Math.max(1, p - 100), Math.min(65_535, p + 100)];
      const r = await scanTcp("127.0.0.1", { from, to, concurrency: 50, timeoutMs: 2_000 });
      // Other processes may listen in the range too: ours must be found, and every port answered.
      expect(r.open).toContain(p);
      expect(r.open.length + r.refused).toBe(to - from + 1);
      expect(r).toMatchObject({ timedOut: 0, errors: {} });
    }
  });

  it("refuses a bad range or a host that is not an IPv4 address", async () => {
    await expect(scanTcp("127.0.0.1", { from: 0, to: 10 })).rejects.toThrow(/bad port range 0-10/);
    await expect(scanTcp("localhost")).rejects.toThrow(/not an IPv4 address/);
  });
});
