/**
 * Issue 12 on the single-controller overlay (the quickstart of either line offers OIDC_AUTH): OIDC is chosen
 * automatically, legacy can be forced, a refresh exchanges tokens within the same API session and the router
 * takes the new token (UpdateToken), a refused refresh logs in again, and a certificate renewal whose identity
 * file cannot be rewritten keeps the new certificate in memory and says so.
 */
import { mkdirSync, readFileSync, rmSync } from "node:fs";
import http from "node:http";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorCodes, ZitiContext, type CertRenewedEvent } from "../../src/ziti/index.js";
import { contextInternals } from "../../src/ziti/internal.js";
import { zitiLine } from "../harness/binaries.js";
import { Overlay } from "../harness/overlay.js";
import { tempDir } from "../harness/process.js";

const dir = tempDir("oidc-test");
let overlay: Overlay;

beforeAll(async () => {
  overlay = await Overlay.start();
  await overlay.service("oidc-echo", { dial: ["#clients"], bind: ["#servers"] });
});

afterAll(async () => {
  await overlay?.close();
});

async function echoOnce(ctx: ZitiContext, text: string): Promise<string> {
  const c = await ctx.dial("oidc-echo");
  c.end(text);
  let got = "";
  for await (const chunk of c) got += String(chunk);
  return got;
}

describe("OIDC on a single controller", () => {
  it("auto picks OIDC; a refresh keeps the API session, changes the token, and the router takes it", async () => {
    const file = await overlay.identity("oidc-auto", ["clients", "servers"], dir);
    const ctx = await ZitiContext.fromIdentityFile(file);
    try {
      expect(ctx.authMode).toBe("oidc");
      expect(contextInternals(ctx).controller.capabilities).toContain("OIDC_AUTH");
      const l = await ctx.listen("oidc-echo");
      l.on("connection", (c) => void c.pipe(c));
      expect(await echoOnce(ctx, "one")).toBe("one");
      const before = {
        token: contextInternals(ctx).controller.sessionToken,
        id: contextInternals(ctx).controller.session?.id,
      };
      const s = await contextInternals(ctx).controller.refresh();
      expect(s.id).toBe(before.id);
      expect(contextInternals(ctx).controller.sessionToken).not.toBe(before.token);
      // The router accepted the new token on the same channel (a refusal would close it and drop the bind).
      await new Promise((r) => setTimeout(r, 500));
      // One channel for the listener's bind and one for dials (kept apart: see ChannelRole), both still open.
      expect(
        ctx
          .routerStatus()
          .map((r) => `${r.role}:${r.state}`)
          .sort(),
      ).toEqual(["bind:open", "dial:open"]);
      expect(l.rebinds).toBe(0);
      expect(await echoOnce(ctx, "two")).toBe("two");
      await l.close();
    } finally {
      await ctx.close();
    }
  });

  it("auth: legacy is honoured (zt-session API session)", async () => {
    const file = await overlay.identity("oidc-legacy", ["clients"], dir);
    const ctx = await ZitiContext.fromIdentityFile(file, { auth: "legacy" });
    try {
      expect(ctx.authMode).toBe("legacy");
      // Legacy API sessions are deprecated on 2.x controllers (removed in v3): there scrapez warns (src/overlay).
      expect(contextInternals(ctx).controller.controllerVersion).toMatch(zitiLine() === "2" ? /^v2\./ : /^v1\./);
      expect(contextInternals(ctx).controller.legacyDeprecated).toBe(zitiLine() === "2");
      const sessions = await overlay.api<{ data: { id: string }[] }>("GET", "api-sessions?limit=500");
      expect(sessions.data.map((s) => s.id)).toContain(contextInternals(ctx).controller.session?.id);
    } finally {
      await ctx.close();
    }
  });

  it("a refused refresh logs in again (refused too once the identity is deleted: AUTH_FAILED, no token in the message)", async () => {
    const ref = await overlay.createIdentity("oidc-doomed", ["clients"]);
    const file = await overlay.enrollWithCli(ref.jwt, join(dir, "oidc-doomed.json"));
    const ctx = await ZitiContext.fromIdentityFile(file);
    try {
      const token = contextInternals(ctx).controller.sessionToken!;
      await overlay.deleteIdentity(ref.id);
      const err = (await contextInternals(ctx)
        .controller.refresh()
        .catch((e: unknown) => e)) as Error & { code?: string };
      expect(err.code).toBe(ErrorCodes.AUTH_FAILED);
      // The message is the login's (the refresh was refused first, then the login).
      expect(err.message).toMatch(/POST \/oidc\/login\/cert: 401/);
      expect(err.message).not.toContain(token);
    } finally {
      await ctx.close();
    }
  });
});

describe("certificate renewal when the identity file cannot be rewritten", () => {
  it("keeps the renewed certificate in memory, says the file is stale, and keeps working", async () => {
    const sub = join(dir, "readonly");
    mkdirSync(sub);
    const file = await overlay.identity("oidc-renew-ro", ["clients", "servers"], sub);
    const original = readFileSync(file, "utf8");
    const ctx = await ZitiContext.fromIdentityFile(file);
    const server = http.createServer((_q, res) => res.end("ok"));
    try {
      // The file's dir goes away (as root, permissions would not stop the write; a missing dir does).
      rmSync(sub, { recursive: true });
      const before = ctx.certExpiresAt;
      const event = new Promise<CertRenewedEvent>((r) => ctx.once("certRenewed", r));
      await ctx.renewCertificate();
      const e = await event;
      expect(e.written).toBe(false);
      expect(e.notWrittenReason).toMatch(/cannot write the identity file: .*ENOENT/);
      expect(e.notAfter.getTime()).toBeGreaterThanOrEqual(before.getTime());
      expect(contextInternals(ctx).identity.certPem).not.toBe(JSON.parse(original).id.cert.slice(4));
      // New channels use the renewed certificate and the new token: a bind and a dial work.
      await ctx.serve("oidc-echo", server);
      const agent = ctx.httpAgent({ keepAlive: false });
      const body = await new Promise<string>((resolve, reject) =>
        http
          .get({ host: "oidc-echo", path: "/", agent }, (res) => {
            let t = "";
            res.on("data", (d: Buffer) => (t += d.toString()));
            res.on("end", () => resolve(t));
          })
          .on("error", reject),
      );
      expect(body).toBe("ok");
    } finally {
      server.close();
      await ctx.close();
    }
  });
});
