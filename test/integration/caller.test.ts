/**
 * Verified callers (issue 9 item 5) against a real controller and router of the line under test: a real `scrapez
 * bind` whose target allow-lists "prometheus-central" with its key pin, dialed by the real prometheus-central, by an
 * "attacker" identity that the Dial policy also admits (forging the CallerId, replaying a captured proof), and by
 * OpenZiti's Go tunneler (`ziti tunnel proxy`). Proofs are v2: the dialer's first encrypted message, bound to the
 * connection's keys and both stream headers (src/ziti/api/caller-proof.ts).
 *
 * The lines differ in what the router tells the host. A v1.x router says nothing about the dialer: a caller is
 * verified only by its end-to-end caller proof (`verified_by: proof`), and one without a proof is unverified. A v2
 * router asserts the dialing identity's name (openziti/ziti#3547): a caller without a valid proof is named by it
 * (`verified_by: router`), a forged CallerId changes nothing, and a caller not on the list is refused as verified but
 * not allowed. Where a proof verified, it decides on both lines (`verified_by: proof`): it holds end to end, and the
 * pinned name must agree with the router's (src/bind/caller.ts). Each test states what it expects on which line.
 */
import { execFile } from "node:child_process";
import { createPrivateKey, randomBytes } from "node:crypto";
import type { Duplex } from "node:stream";
import { promisify } from "node:util";
import http from "node:http";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ZitiContext,
  enroll,
  identityKeyPin,
  loadIdentity,
  saveIdentity,
  verifyCallerProof,
  type ProofBinding,
} from "../../src/ziti/index.js";
import {
  ContentType,
  Header,
  ZitiConnection,
  connInternals,
  contextInternals,
  dialOnChannel,
  enc,
  proofMarker,
} from "../../src/ziti/internal.js";
import { zitiLine } from "../harness/binaries.js";
import { NodeExporter, metricNames } from "../harness/node-exporter.js";
import { Overlay } from "../harness/overlay.js";
import { freePort, waitUntil } from "../harness/ports.js";
import { ScrapezProcess, cliPath } from "../harness/scrapez.js";
import { tunnelProxy } from "../harness/ziti-tunnel.js";

let overlay: Overlay;
let exporter: NodeExporter;
let bind: ScrapezProcess;
let central: ZitiContext;
let attacker: ZitiContext;
let capturer: ZitiContext;
let centralPin: string;
let goDialer: string;
let centralFile: string;
/** What the capturing host received from prometheus-central: its proof and the connection values it is bound to. */
let stolen: { proof: Buffer; binding: ProofBinding } | undefined;
const cleanup: (() => Promise<unknown>)[] = [];
/** A v2 router asserts the dialer's identity to the host; a v1.x router does not. */
const v2 = zitiLine() === "2";

/** The 403 body for a caller the router named but the allow-list does not hold (v2 routers). */
const notAllowedByName = (name: string, service = "node") =>
  `scrapez bind: caller identity "${name}" (claims "${name}") is verified but not allowed to scrape service ` +
  `"${service}"\n`;

interface Resp {
  status: number;
  body: string;
}

/** One GET /metrics over an already-dialed overlay connection. */
function getOver(conn: Duplex, path = "/metrics"): Promise<Resp> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: "node", path, createConnection: () => conn as never, timeout: 30_000, headers: { connection: "close" } },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (body += d));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.on("timeout", () => req.destroy(new Error("no answer within 30 s")));
    req.end();
  });
}

/**
 * Dials "node" as `ctx` with the low-level engine, choosing the CallerId and AppData ourselves: what a hostile
 * dialer with its own SDK can send. The end-to-end encryption uses a fresh key pair, as any dialer's would.
 */
function forgedDial(ctx: ZitiContext, callerId: string, appData?: Buffer): Promise<ZitiConnection> {
  return forgedDialTo(ctx, "node", callerId, undefined, appData);
}

/** A forged dial that announces a proof and sends `proof` (someone else's) as its first encrypted message. */
async function replayProof(ctx: ZitiContext, callerId: string, proof: Buffer): Promise<ZitiConnection> {
  const conn = await forgedDialTo(ctx, "node", callerId, undefined, proofMarker(), true);
  await conn.whenPeerHeader();
  conn.write(proof);
  return conn;
}

