/** Config-file watching for hot reload, including a Kubernetes ConfigMap update (an atomic `..data` symlink swap). */
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { watchConfigFile } from "../../src/bind/watch.js";

const DEBOUNCE = 50;
const settle = () => new Promise((r) => setTimeout(r, DEBOUNCE * 6));
const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

describe("watchConfigFile", () => {
  it("fires once per real change (in-place write or rename-over), debounced", async () => {
    const dir = mkdtempSync(join(tmpdir(), "scrapez-watch-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, "bind.yaml");
    writeFileSync(file, "a: 1\n");
    let n = 0;
    cleanups.push(watchConfigFile(file, () => n++, DEBOUNCE));

    writeFileSync(file, "a: 2\n");
    writeFileSync(file, "a: 3\n");
    await settle();
    expect(n).toBe(1);

    writeFileSync(join(dir, "bind.yaml.tmp"), "a: 4\n");
    renameSync(join(dir, "bind.yaml.tmp"), file);
    await settle();
    expect(n).toBe(2);
  });

  it("ignores other files in the directory and rewrites with the same text", async () => {
    const dir = mkdtempSync(join(tmpdir(), "scrapez-watch-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, "bind.yaml");
    writeFileSync(file, "a: 1\n");
    let n = 0;
    cleanups.push(watchConfigFile(file, () => n++, DEBOUNCE));

    writeFileSync(join(dir, "status.json"), "{}");
    writeFileSync(file, "a: 1\n");
    await settle();
    expect(n).toBe(0);
  });

  it("sees a Kubernetes ConfigMap update, which swaps the ..data symlink and never names the file", async () => {
    const dir = mkdtempSync(join(tmpdir(), "scrapez-watch-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    for (const [v, text] of [
      ["..v1", "a: 1\n"],
      ["..v2", "a: 2\n"],
    ] as const) {
      mkdirSync(join(dir, v));
      writeFileSync(join(dir, v, "bind.yaml"), text);
    }
    symlinkSync("..v1", join(dir, "..data"));
    symlinkSync("..data/bind.yaml", join(dir, "bind.yaml"));
    let n = 0;
    cleanups.push(watchConfigFile(join(dir, "bind.yaml"), () => n++, DEBOUNCE));

    symlinkSync("..v2", join(dir, "..data_tmp"));
    renameSync(join(dir, "..data_tmp"), join(dir, "..data"));
    await settle();
    expect(n).toBe(1);
  });
});
