/**
 * Layer 3 against a real controller: enrollment by our own code (the JWT, the CA bundle, the CSR, the identity file),
 * then the controller client with the result (authenticate, services, sessions, refresh, errors); and interop both
 * ways with the reference Go code (`ziti edge enroll` files load in ours, our files load in `ziti tunnel`).
 */
import { execFile } from "node:child_process";
import { createPrivateKey, generateKeyPairSync, sign } from "node:crypto";
import { statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ControllerClient,
  type ControllerClientOptions,
  enroll,
  type Identity,
  identityKeyPin,
  loadIdentity,
  saveIdentity,
} from "../../src/ziti/internal.js";
import { ControllerError, ErrorCodes } from "../../src/ziti/index.js";
import { repoRoot } from "../harness/binaries.js";
import { Overlay } from "../harness/overlay.js";
import { freePort } from "../harness/ports.js";
import { tunnelProxy } from "../harness/ziti-tunnel.js";

const run = promisify(execFile);
const QUOTED = 'metrics "eu" \\ west';
const INTERCEPT = { protocols: ["tcp"], addresses: ["enrolled.ziti"], portRanges: [{ low: 9100, high: 9100 }] };
let overlay: Overlay;
let serviceId: string;

beforeAll(async () => {
  overlay = await Overlay.start();
  const cfg = await overlay.createConfig("enrolled-intercept", "intercept.v1", INTERCEPT);
  serviceId = await overlay.service("enrolled-svc", { dial: ["#enrolled", "#lonely"], configs: [cfg] });
  await overlay.createService(QUOTED, { roleAttributes: ["quoted"] });
  await overlay.createServicePolicy("quoted-dial", "Dial", ["#quoted"], ["#enrolled"]);
  await overlay.service("invisible-svc", { dial: ["#someone-else"] });
});
afterAll(async () => overlay?.close());

/** Enrolls a fresh identity with our code and saves it; returns the file and the identity. */
async function enrolled(name: string, roles = ["enrolled"], keyType?: "EC" | "RSA") {
  const ref = await overlay.createIdentity(name, roles);
  const identity = await enroll({ jwt: ref.jwt, ...(keyType ? { keyType } : {}) });
  const file = join(overlay.home, `${name}.json`);
  await saveIdentity(file, identity);
  return { ref, identity, file };
}

async function withClient<T>(
  identity: Identity,
  fn: (c: ControllerClient) => Promise<T>,
  opts: ControllerClientOptions = {},
): Promise<T> {
  const c = new ControllerClient(identity, opts);
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}

