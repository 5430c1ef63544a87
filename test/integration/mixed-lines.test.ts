/**
 * Both OpenZiti lines in one scrapez process (issue 19 item 6): a v1.6.3 overlay and a v2.0.3 overlay side by side
 * (OpenZiti 2.0 needs v2 routers with a v2 controller, so each overlay is all one line), a `scrapez bind` on each,
 * and one `scrapez proxy` whose two identities live one on each overlay. The proxy reaches the services of both,
 * unchanged. The binds run with `zitiAuth: legacy`, which is deprecated on 2.0: only the one on v2.0.3 warns.
 */
import http from "node:http";
import type net from "node:net";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { zitiBinOf, type ZitiLineName } from "../harness/binaries.js";
import { Overlay } from "../harness/overlay.js";
import { freePort, waitUntil } from "../harness/ports.js";
import { removeDir, tempDir } from "../harness/process.js";
import { ScrapezProcess } from "../harness/scrapez.js";

const LINES: ZitiLineName[] = ["1.6", "2"];
const dir = tempDir("mixed-lines");
const token = "mixed-lines-token";
const tokenFile = join(dir, "token");
const service = (line: ZitiLineName) => `metrics-${line.replace(".", "-")}`;

interface Side {
  overlay: Overlay;
  exporter: http.Server;
  bind: ScrapezProcess;
  proxyIdentity: string;
}
const sides = new Map<ZitiLineName, Side>();
let proxy: ScrapezProcess;
let proxyPort: number;

/** An exporter whose one sample says which overlay's bind it stands behind. */
async function exporterFor(line: ZitiLineName): Promise<http.Server> {
  const s = http.createServer((_req, res) => {
    res.setHeader("content-type", "text/plain; version=0.0.4");
    res.end(`# TYPE behind_line gauge\nbehind_line{line="${line}"} 1\n`);
  });
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  return s;
}

function viaProxy(target: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get(
        { host: "127.0.0.1", port: proxyPort, path: target, headers: { authorization: `Bearer ${token}` } },
        (res) => {
          let body = "";
          res.setEncoding("utf8");
          res.on("data", (d: string) => (body += d));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
        },
      )
      .on("error", reject);
  });
}

beforeAll(async () => {
  writeFileSync(tokenFile, `${token}\n`);
  const overlays = await Promise.all(LINES.map((l) => Overlay.start({ ziti: zitiBinOf(l) })));
  for (const [i, line] of LINES.entries()) {
    const overlay = overlays[i]!;
    await overlay.service(service(line), { dial: ["#clients"], bind: ["#servers"] });
    const exporter = await exporterFor(line);
    const bind = new ScrapezProcess(`scrapez-bind-${line}`, "bind", {
      identity: await overlay.identity(`bind-${line.replace(".", "-")}`, ["servers"]),
      zitiAuth: "legacy",
      targets: [
        { service: service(line), upstream: `http://127.0.0.1:${(exporter.address() as net.AddressInfo).port}` },
      ],
    });
    sides.set(line, {
      overlay,
      exporter,
      bind: bind.start(),
      proxyIdentity: await overlay.identity(`prometheus-${line.replace(".", "-")}`, ["clients"], dir),
    });
  }
  for (const { bind } of sides.values()) {
    await bind.waitFor(() => bind.logLines().some((l) => l.msg === "service bound"), 60_000, "service bound");
  }
  proxyPort = await freePort();
  proxy = new ScrapezProcess("scrapez-proxy-mixed", "proxy", {
    identities: LINES.map((l) => sides.get(l)!.proxyIdentity),
    listen: `127.0.0.1:${proxyPort}`,
    auth: { bearerTokenFile: tokenFile },
  });
  proxy.start();
  await proxy.waitFor(() => proxy.logLines().some((l) => l.msg === "listening"), 60_000, "proxy listening");
}, 240_000);

afterAll(async () => {
  await proxy?.close();
  for (const s of sides.values()) {
    await s.bind.close();
    s.exporter.close();
    await s.overlay.close();
  }
  removeDir(dir);
});

describe("one scrapez proxy on a v1.6.3 and a v2.0.3 overlay at once", () => {
  it("the overlays are what they say: v1.6 and v2.0 controllers", async () => {
    for (const [line, want] of [
      ["1.6", /^v1\.6\./],
      ["2", /^v2\.0\./],
    ] as const) {
      const { data } = await sides.get(line)!.overlay.api<{ data: { version: string } }>("GET", "version");
      const version = data.version;
      expect(version).toMatch(want);
    }
  });

  it("discovers the services of both overlays and scrapes each through its own overlay's bind", async () => {
    const sd = await waitUntil(
      async () => {
        const r = await viaProxy(`/sd?service=${LINES.map(service).join("&service=")}`);
        const groups = JSON.parse(r.body) as { targets: string[]; labels: Record<string, string> }[];
        return groups.length === 2 ? groups : undefined;
      },
      60_000,
      "both services in /sd",
      () => proxy.logTail(4096),
    );
    // (Each target is the bind's replica, `<bind identity>~<service>`; the service is in its label.)
    expect(Object.fromEntries(sd.map((g) => [g.labels.__meta_ziti_service, g.labels.__meta_ziti_identity]))).toEqual({
      [service("1.6")]: "prometheus-1-6",
      [service("2")]: "prometheus-2",
    });
    for (const line of LINES) {
      const r = await viaProxy(`http://${service(line)}/metrics`);
      expect(r, proxy.logTail(4096)).toEqual({
        status: 200,
        body: `# TYPE behind_line gauge\nbehind_line{line="${line}"} 1\n`,
      });
      const audit = await waitUntil(
        () =>
          sides
            .get(line)!
            .bind.logLines()
            .find((l) => l.msg === "scrape" && l.status === 200),
        15_000,
        `the audit line of the bind on ${line}`,
      );
      expect(audit.claimed).toBe(`prometheus-${line.replace(".", "-")}`);
    }
  });

  it("each identity authenticated with OIDC (auto), against its own controller", () => {
    const authed = proxy.logLines().filter((l) => l.msg === "authenticated");
    expect(authed.map((l) => l.name).sort()).toEqual(["prometheus-1-6", "prometheus-2"]);
    expect(proxy.logLines().filter((l) => String(l.msg).includes("zitiAuth: legacy"))).toEqual([]);
  });

  it("zitiAuth: legacy warns on the v2.0.3 controller (deprecated in 2.0, gone in v3) and not on v1.6.3", async () => {
    const warning = (b: ScrapezProcess) =>
      b.logLines().find((l) => l.level === "warn" && String(l.msg).startsWith("zitiAuth: legacy"));
    const v2 = await waitUntil(() => warning(sides.get("2")!.bind), 15_000, "the legacy warning of the v2 bind");
    expect(v2).toMatchObject({ controllerVersion: expect.stringMatching(/^v2\.0\./) });
    expect(String(v2.msg)).toMatch(/deprecated since OpenZiti 2\.0 and go away in v3; use zitiAuth: auto/);
    expect(warning(sides.get("1.6")!.bind)).toBeUndefined();
    // Both still work with legacy sessions (the scrapes above went through them).
    for (const line of LINES) {
      expect(
        sides
          .get(line)!
          .bind.logLines()
          .some((l) => l.msg === "authenticated"),
      ).toBe(true);
    }
  });
});
