/**
 * `scrapez status` against a real `scrapez proxy` (over the in-memory overlay stand-in): the table plain when piped
 * and coloured on a TTY, exit codes (0 nothing failing, 1 failing, 2 usage, 3 proxy unreachable or refusing), and
 * peer-controlled names that cannot smuggle terminal escapes. test/integration/status.test.ts runs the real CLI
 * process against the real overlay.
 */
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runStatus, type StatusIo } from "../../src/cli/status.js";
import { StandInOverlay, Upstream, request, startProxy, testDir, type Running } from "../harness/proxy-standin.js";

const td = testDir();
const overlay = new StandInOverlay("prometheus-central");
const ESC_NAME = "esc\x1b]0;pwned\x07name";
let up: Upstream;
let p: Running;
const token = "cli-t0ken";
let tokenFile: string;

function io(isTTY: boolean, env: NodeJS.ProcessEnv = {}) {
  const out: string[] = [];
  const err: string[] = [];
  const o: StatusIo = {
    stdout: { write: (s: string) => out.push(s) },
    stderr: { write: (s: string) => err.push(s) },
    isTTY,
    columns: isTTY ? 200 : undefined,
    env,
  };
  return { o, out: () => out.join(""), err: () => err.join("") };
}

beforeAll(async () => {
  up = await new Upstream((req, res) => {
    if ((req.url ?? "").startsWith("/down")) {
      res.writeHead(502, { "content-type": "text/plain" });
      return void res.end(
        `scrapez bind: service "down": upstream http://127.0.0.1:9 refused the connection (ECONNREFUSED)\n`,
      );
    }
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("up 1\n");
  }).start();
  overlay.add("node", { port: up.port, attrs: ["node"] });
  overlay.add("down", { port: up.port });
  overlay.add("idle", { port: up.port });
  overlay.add(ESC_NAME, { port: up.port });
  tokenFile = td.file("token", `${token}\n`);
  p = await startProxy(td.dir, [overlay], { auth: { bearerTokenFile: tokenFile } });
  const h = { authorization: `Bearer ${token}` };
  expect((await request(p.port, "http://node/metrics", { headers: h })).status).toBe(200);
  expect((await request(p.port, "http://down/down", { headers: h })).status).toBe(502);
});

afterAll(async () => {
  await p?.close();
  await up?.close();
  td.remove();
});

const proxyArgs = () => ["--proxy", `http://127.0.0.1:${p.port}`, "--token-file", tokenFile];

