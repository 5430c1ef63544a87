/**
 * Reloading `scrapez bind` (issue 18, item 5): every field of the config either takes effect on reload or the
 * reload is refused naming it. A pin removed from an allow-list (a target's or `self`'s) stops admitting that caller
 * at once: new connections and the next request on a kept-alive one get 403, a passthrough pipe of it is closed,
 * and the target is not re-bound for it (no gap for the others). Over the stand-in overlay (test/harness); the
 * real overlay's reloads are test/integration/bind.test.ts.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import type net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseBindConfig, type BindConfig } from "../../src/bind/config.js";
import { RESTART_FIELDS, ReloadNeedsRestart } from "../../src/bind/reload.js";
import { BindServer } from "../../src/bind/server.js";
import { createLogger } from "../../src/common/log.js";
import { collect, FakeOverlay, rawUpstream } from "../harness/bind-standin.js";

const PROM_PIN = `sha256:${"p".repeat(43)}`;
const OTHER_PIN = `sha256:${"v".repeat(43)}`;
/** Two callers whose proofs the stand-in SDK "verified". */
const KEYS = { prom: PROM_PIN, other: OTHER_PIN };
const both = { identities: ["prom", "other"], keys: { prom: PROM_PIN, other: OTHER_PIN } };
const promOnly = { identities: ["prom"], keys: { prom: PROM_PIN } };

const dir = mkdtempSync(join(tmpdir(), "scrapez-bind-reload-"));
writeFileSync(join(dir, "id.json"), "{}");
const lines: Record<string, unknown>[] = [];
const log = createLogger("debug", { component: "bind" }, (l) => lines.push(JSON.parse(l) as never));

let app: http.Server;
let appUrl: string;
beforeAll(async () => {
  app = http.createServer((_req, res) => res.end("app_up 1\n"));
  await new Promise<void>((r) => app.listen(0, "127.0.0.1", r));
  appUrl = `http://127.0.0.1:${(app.address() as net.AddressInfo).port}`;
});
afterAll(async () => {
  app.closeAllConnections();
  await new Promise((r) => app.close(r));
  rmSync(dir, { recursive: true, force: true });
});

function config(raw: object): BindConfig {
  return parseBindConfig({ identity: "id.json", ...raw }, "bind.yaml", dir, {});
}

/** A keep-alive HTTP client of one service as one caller: one overlay connection, reused; counts its dials. */
class Caller {
  dials = 0;
  readonly agent: http.Agent;
  constructor(ov: FakeOverlay, service: string, caller: string) {
    const dialed = () => this.dials++;
    this.agent = new (class extends http.Agent {
      override createConnection(): net.Socket {
        dialed();
        return ov.dial(service, caller) as unknown as net.Socket;
      }
    })({ keepAlive: true, maxSockets: 1 });
  }
  get(path = "/metrics"): Promise<{ status: number; body: string }> {
    return new Promise((resolve, reject) => {
      http
        .get({ host: "svc", path, agent: this.agent }, (res) => {
          let body = "";
          res.setEncoding("utf8");
          res.on("data", (d: string) => (body += d));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
        })
        .on("error", reject);
    });
  }
  close(): void {
    this.agent.destroy();
  }
}

