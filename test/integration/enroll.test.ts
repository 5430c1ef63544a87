/** Enrollment by our own code against a real controller: the JWT, the CA bundle, the CSR, the identity file. */
import { execFile } from "node:child_process";
import { statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorCodes, ZitiContext, enroll, loadIdentity, saveIdentity } from "../../src/ziti/index.js";
import { repoRoot } from "../harness/binaries.js";
import { Overlay } from "../harness/overlay.js";

const run = promisify(execFile);
let overlay: Overlay;

beforeAll(async () => {
  overlay = await Overlay.start();
  await overlay.service("enrolled-svc", { dial: ["#enrolled"] });
});
afterAll(async () => overlay?.close());

describe("enrollment with our code (no ziti CLI) against a real controller", () => {
  it("enrolls a fresh JWT (EC and RSA); the saved file is 0600 and authenticates", async () => {
    for (const keyType of ["EC", "RSA"] as const) {
      const ref = await overlay.createIdentity(`enrolled-${keyType.toLowerCase()}`, ["enrolled"]);
      const identity = await enroll({ jwt: ref.jwt, keyType });
      const file = join(overlay.home, `${ref.name}.json`);
      await saveIdentity(file, identity);
      expect(statSync(file).mode & 0o777).toBe(0o600);
      const ctx = await ZitiContext.fromIdentityFile(file);
      expect(ctx.identityName).toBe(ref.name);
      expect((await ctx.services()).map((s) => s.name)).toContain("enrolled-svc");
      await ctx.close();
    }
  });

  it("rejects a reused token with a clear message", async () => {
    const ref = await overlay.createIdentity("enrolled-twice", ["enrolled"]);
    await enroll({ jwt: ref.jwt });
    await expect(enroll({ jwt: ref.jwt })).rejects.toMatchObject({
      code: ErrorCodes.ENROLLMENT_FAILED,
      message: expect.stringMatching(/already used or is unknown/),
    });
  });

  it("rejects a tampered token before sending anything to /enroll", async () => {
    const ref = await overlay.createIdentity("enrolled-tampered", ["enrolled"]);
    const [h, p, s] = ref.jwt.split(".") as [string, string, string];
    const claims = JSON.parse(Buffer.from(p, "base64url").toString()) as Record<string, unknown>;
    claims.sub = "someone-else";
    const forged = [h, Buffer.from(JSON.stringify(claims)).toString("base64url"), s].join(".");
    await expect(enroll({ jwt: forged })).rejects.toMatchObject({
      code: ErrorCodes.JWT_INVALID,
      message: expect.stringMatching(/signature does not verify/),
    });
    // The genuine token is still unused: the forged attempt never reached the controller's /enroll.
    await expect(enroll({ jwt: ref.jwt })).resolves.toMatchObject({ name: expect.any(String) });
  });

  it("`scrapez enroll` writes a 0600 identity that authenticates; files written by `ziti edge enroll` load too", async () => {
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
    expect(statSync(out).mode & 0o777).toBe(0o600);
    const goEnrolled = await overlay.identity("go-enrolled", ["enrolled"]);
    for (const f of [out, goEnrolled]) {
      const ctx = await ZitiContext.fromIdentityFile(f);
      expect((await ctx.services()).map((s) => s.name)).toContain("enrolled-svc");
      await ctx.close();
    }
    expect((await loadIdentity(out)).ztAPI).toBe(`${overlay.ctrlUrl}/edge/client/v1`);
  });
});
