import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError } from "../../src/common/config/errors.js";
import { pathResolver, readConfigFile } from "../../src/common/config/load.js";
import { answerPlain, oneLineBody, rawAnswer } from "../../src/common/answer.js";
import { RESERVE_SHARE, scrapeDeadlineMs } from "../../src/common/deadline.js";
import { mapBounded } from "../../src/common/bounded.js";

describe("scrapeDeadlineMs: one rule for both hops", () => {
  it.each([
    // header, fallback s, share, max s, ms
    ["10", 3, RESERVE_SHARE.proxy, 600, 9_500],
    ["1", 3, RESERVE_SHARE.proxy, 600, 900],
    ["1", 3, RESERVE_SHARE.bind, 600, 500],
    ["0.5", 3, RESERVE_SHARE.bind, 600, 250],
    ["25", 10, RESERVE_SHARE.bind, 60, 24_500],
    ["1e9", 10, RESERVE_SHARE.bind, 60, 59_500],
    [undefined, 3, RESERVE_SHARE.proxy, 600, 3_000],
    ["junk", 3, RESERVE_SHARE.bind, 600, 3_000],
    ["-1", 7, RESERVE_SHARE.bind, 5, 5_000],
    [["2", "9"], 3, RESERVE_SHARE.proxy, 600, 1_800],
  ] as const)("header %j, fallback %d s, share %d, max %d s -> %d ms", (h, fallback, share, max, want) => {
    expect(scrapeDeadlineMs(h as string | string[] | undefined, fallback, share, max)).toBe(want);
  });

  it("the bind stops before the proxy, so the bind's 504 reaches the proxy in time", () => {
    for (const h of ["0.2", "1", "2", "4.9", "10", "60"]) {
      expect(scrapeDeadlineMs(h, 1, RESERVE_SHARE.bind)).toBeLessThanOrEqual(
        scrapeDeadlineMs(h, 1, RESERVE_SHARE.proxy),
      );
    }
  });
});

describe("the one-line plain-text answer", () => {
  it("folds the text onto one line", () => {
    expect(oneLineBody("  a\n b\t\tc  ")).toBe("a b c\n");
  });

  it("raw form: a complete HTTP/1.1 answer that closes the connection", () => {
    const raw = rawAnswer(408, "scrapez bind: too slow\nreally", { "x-extra": "1" });
    const [head, body] = raw.split("\r\n\r\n");
    expect(head!.split("\r\n")).toEqual([
      "HTTP/1.1 408 Request Timeout",
      "connection: close",
      "content-type: text/plain; charset=utf-8",
      `content-length: ${Buffer.byteLength("scrapez bind: too slow really\n")}`,
      "x-extra: 1",
    ]);
    expect(body).toBe("scrapez bind: too slow really\n");
  });

  it("response form: drops headers set before (except those kept), adds ours; cuts an answer already begun", async () => {
    const server = http.createServer((req, res) => {
      res.setHeader("x-upstream", "leak");
      res.setHeader("allow", "GET");
      if (req.url === "/begun") {
        res.writeHead(200);
        res.write("partial");
      }
      answerPlain(res, 405, "scrapez bind: no", { "x-ours": "1" }, ["allow"]);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const { port } = server.address() as AddressInfo;
    try {
      const r = await fetch(`http://127.0.0.1:${port}/`);
      expect(r.status).toBe(405);
      expect(r.headers.get("x-upstream")).toBeNull();
      expect(r.headers.get("allow")).toBe("GET");
      expect(r.headers.get("x-ours")).toBe("1");
      expect(await r.text()).toBe("scrapez bind: no\n");
      await expect(fetch(`http://127.0.0.1:${port}/begun`).then((x) => x.text())).rejects.toThrow();
    } finally {
      server.close();
    }
  });
});

describe("the one config file loader", () => {
  const dir = mkdtempSync(join(tmpdir(), "scrapez-load-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("reads and parses YAML, and hands back the directory relative paths resolve against", () => {
    writeFileSync(join(dir, "ok.yaml"), "a: 1\nb: [x]\n");
    expect(readConfigFile(join(dir, "ok.yaml"))).toEqual({ raw: { a: 1, b: ["x"] }, baseDir: dir });
  });

  it.each([
    ["missing.yaml", undefined, /^cannot read config .*missing\.yaml: ENOENT/],
    ["bad.yaml", "a: [1\n", /^.*bad\.yaml is not valid YAML: /],
  ])("%s: a ConfigError naming the file", (name, text, message) => {
    if (text !== undefined) writeFileSync(join(dir, name), text);
    expect(() => readConfigFile(join(dir, name))).toThrow(ConfigError);
    expect(() => readConfigFile(join(dir, name))).toThrow(message);
  });

  it("resolves relative paths against the config's directory and names the field of a missing file", () => {
    writeFileSync(join(dir, "id.json"), "{}");
    const fail = (issue: string): never => {
      throw new Error(issue);
    };
    const r = pathResolver(dir, true, fail);
    expect(r.file("identity", "id.json")).toBe(join(dir, "id.json"));
    expect(r.abs("/etc/x")).toBe("/etc/x");
    expect(() => r.file("tls.key", "nope.pem", "create it")).toThrow(
      `tls.key: file ${join(dir, "nope.pem")} does not exist (create it)`,
    );
    expect(pathResolver(dir, false, fail).file("tls.key", "nope.pem")).toBe(join(dir, "nope.pem"));
  });
});

describe("mapBounded", () => {
  it.each([
    [0, 3],
    [1, 3],
    [5, 1],
    [20, 8],
    [3, 100],
  ])("%i items, at most %i at once: every result in order, never more in flight", async (n, limit) => {
    let inFlight = 0;
    let peak = 0;
    const items = Array.from({ length: n }, (_, i) => i);
    const out = await mapBounded(items, limit, async (i) => {
      peak = Math.max(peak, ++inFlight);
      await new Promise((r) => setTimeout(r, (i * 7) % 5)); // finish out of order
      inFlight--;
      return i * 10;
    });
    expect(out).toEqual(items.map((i) => i * 10));
    expect(peak).toBe(Math.min(limit, n));
  });

  it("rejects with the first failure", async () => {
    await expect(
      mapBounded([1, 2, 3], 2, async (i) => {
        if (i === 2) throw new Error("two");
        return i;
      }),
    ).rejects.toThrow("two");
  });
});
