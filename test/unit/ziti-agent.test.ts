/**
 * The SDK's http.Agent over the overlay (src/ziti/api/agent.ts), which scrapez proxy's per-target pools extend: a
 * burst of requests starts no more dials than the pool holds, the host (or `resolve`) names the target, and the
 * dial's time limit comes from the request, the agent, or the dialer's own default. The dialer here connects to a
 * real local HTTP server over TCP and counts its dials; over the real overlay see test/integration/sdk.test.ts.
 */
import { once } from "node:events";
import http from "node:http";
import net from "node:net";
import type { Duplex } from "node:stream";
import { afterAll, beforeAll, expect, it } from "vitest";
import { ZitiAgent, type AgentDialer } from "../../src/ziti/index.js";

let server: http.Server;
let port: number;
beforeAll(async () => {
  server = http.createServer((req, res) => res.end(`${req.headers.host} ${req.url}`));
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  port = (server.address() as net.AddressInfo).port;
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));

/** Dials slowly (each dial takes `delayMs`), so a burst finds its dials still under way. */
function slowDialer(delayMs: number) {
  const dials: { service: string; opts: unknown }[] = [];
  const dialer: AgentDialer = {
    async dial(service, opts) {
      dials.push({ service, opts });
      await new Promise((r) => setTimeout(r, delayMs));
      const s = net.connect(port, "127.0.0.1");
      await once(s, "connect");
      return s as Duplex;
    },
  };
  return { dialer, dials };
}

const get = (agent: http.Agent, url: string, opts: http.RequestOptions = {}) =>
  new Promise<string>((resolve, reject) => {
    http
      .get(url, { agent, ...opts }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (body += d));
        res.on("end", () => resolve(body));
      })
      .on("error", reject);
  });

it("a burst of 20 requests starts only as many dials as the pool holds, and every request is answered", async () => {
  const { dialer, dials } = slowDialer(50);
  const agent = new ZitiAgent(dialer, { maxSockets: 3 });
  const bodies = await Promise.all(Array.from({ length: 20 }, (_, i) => get(agent, `http://app/m${i}`)));
  expect(bodies).toEqual(Array.from({ length: 20 }, (_, i) => `app /m${i}`));
  expect(dials.length).toBe(3);
  expect(dials.every((d) => d.service === "app")).toBe(true);
  agent.destroy();
});

it("the request's host names the service, or resolve maps it to a service and replica", async () => {
  const { dialer, dials } = slowDialer(0);
  const agent = new ZitiAgent(dialer, {
    resolve: (host) => {
      const [identity, service] = host.split("~") as [string, string];
      return { service, identity };
    },
  });
  expect(await get(agent, "http://node-1~node-exporter/metrics")).toBe("node-1~node-exporter /metrics");
  expect(dials).toEqual([{ service: "node-exporter", opts: { identity: "node-1" } }]);
  agent.destroy();
});

it("the dial's time limit: the request's dialTimeoutMs, else its timeout, else the agent's, else the dialer's default", async () => {
  const { dialer, dials } = slowDialer(0);
  const cases: [ZitiAgent, http.RequestOptions & { dialTimeoutMs?: number }, unknown][] = [
    [new ZitiAgent(dialer, { dialTimeoutMs: 700 }), { dialTimeoutMs: 300 }, { timeoutMs: 300 }],
    [new ZitiAgent(dialer, { dialTimeoutMs: 700 }), { timeout: 400 }, { timeoutMs: 400 }],
    [new ZitiAgent(dialer, { dialTimeoutMs: 700 }), {}, { timeoutMs: 700 }],
    [new ZitiAgent(dialer), {}, {}],
  ];
  for (const [agent, opts, want] of cases) {
    await get(agent, "http://app/", opts);
    expect(dials.at(-1)?.opts).toEqual(want);
    agent.destroy();
  }
});

it("a failed dial fails its request with the dialer's error and releases the requests waiting behind it", async () => {
  let n = 0;
  const dialer: AgentDialer = {
    async dial() {
      await new Promise((r) => setTimeout(r, 20));
      if (n++ === 0) throw Object.assign(new Error("no terminator"), { code: "ZITI_SERVICE_UNAVAILABLE" });
      const s = net.connect(port, "127.0.0.1");
      await once(s, "connect");
      return s;
    },
  };
  const agent = new ZitiAgent(dialer, { maxSockets: 1 });
  const results = await Promise.allSettled([get(agent, "http://app/a"), get(agent, "http://app/b")]);
  expect(results[0]).toMatchObject({ status: "rejected", reason: { code: "ZITI_SERVICE_UNAVAILABLE" } });
  expect(results[1]).toEqual({ status: "fulfilled", value: "app /b" });
  agent.destroy();
});