async function forgedDialTo(
  ctx: ZitiContext,
  service: string,
  callerId: string,
  terminatorIdentity?: string,
  appData?: Buffer,
  acceptHello = false,
): Promise<ZitiConnection> {
  const svc = (await ctx.services()).find((s) => s.name === service);
  if (!svc) throw new Error(`${service} not visible`);
  expect(svc.encryptionRequired).toBe(true);
  const session = await contextInternals(ctx).controller.createSession(svc.id, "Dial");
  const url = session.edgeRouters.map((r) => r.urls.tls).find((u): u is string => Boolean(u));
  if (!url) throw new Error("no edge router");
  return dialOnChannel(await contextInternals(ctx).channel(url), {
    service,
    sessionToken: session.token,
    encrypt: true,
    callerId,
    terminatorIdentity,
    appData,
    acceptHello,
    timeoutMs: 30_000,
  });
}

/** The audit line bind wrote for a scrape, found by a predicate. */
/** The first scrape audit line of "node" matching `pred`, among the bind's log lines from index `after` on. */
function auditLine(
  pred: (l: Record<string, unknown>) => boolean,
  what: string,
  after = 0,
): Promise<Record<string, unknown>> {
  return waitUntil(
    () =>
      bind
        .logLines()
        .slice(after)
        .find((l) => l.msg === "scrape" && l.service === "node" && pred(l)),
    15_000,
    what,
    () => bind.logTail(4096),
  );
}

beforeAll(async () => {
  overlay = await Overlay.start();
  exporter = await NodeExporter.start();
  await overlay.service("node", { dial: ["#clients"], bind: ["#servers"] });
  await overlay.service("bind-self", { dial: ["#clients"], bind: ["#servers"] });
  const bindId = await overlay.identity("bind-host", ["servers"]);
  // prometheus-central holds an EC key (enrolled by our code); the others RSA keys (enrolled by `ziti edge enroll`).
  centralFile = join(overlay.home, "prometheus-central.json");
  const ref = await overlay.createIdentity("prometheus-central", ["clients"]);
  await saveIdentity(centralFile, await enroll({ jwt: ref.jwt, keyType: "EC" }));
  central = await ZitiContext.fromIdentityFile(centralFile);
  attacker = await ZitiContext.fromIdentityFile(await overlay.identity("attacker", ["clients"]));
  // A host that binds "node" only under its own terminator identity: dials reach it only when they ask for it.
  capturer = await ZitiContext.fromIdentityFile(await overlay.identity("capture-host", ["servers"]));
  goDialer = await overlay.identity("go-dialer", ["clients"]);
  const centralId = await loadIdentity(centralFile);
  expect(createPrivateKey(centralId.keyPem).asymmetricKeyType).toBe("ec");
  expect(createPrivateKey(contextInternals(attacker).identity.keyPem).asymmetricKeyType).toBe("rsa");
  centralPin = identityKeyPin(centralId.certPem);
  bind = new ScrapezProcess("scrapez-bind-caller", "bind", {});
  bind.writeConfig({
    identity: bindId,
    statusFile: join(bind.dir, "status.json"),
    targets: [
      {
        service: "node",
        upstream: exporter.url,
        allow: { identities: ["prometheus-central"], keys: { "prometheus-central": centralPin } },
      },
    ],
    self: {
      service: "bind-self",
      allow: { identities: ["prometheus-central"], keys: { "prometheus-central": centralPin } },
    },
  });
  bind.start();
  await bind.waitFor(
    () => ["service bound", "self-metrics bound"].every((m) => bind.logLines().some((l) => l.msg === m)),
    60_000,
    "node and bind-self bound",
  );
});

afterAll(async () => {
  for (const c of cleanup.reverse()) await c().catch(() => undefined);
  await central?.close();
  await attacker?.close();
  await capturer?.close();
  await bind?.close();
  await exporter?.close();
  await overlay?.close();
});