describe("enrollment with our code (no ziti CLI) against a real controller", () => {
  it("enrolls a fresh JWT (EC and RSA); the saved file is 0600, loads, authenticates and lists its services", async () => {
    for (const keyType of ["EC", "RSA"] as const) {
      const { ref, identity, file } = await enrolled(`enrolled-${keyType.toLowerCase()}`, ["enrolled"], keyType);
      expect(identity.name).toBe(ref.id); // the controller puts the identity id in the CN
      expect(identity.ztAPI).toBe(`${overlay.ctrlUrl}/edge/client/v1`);
      expect(statSync(file).mode & 0o777).toBe(0o600);
      // The key is of the asked type (EC P-256 by default, RSA 2048), and the controller signed a certificate for it.
      const key = createPrivateKey(identity.keyPem);
      if (keyType === "EC") expect(key.asymmetricKeyDetails?.namedCurve).toBe("prime256v1");
      else expect([key.asymmetricKeyType, key.asymmetricKeyDetails?.modulusLength]).toEqual(["rsa", 2048]);
      expect(key.asymmetricKeyType).toBe(keyType === "EC" ? "ec" : "rsa");
      const loaded = await loadIdentity(file);
      await withClient(loaded, async (c) => {
        const session = await c.authenticate();
        expect(session).toMatchObject({ identityId: ref.id, identityName: ref.name });
        expect(c.identityName).toBe(ref.name);
        const services = await c.listServices();
        expect(services.map((s) => s.name).sort()).toEqual(["enrolled-svc", QUOTED].sort());
      });
    }
  });

  it("rejects a reused token with ENROLLMENT_FAILED and a clear message", async () => {
    const ref = await overlay.createIdentity("enrolled-twice", ["enrolled"]);
    await enroll({ jwt: ref.jwt });
    const err = await enroll({ jwt: ref.jwt }).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: ErrorCodes.ENROLLMENT_FAILED,
      message: expect.stringMatching(
        /the token was already used or is unknown to the controller \(INVALID_ENROLLMENT_TOKEN, requestId .+\): create a new enrollment/,
      ),
    });
    expect((err as Error).message).not.toContain(
      JSON.parse(Buffer.from(ref.jwt.split(".")[1]!, "base64url").toString()).jti,
    );
  });

  it("rejects a tampered token (one payload byte flipped) with JWT_INVALID before it reaches /enroll", async () => {
    const ref = await overlay.createIdentity("enrolled-tampered", ["enrolled"]);
    const [h, p, s] = ref.jwt.split(".") as [string, string, string];
    const payload = Buffer.from(p, "base64url");
    const at = payload.indexOf(Buffer.from(ref.id)); // flip a byte of the sub claim: still valid JSON
    payload[at]! ^= 0x01;
    const forged = [h, payload.toString("base64url"), s].join(".");
    await expect(enroll({ jwt: forged })).rejects.toMatchObject({
      code: ErrorCodes.JWT_INVALID,
      message: expect.stringMatching(/signature does not verify/),
    });
    // The genuine token is still unused: the forged attempt never reached the controller's /enroll.
    await expect(enroll({ jwt: ref.jwt })).resolves.toMatchObject({ name: ref.id });
  });

  it("rejects a token re-signed by another key (same header, same claims) before it reaches /enroll", async () => {
    const ref = await overlay.createIdentity("enrolled-resigned", ["enrolled"]);
    const [h, p] = ref.jwt.split(".") as [string, string, string];
    const alg = (JSON.parse(Buffer.from(h, "base64url").toString()) as { alg: string }).alg;
    const other = alg.startsWith("ES")
      ? generateKeyPairSync("ec", { namedCurve: alg === "ES384" ? "secp384r1" : "prime256v1" })
      : generateKeyPairSync("rsa", { modulusLength: 2048 });
    const sig = sign(`sha${alg.slice(2)}`, Buffer.from(`${h}.${p}`), {
      key: other.privateKey,
      ...(alg.startsWith("ES") ? { dsaEncoding: "ieee-p1363" as const } : {}),
    });
    const err = await enroll({ jwt: `${h}.${p}.${sig.toString("base64url")}` }).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: ErrorCodes.JWT_INVALID,
      message: expect.stringMatching(/signature does not verify against the issuing controller's certificate/),
    });
    // The header still names the controller's certificate (kid): no remark that the certificate changed.
    expect((err as Error).message).not.toMatch(/names signing certificate/);
    // The genuine token is still unused.
    await expect(enroll({ jwt: ref.jwt })).resolves.toMatchObject({ name: ref.id });
  });

  it("files written by `ziti edge enroll` load and authenticate; ours load in the Go SDK (`ziti tunnel proxy`)", async () => {
    const goFile = await overlay.identity("go-enrolled", ["enrolled"]);
    const go = await loadIdentity(goFile);
    expect(go.keyPem).toMatch(/-----BEGIN RSA PRIVATE KEY-----/); // Go's own key format
    await withClient(go, async (c) => {
      await c.authenticate();
      expect(c.identityName).toBe("go-enrolled");
      expect((await c.listServices()).map((s) => s.name)).toContain("enrolled-svc");
    });
    // The Go SDK opens the proxy port only after it loaded our file, authenticated and found the service.
    const { file } = await enrolled("enrolled-for-go");
    const { proc } = await tunnelProxy(file, "enrolled-svc");
    await proc.stop();
  });

  it("`scrapez enroll` writes a 0600 identity that authenticates", async () => {
    const ref = await overlay.createIdentity("enrolled-cli", ["enrolled"]);
    const jwtFile = join(overlay.home, "enrolled-cli.jwt");
    const out = join(overlay.home, "enrolled-cli.json");
    writeFileSync(jwtFile, ref.jwt);
    const r = await run(process.execPath, [
      join(repoRoot, "dist/src/cli/main.js"),
      "enroll",
      "--jwt",
      jwtFile,
      "--out",
      out,
    ]);
    expect(r.stdout).toMatch(/mode 0600/);
    expect(r.stdout).toContain(`key ${identityKeyPin((await loadIdentity(out)).certPem)}`);
    expect(statSync(out).mode & 0o777).toBe(0o600);
    await withClient(await loadIdentity(out), async (c) => {
      expect((await c.authenticate()).identityName).toBe("enrolled-cli");
    });
  });
});

