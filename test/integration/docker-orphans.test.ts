/**
 * The container tests' own cleanup (test/harness/docker.ts, removeOrphans, run at the start of every test run): what
 * a killed run left on the real engine is removed; what a run still going made is kept.
 */
import { afterAll, expect, it } from "vitest";
import { baseImage, docker, dockerOk, LABEL, removeLabelled, removeOrphans, requireEngine } from "../harness/docker.js";

/** A pid no process has: above the kernel's pid_max (4194304 at most). */
const DEAD = `4194400-${Date.now().toString(36)}`;
const LIVE = `${process.pid}-live${Date.now().toString(36)}`;

afterAll(async () => {
  for (const v of [DEAD, LIVE]) {
    const ids = (await dockerOk(["ps", "-aq", "--filter", `label=${LABEL}=${v}`])).split("\n").filter(Boolean);
    if (ids.length) await docker(["rm", "-f", ...ids]);
    await docker(["network", "rm", `scrapez-orphan-${v}`]);
    await docker(["volume", "rm", `scrapez-orphan-${v}`]);
  }
  await removeLabelled();
});

it("removes the containers, networks and volumes of a test run that was killed, and keeps a running one's", async () => {
  await requireEngine();
  const make = async (value: string) => {
    const label = ["--label", `${LABEL}=${value}`];
    await dockerOk(["network", "create", ...label, `scrapez-orphan-${value}`]);
    await dockerOk(["volume", "create", ...label, `scrapez-orphan-${value}`]);
    return (
      await dockerOk(["run", "-d", ...label, "--network", `scrapez-orphan-${value}`, baseImage(), "sleep", "600"])
    ).trim();
  };
  const dead = await make(DEAD);
  const live = await make(LIVE);
  expect(await removeOrphans()).toBeGreaterThanOrEqual(3);
  const exists = async (args: string[]) => (await docker(args)).code === 0;
  expect(await exists(["container", "inspect", dead])).toBe(false);
  expect(await exists(["network", "inspect", `scrapez-orphan-${DEAD}`])).toBe(false);
  expect(await exists(["volume", "inspect", `scrapez-orphan-${DEAD}`])).toBe(false);
  expect(await exists(["container", "inspect", live])).toBe(true);
  expect(await exists(["network", "inspect", `scrapez-orphan-${LIVE}`])).toBe(true);
  expect(await exists(["volume", "inspect", `scrapez-orphan-${LIVE}`])).toBe(true);
}, 120_000);
