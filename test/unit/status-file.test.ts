/**
 * The bind's status file (issue 18, item 9): written 0600 through an unguessable temporary file, never through a
 * symlink; by default in a private 0700 directory of this uid under TMPDIR, which `scrapez probe --config` finds
 * with no other flag and refuses to trust when it is someone else's or open to others.
 */
import {
  chmodSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterAll, afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { defaultStatusFile, ensurePrivateDir, probe, writeStatus, type StatusFile } from "../../src/bind/status.js";
import { command as probeCommand } from "../../src/cli/probe.js";

const root = mkdtempSync(join(tmpdir(), "scrapez-status-file-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const fresh = () => {
  const d = join(root, `d${n++}`);
  mkdirSync(d, { mode: 0o700 });
  return d;
};

const status = (): StatusFile => ({
  pid: process.pid,
  updatedAt: new Date().toISOString(),
  authenticated: true,
  ready: true,
  services: { node: { state: "bound" } },
});

describe("writing the status file", () => {
  it("writes it mode 0600, whatever the umask", () => {
    const file = join(fresh(), "bind.status.json");
    const old = process.umask(0o000);
    try {
      writeStatus(file, status());
    } finally {
      process.umask(old);
    }
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(JSON.parse(readFileSync(file, "utf8"))).toMatchObject({ ready: true });
  });

  it("does not write through a symlink planted at the path or at a temporary name it might use", () => {
    const dir = fresh();
    const file = join(dir, "bind.status.json");
    const victims = [join(root, `victim-${n}-a`), join(root, `victim-${n}-b`)];
    for (const v of victims) writeFileSync(v, "precious\n", { mode: 0o600 });
    symlinkSync(victims[0]!, file);
    // The name the status file was written through before (`<file>.<pid>.tmp`): predictable, so plantable.
    symlinkSync(victims[1]!, `${file}.${process.pid}.tmp`);
    writeStatus(file, status());
    for (const v of victims) expect(readFileSync(v, "utf8")).toBe("precious\n");
    expect(lstatSync(file).isFile()).toBe(true);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    // Nothing is left behind but the planted link.
    expect(readdirSync(dir).sort()).toEqual(["bind.status.json", `bind.status.json.${process.pid}.tmp`]);
  });

  it("a probe does not follow a symlink at the path", () => {
    const dir = fresh();
    const planted = join(dir, "planted.json");
    writeStatus(planted, status()); // a status that says ready
    const file = join(dir, "bind.status.json");
    symlinkSync(planted, file);
    const r = probe(file, "ready");
    expect(r.ok).toBe(false);
    expect(r.detail).toMatch(/is a symlink: not followed/);
    expect(probe(planted, "ready").ok).toBe(true);
  });
});

describe("the default place: a private directory of this uid under TMPDIR", () => {
  let tmp: string;
  const saved = process.env.TMPDIR;
  beforeEach(() => {
    tmp = fresh();
    chmodSync(tmp, 0o1777); // a shared /tmp
    process.env.TMPDIR = tmp;
  });
  afterEach(() => {
    if (saved === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = saved;
  });

  it("is $TMPDIR/scrapez-<uid>/, created 0700 on the first write, and `scrapez probe --ready --config` finds it", async () => {
    const config = join(root, `bind-${n++}.yaml`);
    writeFileSync(join(dirname(config), "id.json"), "{}", { mode: 0o600 });
    writeFileSync(config, "identity: id.json\ntargets: [{ service: node, upstream: 'http://127.0.0.1:9100' }]\n");
    const file = defaultStatusFile(config);
    const dir = join(tmp, `scrapez-${process.getuid!()}`);
    expect(dirname(file)).toBe(dir);
    writeStatus(file, status(), { privateDir: true });
    const st = lstatSync(dir);
    expect(st.isDirectory()).toBe(true);
    expect(st.mode & 0o777).toBe(0o700);
    expect(st.uid).toBe(process.getuid!());
    expect(statSync(file).mode & 0o777).toBe(0o600);

    const out: string[] = [];
    const spy = vi.spyOn(process.stdout, "write").mockImplementation((s) => (out.push(String(s)), true));
    let code: number;
    try {
      code = await probeCommand.run(["--ready", "--config", config]);
    } finally {
      spy.mockRestore();
    }
    expect(out.join("")).toBe("ready: 1 service(s) bound\n");
    expect(code).toBe(0);
  });

  it("refuses a directory at that place that is open to others or a symlink, and the probe does not trust it", () => {
    const dir = join(tmp, `scrapez-${process.getuid!()}`);
    mkdirSync(dir, { mode: 0o777 });
    chmodSync(dir, 0o777); // made by someone else before us, or loosened
    const file = join(dir, "scrapez-bind-x.status.json");
    expect(() => writeStatus(file, status(), { privateDir: true })).toThrow(
      /refusing to keep the status file there: .* has mode 0777, open to others: it must be 0700/,
    );
    writeFileSync(file, JSON.stringify(status())); // what another user could have put there
    const r = probe(file, "ready", Date.now(), { privateDir: true });
    expect(r).toEqual({ ok: false, detail: expect.stringMatching(/not trusted: .* has mode 0777/) });

    rmSync(dir, { recursive: true });
    const elsewhere = fresh();
    symlinkSync(elsewhere, dir);
    expect(() => ensurePrivateDir(dir)).toThrow(/is a symlink, not a directory of this user's own/);
    expect(probe(file, "ready", Date.now(), { privateDir: true }).detail).toMatch(/not trusted: .* is a symlink/);
    expect(readdirSync(elsewhere)).toEqual([]);
  });
});