describe("verified callers over a real router", () => {
  it("admits the real prometheus-central, verified by its proof on either line (a v2 router's name agreeing), audited so", async () => {
    const conn = await central.dial("node");
    const r = await getOver(conn);
    expect(r.status).toBe(200);
    // The bind answered our announcement with its hello: it is scrapez, so its answer had to end with a FINAL.
    expect(connInternals(conn).e2e.peerHello?.toString()).toBe("scrapez host v2");
    expect(connInternals(conn).expectFinal).toBe(true);
    expect(metricNames(r.body)).toContain("node_load1");
    const line = await auditLine((l) => l.status === 200, "the 200 audit line");
    expect(line).toMatchObject({
      caller: "prometheus-central",
      claimed: "prometheus-central",
      verified_by: "proof",
    });
  });

  it("a dialer whose encrypted request is forged on the way loses only its own connection; the bind serves the rest", async () => {
    const honest = await central.dial("node");
    const forger = await central.dial("node");
    // Every message this connection seals from now on has its MAC's last byte flipped: what a router or anyone on
    // the path that altered the ciphertext would deliver. The real router carries it to the real bind.
    const e2e = connInternals(forger).e2e;
    const seal = e2e.seal.bind(e2e);
    e2e.seal = (pieces: readonly Buffer[]) => {
      const sealed = seal(pieces);
      const last = Buffer.isBuffer(sealed) ? sealed : sealed[sealed.length - 1]!;
      last[last.length - 1] = last[last.length - 1]! ^ 1;
      return sealed;
    };
    await expect(getOver(forger)).rejects.toThrow();
    expect((await getOver(honest)).status).toBe(200);
    expect((await getOver(await central.dial("node"))).status).toBe(200);
  });

  it("admits prometheus-central through a real `scrapez proxy`: its proof verifies over the proxy's dial", async () => {
    const port = await freePort();
    const proxy = new ScrapezProcess("scrapez-proxy-caller", "proxy", {
      identities: [centralFile],
      listen: `127.0.0.1:${port}`,
    });
    cleanup.push(() => proxy.close());
    proxy.start();
    await proxy.waitFor(() => proxy.logLines().some((l) => l.msg === "listening"), 30_000, "proxy listening");
    const before = bind.logLines().length;
    const get = () =>
      new Promise<Resp>((resolve, reject) => {
        const req = http.request({ host: "127.0.0.1", port, path: "http://node/metrics", timeout: 30_000 }, (res) => {
          let body = "";
          res.setEncoding("utf8");
          res.on("data", (d: string) => (body += d));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
        });
        req.on("error", reject);
        req.end();
      });
    // 503 "cannot reach service yet" while the proxy loads its service list: ask again.
    const r = await waitUntil(
      async () => {
        const x = await get();
        return x.status === 503 && /yet|not ready/.test(x.body) ? undefined : x;
      },
      30_000,
      "an answer through scrapez proxy",
    );
    expect(r.status).toBe(200);
    expect(metricNames(r.body)).toContain("node_load1");
    const line = await waitUntil(
      () =>
        bind
          .logLines()
          .slice(before)
          .find((l) => l.msg === "scrape" && l.service === "node"),
      15_000,
      "the proxied scrape's audit line",
    );
    expect(line).toMatchObject({ caller: "prometheus-central", verified_by: "proof", status: 200 });
  });

  it("refuses the attacker claiming CallerId prometheus-central: 403, unverified (v1.x) or named attacker by the router (v2)", async () => {
    const r = await getOver(await forgedDial(attacker, "prometheus-central"));
    expect(r.status).toBe(403);
    if (v2) {
      // The router's name wins over the forged CallerId, which is not even reported.
      expect(r.body).toBe(notAllowedByName("attacker"));
      const line = await auditLine((l) => l.status === 403 && l.caller === "attacker", "the 403 audit line");
      expect(line).toMatchObject({ claimed: "attacker", verified_by: "router" });
    } else {
      expect(r.body).toMatch(
        /^scrapez bind: service "node" admits only verified callers and this caller \(claims "prometheus-central"\) is unverified: no caller proof \(the dialer sent no AppData\)\. .*scrapez identity key/,
      );
      expect(r.body.trim().split("\n")).toHaveLength(1);
      const line = await auditLine((l) => l.status === 403 && l.caller === "unverified", "the 403 audit line");
      expect(line).toMatchObject({ claimed: "prometheus-central", verified_by: "none" });
    }
  });

  it("refuses the attacker replaying a proof prometheus-central made (it binds another connection)", async () => {
    // prometheus-central dials a host the attacker could run; that host keeps the AppData it received.
    const captured = new Promise<ZitiConnection>((resolve) => {
      void capturer.listen("node", { bindUsingEdgeIdentity: true }).then((l) => {
        cleanup.push(() => l.close());
        l.on("connection", (c) => {
          resolve(connInternals(c));
          c.destroy();
        });
      });
    });
    const toCapturer = await waitUntil(
      () => central.dial("node", { identity: "capture-host", appData: { tenant: "t1" } }).catch(() => undefined),
      30_000,
      "a dial reaching the capture host",
    );
    const seen = await captured;
    toCapturer.destroy();
    // Our SDK on the capturing side verified it too, and the dialer's own AppData fields travelled with the proof.
    expect(seen.callerKey).toBe(centralPin);
    // A v2 router named the dialer too, but the proof is the stronger check and that is what the connection reports.
    expect(seen.callerVerifiedBy).toBe("proof");
    // A verified scrapez dialer ends its streams with a secretstream FINAL: a FIN without one is truncation.
    expect(seen.expectFinal).toBe(true);
    // The AppData carries the marker only: no certificate in the clear.
    expect(JSON.parse(seen.appData!.toString())).toEqual({ tenant: "t1", scrapez: { v: 2 } });
    const proof = await seen.e2e.firstMessage();
    expect(proof).toBeDefined();
    stolen = {
      proof: proof!,
      binding: {
        service: "node",
        dialerKx: seen.e2e.keys!.peer,
        hostKx: seen.e2e.keys!.local,
        hostHeader: seen.e2e.localHeader!,
        dialerHeader: seen.e2e.peerHeader!,
      },
    };

    const r = await getOver(await replayProof(attacker, "prometheus-central", stolen.proof));
    expect(r.status).toBe(403);
    if (v2) {
      // The router names the attacker; the replayed proof (for prometheus-central's key) does not make it anyone else.
      expect(r.body).toBe(notAllowedByName("attacker"));
      await auditLine((l) => l.status === 403 && l.caller === "attacker" && l.verified_by === "router", "403");
    } else {
      expect(r.body).toMatch(/is unverified: the signature does not match this connection \(service "node"/);
      await auditLine(
        (l) => l.status === 403 && l.caller === "unverified" && l.claimed === "prometheus-central",
        "403",
      );
    }
  });

  it("refuses the attacker dialing as itself: verified by its own proof (named by the router too on v2), but not allowed", async () => {
    const attackerPin = identityKeyPin(contextInternals(attacker).identity.certPem);
    // Earlier tests left 403 lines claimed by "attacker" too (on v2 the router names the forger and the replayer).
    const before = bind.logLines().length;
    const r = await getOver(await attacker.dial("node"));
    expect(r.status).toBe(403);
    expect(r.body).toBe(
      v2
        ? notAllowedByName("attacker")
        : `scrapez bind: caller key ${attackerPin} (claims "attacker") is verified but not allowed to scrape service ` +
            `"node"; to admit it, list its name in allow.identities and this key under allow.keys\n`,
    );
    // Its own line is the one whose proof verified: on v2 the replay test's line (403, "attacker", verified_by
    // router) may still arrive after `before`, since that test's wait can be met by the forged dial's identical line.
    const line = await auditLine(
      (l) => l.status === 403 && l.claimed === "attacker" && l.verified_by === "proof",
      "the attacker's own audit line (verified by its proof)",
      before,
    );
    expect(line).toMatchObject(
      // Its proof verified (an unpinned key): verified by proof on both lines; a v2 router's name is what it is called.
      v2 ? { caller: "attacker", verified_by: "proof" } : { caller: attackerPin, verified_by: "proof" },
    );
  });

  it("refuses OpenZiti's Go tunneler (ziti tunnel proxy) not on the list: no proof, so unverified (v1.x); named by the router (v2)", async () => {
    const p = await tunnelProxy(goDialer, "node");
    cleanup.push(() => p.proc.close());
    const r = await waitUntil(
      async () => {
        const x = await fetch(`http://127.0.0.1:${p.port}/metrics`).catch(() => undefined);
        return x ? { status: x.status, body: await x.text() } : undefined;
      },
      30_000,
      "an answer through ziti tunnel proxy",
    );
    expect(r.status).toBe(403);
    if (v2) {
      expect(r.body).toBe(notAllowedByName("go-dialer"));
      await auditLine((l) => l.status === 403 && l.caller === "go-dialer" && l.verified_by === "router", "Go 403");
    } else {
      expect(r.body).toMatch(
        /admits only verified callers and this caller \(claims "go-dialer"\) is unverified: no caller proof/,
      );
      await auditLine((l) => l.status === 403 && l.claimed === "go-dialer" && l.caller === "unverified", "Go 403");
    }
  });

  it("keeps the metric's caller label bounded, and guards the self-metrics service the same way", async () => {
    const forged = await getOver(await forgedDialTo(attacker, "bind-self", "prometheus-central", "bind-host"));
    expect(forged.status).toBe(403);
    if (v2) expect(forged.body).toBe(notAllowedByName("attacker", "bind-self"));
    else expect(forged.body).toMatch(/service "bind-self" admits only verified callers/);
    const r = await getOver(await central.dial("bind-self", { identity: "bind-host" }));
    expect(r.status).toBe(200);
    const callers = new Set(
      [...r.body.matchAll(/^scrapez_bind_scrapes_total\{[^}]*caller="([^"]*)"/gm)].map((m) => m[1]),
    );
    // On v2 the router names every dialer: none of the refused ones above was unverified.
    expect([...callers].sort()).toEqual(
      v2 ? ["not-allowed", "prometheus-central"] : ["not-allowed", "prometheus-central", "unverified"],
    );
  });

  it("`scrapez identity key` prints the identity's name, id and the pin to paste into allow.keys", async () => {
    const run = promisify(execFile);
    const { stdout } = await run(process.execPath, [cliPath, "identity", "key", "--identity", centralFile]);
    expect(stdout).toMatch(/^name: prometheus-central\nid: {3}\S+\nkey: {2}sha256:[\w-]{43}\n/);
    expect(stdout).toContain(`key:  ${centralPin}\n`);
    expect(stdout).toContain(`prometheus-central: "${centralPin}"`);
    const offline = await run(process.execPath, [cliPath, "identity", "key", "--offline", "-i", centralFile]);
    expect(offline.stdout).toContain(`key:  ${centralPin}\n`);
    const bad = await run(process.execPath, [cliPath, "identity", "key", "--identity", "/nonexistent.json"]).catch(
      (e: { code: number; stderr: string }) => e,
    );
    expect(bad).toMatchObject({ code: 1, stderr: expect.stringMatching(/nonexistent\.json: cannot read the file/) });
  });

  it("a proof replayed with the victim's own kx key verifies only for its own connection, and the replayer cannot speak", async () => {
    expect(stolen).toBeDefined();
    const { proof, binding } = stolen!;
    const kx = Buffer.from(binding.dialerKx);
    // The proof is genuine for the connection it was made on ...
    expect(verifyCallerProof(proof, binding, contextInternals(attacker).identity.caPem)).toMatchObject({ ok: true });
    // ... so send it with that key, as a raw Connect: the attacker lacks the key's private half.
    const svc = (await attacker.services()).find((s) => s.name === "node")!;
    const session = await contextInternals(attacker).controller.createSession(svc.id, "Dial");
    const ch = await contextInternals(attacker).channel(session.edgeRouters.map((r) => r.urls.tls).find(Boolean)!);
    const connId = ch.allocConnId();
    const conn = new ZitiConnection(ch, connId, { service: "node", role: "dial" });
    conn.register();
    const headers = new Map([
      [Header.ConnId, enc.u32(connId)],
      [Header.CallerId, enc.str("prometheus-central")],
      [Header.PublicKey, kx],
      [Header.CryptoMethod, enc.u8(0)],
      [Header.AppData, proofMarker()],
    ]);
    const reply = await ch.request(ContentType.Connect, headers, Buffer.from(session.token), 30_000);
    expect(reply.contentType).toBe(ContentType.StateConnected);
    const scrapesBefore = bind.logLines().filter((l) => l.msg === "scrape").length;
    const closed = new Promise<void>((resolve) => conn.once("close", () => resolve()));
    conn.on("error", () => undefined);
    conn.on("data", () => undefined); // the host's ciphertext, which the attacker cannot read
    conn.start(); // no session keys: what it sends cannot be valid ciphertext
    conn.write(randomBytes(24)); // a stream header
    conn.write(proof); // not valid ciphertext under these keys either
    conn.write(Buffer.from("GET /metrics HTTP/1.1\r\nHost: node\r\n\r\n"));
    await closed; // the host failed to decrypt and closed the connection
    expect(bind.logLines().filter((l) => l.msg === "scrape").length).toBe(scrapesBefore);
    expect(bind.running).toBe(true);
    // And the real caller is still served.
    expect((await getOver(await central.dial("node"))).status).toBe(200);
  });
});
