/**
 * `scrapez proxy` while its identities have not authenticated yet (issue 9, items 14 and the multi-identity start):
 * it answers at once, 503 with the reason (X-Scrapez-Proxy-Error: not-ready) on /-/ready, /sd and scrapes; it is
 * ready as soon as one identity is and the list is loaded; /-/ready lists each identity's state. Overlay stand-ins
 * here (they expose `ready`/`notReadyReason` and emit "authenticated" as the SDK does); the real controller
 * stopped and started again is test/integration/startup.test.ts.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { OverlayService } from "../../src/overlay/types.js";
import { ErrorCodes, ZitiError } from "../../src/ziti/errors.js";
import { StandInOverlay, Upstream, request, startProxy, testDir, type Running } from "../harness/proxy-standin.js";

/** A stand-in that starts not authenticated, like ZitiContext.open(..., { waitForController: false }). */
class WaitingOverlay extends StandInOverlay {
  notReadyReason: string | undefined = "cannot authenticate to the controller (attempt 1, next in 0.5 s): refused";

  get ready(): boolean {
    return this.notReadyReason === undefined;
  }

  override async services(): Promise<OverlayService[]> {
    if (!this.ready) throw new ZitiError(ErrorCodes.NOT_READY, `not authenticated yet: ${this.notReadyReason}`);
    return super.services();
  }

  authenticate(): void {
    this.notReadyReason = undefined;
    this.emit("authenticated", { identityName: this.identityName, attempts: 2 });
  }
}

const td = testDir();
let app: Upstream;
const running: Running[] = [];
beforeAll(async () => {
  app = await new Upstream((_req, res) => res.end("up 1\n")).start();
});
afterEach(async () => {
  for (const r of running.splice(0)) await r.close();
});
afterAll(async () => {
  await app.close();
  td.remove();
});

async function until(check: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("proxy before its identities authenticated", () => {
  it("answers 503 with the reason everywhere, then serves once an identity authenticated", async () => {
    const a = new WaitingOverlay("prom-a").add("app", { port: app.port });
    const r = await startProxy(td.dir, [a], { discovery: { refreshSeconds: 3600 } });
    running.push(r);
    const ready = await request(r.port, "/-/ready");
    expect(ready.status).toBe(503);
    expect(ready.text).toBe(
      'scrapez proxy is not ready: no identity is authenticated to the controller yet: identity "prom-a": ' +
        "cannot authenticate to the controller (attempt 1, next in 0.5 s): refused; identities: " +
        '"prom-a" not ready (cannot authenticate to the controller (attempt 1, next in 0.5 s): refused)\n',
    );
    // The reason is read live: the next attempt's reason shows without a catalog rebuild.
    a.notReadyReason = 'the controller refused identity "prom-a" (attempt 2, ...): 401';
    expect((await request(r.port, "/-/ready")).text).toContain('identity "prom-a": the controller refused identity');
    for (const target of ["/sd", "http://app/metrics", "/scrape/app/metrics"]) {
      const res = await request(r.port, target);
      expect(res.status, target).toBe(503);
      expect(res.headers["x-scrapez-proxy-error"], target).toBe("not-ready");
      expect(res.text, target).toContain("no identity is authenticated to the controller yet");
      expect(res.text, target).toContain("the controller refused identity");
    }
    expect(app.seen).toHaveLength(0);
    a.authenticate();
    await until(async () => (await request(r.port, "/-/ready")).status === 200, "ready");
    expect((await request(r.port, "/-/ready")).text).toBe('scrapez proxy is ready; identities: "prom-a" ready\n');
    const s = await request(r.port, "http://app/metrics");
    expect(s.status).toBe(200);
    expect(s.text).toBe("up 1\n");
    expect((await request(r.port, "/sd")).status).toBe(200);
  });

  it("with several identities: ready once one is; the others' services are 503 not-ready (not 502) until they are", async () => {
    const a = new WaitingOverlay("prom-a").add("app", { port: app.port });
    const b = new WaitingOverlay("prom-b").add("other", { port: app.port });
    b.notReadyReason = "cannot authenticate to the controller (attempt 3, next in 2.0 s): ECONNREFUSED";
    const r = await startProxy(td.dir, [a, b], { discovery: { refreshSeconds: 3600 } });
    running.push(r);
    expect((await request(r.port, "/-/ready")).status).toBe(503);
    a.authenticate();
    await until(async () => (await request(r.port, "/-/ready")).status === 200, "ready with one identity");
    const ready = await request(r.port, "/-/ready");
    expect(ready.text).toBe(
      'scrapez proxy is ready; identities: "prom-a" ready, "prom-b" not ready ' +
        "(cannot authenticate to the controller (attempt 3, next in 2.0 s): ECONNREFUSED)\n",
    );
    expect((await request(r.port, "http://app/metrics")).status).toBe(200);
    const other = await request(r.port, "http://other/metrics");
    expect(other.status).toBe(503);
    expect(other.headers["x-scrapez-proxy-error"]).toBe("not-ready");
    expect(other.text).toContain('cannot reach service "other" yet: not authenticated yet: identity "prom-b"');
    const sd = JSON.parse((await request(r.port, "/sd")).text) as { labels: Record<string, string> }[];
    expect(sd.map((g) => g.labels.__meta_ziti_service)).toEqual(["app"]);
    b.authenticate();
    await until(async () => (await request(r.port, "http://other/metrics")).status === 200, "the second identity");
    const sd2 = JSON.parse((await request(r.port, "/sd")).text) as { labels: Record<string, string> }[];
    expect(sd2.map((g) => g.labels.__meta_ziti_service)).toEqual(["app", "other"]);
    expect((await request(r.port, "/-/ready")).text).toBe(
      'scrapez proxy is ready; identities: "prom-a" ready, "prom-b" ready\n',
    );
  });
});