describe("reload: allow-lists", () => {
  it("a pin removed from a target's allow-list: 403 at once on the kept-alive connection and on new ones; not re-bound", async () => {
    const ov = new FakeOverlay(KEYS);
    const target = { service: "node", upstream: appUrl };
    const bs = new BindServer(ov, config({ targets: [{ ...target, allow: both }] }), log);
    await bs.start();
    const other = new Caller(ov, "node", "other");
    const prom = new Caller(ov, "node", "prom");
    try {
      expect((await other.get()).status).toBe(200);
      expect((await prom.get()).status).toBe(200);
      const listeners = ov.open("node");

      const d = await bs.apply(config({ targets: [{ ...target, allow: promOnly }] }));
      expect(d).toEqual({ added: [], removed: [], changed: ["node"] });

      // The next request on the same kept-alive connection is checked against the new list.
      const again = await other.get();
      expect(again.status).toBe(403);
      expect(again.body).toMatch(/caller key sha256:v+ \(claims "other"\) is verified but not allowed/);
      expect(other.dials).toBe(1);
      // A new connection likewise.
      expect((await new Caller(ov, "node", "other").get()).status).toBe(403);
      // The caller still listed keeps its connection and is served; the service was not re-bound for this.
      expect((await prom.get()).status).toBe(200);
      expect(prom.dials).toBe(1);
      expect(ov.open("node")).toEqual(listeners);
      expect(listeners.every((l) => !l.closed)).toBe(true);

      // And back: the pin added again admits it at once.
      await bs.apply(config({ targets: [{ ...target, allow: both }] }));
      expect((await other.get()).status).toBe(200);
    } finally {
      other.close();
      prom.close();
      await bs.close();
    }
  });

  it("a pin removed from a passthrough target's allow-list closes that caller's open pipe, and only that one", async () => {
    const echo = await rawUpstream((s) => s.pipe(s), { onConnect: true });
    const ov = new FakeOverlay(KEYS);
    const target = { service: "tls", upstream: echo.url, passthrough: true };
    const bs = new BindServer(ov, config({ targets: [{ ...target, allow: both }] }), log);
    await bs.start();
    try {
      const roundTrip = (c: ReturnType<typeof ov.dial>, text: string) =>
        new Promise<string>((resolve) => {
          c.once("data", (d: Buffer) => resolve(d.toString()));
          c.write(text);
        });
      const otherPipe = ov.dial("tls", "other");
      const promPipe = ov.dial("tls", "prom");
      expect(await roundTrip(otherPipe, "a")).toBe("a");
      expect(await roundTrip(promPipe, "b")).toBe("b");
      const otherClosed = collect(otherPipe);

      await bs.apply(config({ targets: [{ ...target, allow: promOnly }] }));
      await otherClosed;
      expect(otherPipe.destroyed || otherPipe.writableEnded).toBe(true);
      expect(await roundTrip(promPipe, "c")).toBe("c");
      expect(
        lines.some(
          (l) =>
            l.msg === "connection closed: the reloaded allow-list no longer admits its caller" &&
            l.service === "tls" &&
            l.caller === OTHER_PIN,
        ),
      ).toBe(true);
      promPipe.destroy();
    } finally {
      await bs.close();
      await echo.close();
    }
  });

  it("self.allow reloads: a removed pin is refused at once, also on a kept-alive connection", async () => {
    const ov = new FakeOverlay(KEYS);
    const targets = [{ service: "node", upstream: appUrl }];
    const bs = new BindServer(ov, config({ targets, self: { service: "self", allow: both } }), log);
    await bs.start();
    const other = new Caller(ov, "self", "other");
    try {
      expect((await other.get()).status).toBe(200);
      const d = await bs.apply(config({ targets, self: { service: "self", allow: promOnly } }));
      expect((await other.get()).status).toBe(403);
      expect(d.self).toBe("changed");
      expect(other.dials).toBe(1);
      expect((await new Caller(ov, "self", "other").get()).status).toBe(403);
      expect((await new Caller(ov, "self", "prom").get()).status).toBe(200);
    } finally {
      other.close();
      await bs.close();
    }
  });

  it("self reloads: a new service name is bound and the old one unbound; removed, it is unbound; added, bound", async () => {
    const ov = new FakeOverlay(KEYS);
    const targets = [{ service: "node", upstream: appUrl }];
    const bs = new BindServer(ov, config({ targets, self: { service: "self-a" } }), log);
    await bs.start();
    try {
      const a = ov.open("self-a");
      expect(a).toHaveLength(1);
      expect((await bs.apply(config({ targets, self: { service: "self-b" } }))).self).toBe("changed");
      expect(a[0]!.closed).toBe(true);
      expect(ov.open("self-b")).toHaveLength(1);
      expect((await new Caller(ov, "self-b", "prom").get("/metrics")).status).toBe(200);

      expect((await bs.apply(config({ targets }))).self).toBe("removed");
      expect(ov.open("self-b")).toHaveLength(0);
      expect((await bs.apply(config({ targets, self: { service: "self-c", allow: promOnly } }))).self).toBe("added");
      expect((await new Caller(ov, "self-c", "prom").get()).status).toBe(200);
      expect((await new Caller(ov, "self-c", "other").get()).status).toBe(403);
      // The targets were left alone throughout.
      expect(ov.calls.filter((c) => c.service === "node")).toHaveLength(2);
    } finally {
      await bs.close();
    }
  });
});

describe("reload: fields that need a restart", () => {
  it("refuses a config changing them, naming every such field, and applies nothing of it", async () => {
    const ov = new FakeOverlay(KEYS);
    const target = { service: "node", upstream: appUrl };
    const bs = new BindServer(ov, config({ targets: [{ ...target, allow: both }] }), log);
    await bs.start();
    try {
      const next = config({
        zitiAuth: "legacy",
        renewCertBeforeDays: 5,
        targets: [{ ...target, allow: promOnly }],
      });
      const err = await bs.apply(next).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(ReloadNeedsRestart);
      expect((err as ReloadNeedsRestart).code).toBe("SCRAPEZ_RELOAD_NEEDS_RESTART");
      expect((err as ReloadNeedsRestart).fields).toEqual(["zitiAuth", "renewCertBeforeDays"]);
      expect((err as Error).message).toBe(
        "zitiAuth, renewCertBeforeDays changed: restart scrapez bind to apply them (nothing of the new config was applied)",
      );
      // The running config stays in force: the pin the refused file removed still admits its caller.
      expect((await new Caller(ov, "node", "other").get()).status).toBe(200);
      expect(bs.config.zitiAuth).toBe("auto");
    } finally {
      await bs.close();
    }
  });

  it("docs/configuration.md says of every field of the bind config whether it reloads or needs a restart", () => {
    const docs = readFileSync("docs/configuration.md", "utf8");
    const table = docs.slice(docs.indexOf("| `scrapez bind` field |"));
    const rows = table.slice(0, table.indexOf("\n\n")).split("\n").slice(2);
    const full = config({
      logLevel: "info",
      statusFile: "s.json",
      zitiAuth: "auto",
      renewCertBeforeDays: 1,
      drainSeconds: 1,
      targets: [{ service: "node", upstream: appUrl }],
      self: { service: "self" },
    });
    const restart = rows.filter((r) => /need a restart/.test(r)).join("\n");
    for (const field of Object.keys(full)) {
      const row = rows.find((r) => r.split("|")[1]!.includes(`\`${field}\``));
      expect(row, field).toBeDefined();
      expect(row, field).not.toMatch(/next start/);
      expect(restart.includes(`\`${field}\``), field).toBe((RESTART_FIELDS as readonly string[]).includes(field));
    }
  });
});