describe("the controller client with an identity we enrolled", () => {
  let identity: Identity;
  beforeAll(async () => {
    ({ identity } = await enrolled("client-user"));
  });

  it("maps services (permissions, configs by type name, raw), lists a name with quotes as it is, and reads updates", async () => {
    await withClient(identity, async (c) => {
      const services = await c.listServices();
      const svc = services.find((s) => s.name === "enrolled-svc")!;
      expect(svc).toMatchObject({
        id: serviceId,
        permissions: ["Dial"],
        encryptionRequired: true,
        roleAttributes: ["enrolled-svc"],
        configs: { "intercept.v1": INTERCEPT },
      });
      expect(svc.raw).toMatchObject({ id: serviceId, name: "enrolled-svc" });
      expect(services.map((s) => s.name)).toContain(QUOTED); // a name with quotes comes back as it is
      expect(services.map((s) => s.name)).not.toContain("invisible-svc"); // no policy grants it
      expect(Date.parse((await c.serviceUpdates())!)).not.toBeNaN();
    });
  });

  it("creates a Dial session with the online router's tls URL; maps Bind without a policy and unknown ids", async () => {
    await withClient(identity, async (c) => {
      const s = await c.createSession(serviceId, "Dial");
      expect(s.token).toBeTruthy();
      expect(s.edgeRouters).toEqual([
        {
          name: "router-1",
          hostname: expect.any(String),
          isOnline: true,
          urls: { tls: `tls://127.0.0.1:${overlay.routerPorts[0]}` },
        },
      ]);
      const bind = await c.createSession(serviceId, "Bind").catch((e: unknown) => e);
      expect(bind).toBeInstanceOf(ControllerError);
      expect(bind).toMatchObject({ code: ErrorCodes.NOT_AUTHORIZED, status: 400, apiCode: "COULD_NOT_VALIDATE" });
      expect((bind as Error).message).toMatch(/ServiceId: service not found .*\(requestId [^)\s]+\)$/);
      await expect(c.createSession("no-such-service", "Dial")).rejects.toMatchObject({
        code: ErrorCodes.SERVICE_NOT_FOUND,
        status: 404,
        message: expect.stringMatching(
          /404 NOT_FOUND: .*service with id no-such-service not found \(requestId [^)\s]+\)$/,
        ),
      });
    });
  });

  it("NO_EDGE_ROUTERS when no edge-router policy gives this identity a router", async () => {
    const { identity: lonely } = await enrolled("lonely", ["lonely"]);
    const erps = await overlay.api<{ data: { id: string; identityRoles: string[] }[] }>("GET", "edge-router-policies");
    const erp = erps.data.find((p) => p.identityRoles.includes("#all"))!;
    await overlay.api("PATCH", `edge-router-policies/${erp.id}`, { identityRoles: ["#enrolled"] });
    try {
      await withClient(lonely, async (c) => {
        await expect(c.createSession(serviceId, "Dial")).rejects.toMatchObject({
          code: ErrorCodes.NO_EDGE_ROUTERS,
          apiCode: "NO_EDGE_ROUTERS_AVAILABLE",
          message: expect.stringMatching(/No edge routers are assigned and online/),
        });
      });
    } finally {
      await overlay.api("PATCH", `edge-router-policies/${erp.id}`, { identityRoles: ["#all"] });
    }
  });

  // Legacy API sessions (the controller also speaks OIDC: forced here; OIDC is covered by test/integration/oidc.test.ts).
  it("legacy: refreshes via current-api-session; re-authenticates once when the controller dropped the session; logs out", async () => {
    await withClient(
      identity,
      async (c) => {
        const first = await c.authenticate();
        expect(first.expirationSeconds).toBeGreaterThan(0);
        expect(first.expiresAt!.getTime()).toBeGreaterThan(Date.now());
        expect((await c.currentApiSession()).id).toBe(first.id);
        // An admin deletes our API session: the next call gets 401, re-authenticates and succeeds.
        await overlay.api("DELETE", `api-sessions/${first.id}`);
        expect((await c.listServices()).length).toBe(2);
        const second = await c.currentApiSession();
        expect(second.id).not.toBe(first.id);
        await c.logout();
        const sessions = await overlay.api<{ data: { id: string }[] }>("GET", `api-sessions?limit=500`);
        expect(sessions.data.map((s) => s.id)).not.toContain(second.id);
      },
      { auth: "legacy" },
    );
  });

  it("AUTH_FAILED once the identity is deleted; CONTROLLER_UNREACHABLE on a dead port; CLOSED after close()", async () => {
    const { ref, identity: doomed } = await enrolled("doomed");
    await overlay.api("DELETE", `identities/${ref.id}`);
    await withClient(
      doomed,
      async (c) => {
        const err = await c.authenticate().catch((e: unknown) => e);
        expect(err).toMatchObject({ code: ErrorCodes.AUTH_FAILED, status: 401, apiCode: "INVALID_AUTH" });
        expect((err as Error).message).toMatch(
          /POST \/edge\/client\/v1\/authenticate: 401 INVALID_AUTH: .*re-enroll it \(requestId [^)\s]+\)$/,
        );
      },
      { auth: "legacy" },
    );
    const port = await freePort();
    await withClient({ ...identity, ztAPI: `https://127.0.0.1:${port}/edge/client/v1` }, async (c) => {
      await expect(c.authenticate()).rejects.toMatchObject({
        code: ErrorCodes.CONTROLLER_UNREACHABLE,
        message: expect.stringMatching(
          new RegExp(`cannot reach the controller at https://127\\.0\\.0\\.1:${port}: .*ECONNREFUSED`),
        ),
      });
    });
    const c = new ControllerClient(identity);
    c.close();
    await expect(c.listServices()).rejects.toMatchObject({ code: ErrorCodes.CLOSED });
  });
});
