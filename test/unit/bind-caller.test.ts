/**
 * Caller allow-lists on the bind side: the `allow.keys` config and the decision who is admitted (src/bind/caller.ts).
 * What the SDK verified (router-asserted name, proof key pin) is given here as facts; the proof over the real
 * overlay is test/integration/caller.test.ts.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import YAML from "yaml";
import { resolveCaller } from "../../src/bind/caller.js";
import { parseBindConfig, unpinnedCallers, type BindAllow } from "../../src/bind/config.js";
import { repoRoot } from "../harness/binaries.js";

const dir = mkdtempSync(join(tmpdir(), "scrapez-unit-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
writeFileSync(join(dir, "id.json"), "{}");
const PIN_A = `sha256:${"A".repeat(42)}Q`;
const PIN_B = `sha256:${"b".repeat(42)}-`;
const target = (allow: unknown) => ({ service: "node", upstream: "http://127.0.0.1:9100", allow });
const parse = (raw: object) => parseBindConfig({ identity: "id.json", ...raw }, "bind.yaml", dir, {});

describe("bind config: allow.keys", () => {
  it("accepts pins for listed names, on targets and on self", () => {
    const allow = { identities: ["central", "backup"], keys: { central: PIN_A, backup: PIN_B } };
    const c = parse({ targets: [target(allow)], self: { service: "self", allow } });
    expect(c.targets[0]!.allow).toEqual(allow);
    expect(c.self!.allow).toEqual(allow);
    expect(unpinnedCallers(c)).toEqual([]);
  });

  it("loads a name without a key, and lists it for the start-up warning", () => {
    const c = parse({
      targets: [target({ identities: ["central", "legacy"], keys: { central: PIN_A } })],
      self: { service: "self", allow: { identities: ["ops"] } },
    });
    expect(unpinnedCallers(c)).toEqual([
      { service: "node", identity: "legacy" },
      { service: "self", identity: "ops" },
    ]);
  });

  it.each([
    ["a pin without the prefix", { identities: ["a"], keys: { a: "A".repeat(43) } }, /targets\[0\]\.allow\.keys\.a/],
    ["a hex pin", { identities: ["a"], keys: { a: `sha256:${"ab".repeat(32)}` } }, /not a key pin: expected sha256:/],
    ["a short pin", { identities: ["a"], keys: { a: "sha256:abc" } }, /allow\.keys\.a: not a key pin/],
    ["a pin with +/", { identities: ["a"], keys: { a: `sha256:${"+".repeat(43)}` } }, /not a key pin/],
    [
      "a key for a name not listed",
      { identities: ["a"], keys: { a: PIN_A, b: PIN_B } },
      /targets\[0\]\.allow\.keys\.b: "b" is not in allow\.identities/,
    ],
    ["one key for two names", { identities: ["a", "b"], keys: { a: PIN_A, b: PIN_A } }, /keys\.b: same key as "a"/],
    ["a non-string pin", { identities: ["a"], keys: { a: 1 } }, /targets\[0\]\.allow\.keys\.a/],
    ["an unknown key", { identities: ["a"], pins: {} }, /pins/],
  ])("rejects %s, naming the field", (_n, allow, msg) => {
    expect(() => parse({ targets: [target(allow)] })).toThrow(msg);
  });

  it("the example config/bind.yaml parses, with its pinned allow-list", () => {
    const raw = YAML.parse(readFileSync(join(repoRoot, "config", "bind.yaml"), "utf8")) as object;
    const c = parseBindConfig(raw, "config/bind.yaml", dir, { SCRAPEZ_IDENTITY: join(dir, "id.json") });
    expect(c.targets[0]!.allow?.keys?.["prometheus-central"]).toMatch(/^sha256:/);
    expect(unpinnedCallers(c)).toEqual([]);
  });

  it("checks self.allow the same way", () => {
    expect(() =>
      parse({ targets: [target(undefined)], self: { service: "s", allow: { identities: ["a"], keys: { z: PIN_A } } } }),
    ).toThrow(/self\.allow\.keys\.z: "z" is not in allow\.identities/);
  });
});

describe("who is calling", () => {
  const allow: BindAllow = { identities: ["central", "legacy"], keys: { central: PIN_A } };

  it("admits a caller whose verified key is pinned, whatever name it claims", () => {
    const who = resolveCaller("node", allow, { claimed: "anything", key: PIN_A });
    expect(who).toMatchObject({ caller: "central", label: "central", verifiedBy: "proof", claimed: "anything" });
    expect(who.refusal).toBeUndefined();
  });

  it("refuses a caller that only claims an allowed name: unverified, with how to fix it", () => {
    const who = resolveCaller("node", allow, { claimed: "central", proofError: "no caller proof (x)" });
    expect(who).toMatchObject({ caller: "unverified", label: "unverified", verifiedBy: "none", claimed: "central" });
    expect(who.refusal).toMatch(
      /^scrapez bind: service "node" admits only verified callers and this caller \(claims "central"\) is unverified: no caller proof \(x\)\..*scrapez identity key --identity <file>/,
    );
  });

  it("refuses a verified key that is not pinned, saying it is verified but not allowed", () => {
    const who = resolveCaller("node", allow, { claimed: "central", key: PIN_B });
    expect(who).toMatchObject({ caller: PIN_B, label: "not-allowed", verifiedBy: "proof" });
    expect(who.refusal).toMatch(/caller key sha256:\S+ \(claims "central"\) is verified but not allowed/);
  });

  it("admits a router-asserted name (v2.0+ routers) without a key, and refuses an asserted name not listed", () => {
    const legacy = resolveCaller("node", allow, { claimed: "legacy", routerName: "legacy" });
    expect(legacy).toMatchObject({ caller: "legacy", verifiedBy: "router" });
    expect(legacy.refusal).toBeUndefined();
    const other = resolveCaller("node", allow, { claimed: "central", routerName: "other" });
    expect(other.label).toBe("not-allowed");
    expect(other.refusal).toMatch(/caller identity "other" \(claims "central"\) is verified but not allowed/);
  });

  describe("a router-asserted name and a proof together (v2.0+ routers and a scrapez dialer)", () => {
    it("the proof decides where both agree: admitted as the pinned name, verified by proof", () => {
      const who = resolveCaller("node", allow, { claimed: "central", routerName: "central", key: PIN_A });
      expect(who).toMatchObject({ caller: "central", name: "central", label: "central", verifiedBy: "proof" });
      expect(who.refusal).toBeUndefined();
    });

    it("refuses a pinned key proven by a dialer the router names otherwise", () => {
      const who = resolveCaller("node", allow, { claimed: "central", routerName: "legacy", key: PIN_A });
      expect(who).toMatchObject({ caller: "legacy", label: "not-allowed", verifiedBy: "proof" });
      expect(who.refusal).toBe(
        `scrapez bind: caller key ${PIN_A} is pinned for "central" but the router names the dialer "legacy" ` +
          `(claims "central"): refused to scrape service "node" (one of the two is not who it says)`,
      );
    });

    it.each([
      ["no proof (a Go tunneler)", {}, /the caller sent no valid caller proof \(none\)/],
      ["a failed proof", { proofError: "bad signature" }, /sent no valid caller proof \(bad signature\)/],
      ["another, unpinned key", { key: PIN_B }, new RegExp(`the caller proved key ${PIN_B.replace(/[-+]/g, "\\$&")}`)],
    ])("refuses a listed name with a pinned key on the router's word alone: %s", (_n, facts, re) => {
      const who = resolveCaller("node", allow, { claimed: "central", routerName: "central", ...facts });
      expect(who).toMatchObject({ caller: "central", label: "not-allowed" });
      expect(who.refusal).toMatch(re);
      expect(who.refusal).toMatch(/allow\.keys pins a key for it .* remove its pin from allow\.keys$/);
    });

    it("admits a listed name without a pin on the router's word, also when the dialer proves an unpinned key", () => {
      const who = resolveCaller("node", allow, { claimed: "legacy", routerName: "legacy", key: PIN_B });
      expect(who).toMatchObject({ caller: "legacy", name: "legacy", verifiedBy: "router" });
      expect(who.refusal).toBeUndefined();
    });

    it("an unverified caller's refusal names both ways in: a pinned key, or a v2 router's name without a pin", () => {
      const who = resolveCaller("node", allow, { claimed: "x" });
      expect(who.refusal).toMatch(/pinned in allow\.keys .* or OpenZiti v2\.0\+ routers must name it/);
    });
  });

  it("without an allow-list admits everyone under the one label 'any', never trusting the claimed name", () => {
    const anyone = resolveCaller("node", undefined, { claimed: "central" });
    expect(anyone).toMatchObject({ caller: "unverified", label: "any", claimed: "central" });
    expect(anyone.refusal).toBeUndefined();
    expect(resolveCaller("node", undefined, { claimed: "x", key: PIN_B })).toMatchObject({
      caller: PIN_B,
      label: "any",
      verifiedBy: "proof",
    });
  });

  it("keeps metric labels bounded whatever names dialers claim", () => {
    const labels = new Set<string>();
    for (let i = 0; i < 1000; i++) {
      labels.add(resolveCaller("node", allow, { claimed: `name-${i}` }).label);
      labels.add(resolveCaller("node", allow, { claimed: `name-${i}`, routerName: `r-${i}` }).label);
      labels.add(resolveCaller("node", allow, { claimed: `name-${i}`, key: PIN_B }).label);
    }
    expect([...labels].sort()).toEqual(["not-allowed", "unverified"]);
    expect(resolveCaller("node", allow, { claimed: "x".repeat(10_000) }).claimed!.length).toBeLessThan(140);
  });
});