describe("scrapez status", () => {
  it("piped: a plain table (no escape codes), failing first, and exit 1 because a target is failing", async () => {
    const t = io(false);
    expect(await runStatus(proxyArgs(), t.o)).toBe(1);
    const text = t.out();
    expect(text).not.toContain("\x1b");
    const lines = text.split("\n");
    expect(lines[0]).toMatch(/^identity prometheus-central {2}controller - {2}routers: none connected yet$/);
    expect(lines[1]).toMatch(/^service list refreshed \d+ s ago$/);
    expect(lines[2]).toBe("4 targets: 1 failing, 1 ok, 2 never scraped");
    const header = lines.findIndex((l) => l.startsWith("STATE"));
    expect(lines[header]).toMatch(/^STATE +SERVICE +REPLICA +LAST +STATUS +P50 +P99 +SIZE +SCRAPED BY +ERROR$/);
    const rows = lines.slice(header + 1).filter(Boolean);
    expect(rows.map((r) => r.split(/\s+/)[0])).toEqual(["failing", "ok", "never", "never"]);
    expect(rows[0]).toMatch(/^failing +down +- +\d+ s ago +502 .* bearer +scrapez bind: service "down": upstream/);
    expect(rows[1]).toMatch(/^ok +node +- +\d+ s ago +200 .* 5 B +bearer$/);
  });

  it("a peer-controlled name cannot write terminal escapes", async () => {
    const t = io(true);
    await runStatus(proxyArgs(), t.o);
    expect(t.out()).not.toContain("\x1b]0;");
    expect(t.out()).not.toContain("\x07");
    expect(t.out()).toContain("esc ]0;pwned name");
  });

  it("on a TTY: coloured states (and NO_COLOR turns colour off)", async () => {
    const t = io(true);
    expect(await runStatus(proxyArgs(), t.o)).toBe(1);
    expect(t.out()).toContain("\x1b[31mfailing");
    expect(t.out()).toContain("\x1b[32mok");
    const n = io(true, { NO_COLOR: "1" });
    await runStatus(proxyArgs(), n.o);
    expect(n.out()).not.toContain("\x1b[");
  });

  it("exit 0 when no matching target is failing (--filter, --state), and --json prints the document", async () => {
    const ok = io(false);
    expect(await runStatus([...proxyArgs(), "--filter", "node"], ok.o)).toBe(0);
    expect(ok.out()).toMatch(/showing 1 of 1 matching/);
    const never = io(false);
    expect(await runStatus([...proxyArgs(), "--state", "never"], never.o)).toBe(0);
    const j = io(false);
    expect(await runStatus([...proxyArgs(), "--json", "--state", "failing,ok"], j.o)).toBe(1);
    const doc = JSON.parse(j.out()) as { targets: { service: string; state: string }[] };
    expect(doc.targets.map((r) => [r.service, r.state])).toEqual([
      ["down", "failing"],
      ["node", "ok"],
    ]);
  });

  it("exit 2 on usage errors, with the reason and the help", async () => {
    const cases: [string[], RegExp][] = [
      [["--bogus"], /Unknown option '--bogus'/],
      [["--state", "sad"], /--state "sad": expected failing, ok or never/],
      [["--proxy", "ftp://x"], /--proxy must be http:\/\/ or https:\/\//],
      [["--token-file", "/nonexistent/token"], /--token-file: cannot read \/nonexistent\/token/],
      [["--cert-file", tokenFile], /give both --cert-file and --key-file/],
      [["--timeout", "0"], /--timeout must be/],
    ];
    for (const [argv, re] of cases) {
      const t = io(false);
      expect(await runStatus(argv, t.o)).toBe(2);
      expect(t.err()).toMatch(re);
      expect(t.err()).toContain("Usage: scrapez status");
    }
    const h = io(false);
    expect(await runStatus(["--help"], h.o)).toBe(0);
    expect(h.out()).toContain("Exit status:");
  });

  it("exit 3 with a clear error when the proxy is unreachable, refuses the credentials, or is not a proxy", async () => {
    const port = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, "127.0.0.1", () => {
        const a = s.address() as net.AddressInfo;
        s.close(() => resolve(a.port));
      });
    });
    const gone = io(false);
    expect(await runStatus(["--proxy", `127.0.0.1:${port}`], gone.o)).toBe(3);
    expect(gone.err()).toBe(
      `scrapez status: cannot get the status from http://127.0.0.1:${port}: connection refused: is scrapez proxy running there? (--proxy URL)\n`,
    );
    const noAuth = io(false);
    expect(await runStatus(["--proxy", `http://127.0.0.1:${p.port}`], noAuth.o)).toBe(3);
    expect(noAuth.err()).toMatch(/the proxy refused our credentials \(HTTP 401\): give --token-file/);
    const wrong = io(false);
    expect(await runStatus(["--proxy", `http://x:wrong@127.0.0.1:${p.port}`], wrong.o)).toBe(3);
    expect(wrong.err()).toMatch(/HTTP 401/);
    const notProxy = io(false);
    expect(await runStatus(["--proxy", `http://127.0.0.1:${up.port}`], notProxy.o)).toBe(3);
    expect(notProxy.err()).toMatch(/not scrapez's status JSON .*is it a scrapez proxy\?/);
  });
});
