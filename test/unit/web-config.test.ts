/**
 * The proxy's exporter-toolkit web config (--web.config.file): the format's fields and the errors that name them,
 * bcrypt basic_auth_users with the toolkit's result cache, response headers, the file re-read while running (a
 * change picked up, an invalid one failing requests until fixed), TLS from the file with client_auth_type and
 * client_allowed_sans in real handshakes, cipher suites and versions as Go names them, and POST /-/reload.
 * The real Prometheus through the real overlay is test/integration/web-config.test.ts.
 */
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import https from "node:https";
import { join } from "node:path";
import tls from "node:tls";
import bcrypt from "bcryptjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BcryptCache, BcryptWorker } from "../../src/proxy/bcrypt.js";
import { loadWebConfig, parseWebConfig, WebConfigFile } from "../../src/proxy/web-config.js";
import { certSans, sansAllowed } from "../../src/proxy/web-config-tls.js";
import { Authenticator, WebUsersScheme } from "../../src/proxy/auth.js";
import { issueLeaf } from "../harness/pki.js";
import {
  StandInOverlay,
  Upstream,
  makePki,
  request,
  startProxy,
  testDir,
  type Running,
} from "../harness/proxy-standin.js";

const td = testDir();
const HASH = bcrypt.hashSync("s3cret", 4); // cost 4: the lowest bcrypt allows, so the tests stay quick
const basic = (user: string, pw: string) => `Basic ${Buffer.from(`${user}:${pw}`).toString("base64")}`;
/** exporter-toolkit's own example hash ($2y$, as htpasswd -B makes): bcrypt of "fakepassword", cost 10. */
const TOOLKIT_HASH = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";
let pki: Record<string, string>;

/** A client certificate from the test CA with the given SAN extension (e.g. "DNS:prometheus.monitoring"). */
function clientWithSans(name: string, san: string): { cert: Buffer; key: Buffer } {
  const leaf = issueLeaf(td.dir, name, "ca", { san });
  return { cert: readFileSync(leaf.crt), key: readFileSync(leaf.key) };
}

/** Writes a file by renaming a new one over it (what an editor or a Kubernetes Secret update does). */
function replace(path: string, text: string): void {
  writeFileSync(`${path}.new`, text);
  renameSync(`${path}.new`, path);
}

beforeAll(() => {
  pki = makePki(join(td.dir));
});
afterAll(() => td.remove());

function parse(yaml: string): ReturnType<typeof loadWebConfig> {
  return loadWebConfig(td.file(`web-${Math.random().toString(36).slice(2)}.yml`, yaml));
}

describe("the web config file's format", () => {
  it("reads every exporter-toolkit field it supports: TLS files relative to the web config, users, headers", () => {
    const c = parse(
      [
        "tls_server_config:",
        "  cert_file: server.crt",
        "  key_file: server.key",
        "  client_auth_type: RequireAndVerifyClientCert",
        "  client_ca_file: ca.crt",
        "  client_allowed_sans: [prometheus.monitoring]",
        "  min_version: TLS12",
        "  max_version: TLS13",
        "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]",
        "  curve_preferences: [CurveP256, X25519]",
        "  prefer_server_cipher_suites: true",
        "http_server_config:",
        "  http2: true",
        "  headers:",
        "    X-Frame-Options: deny",
        "    Strict-Transport-Security: max-age=31536000",
        "basic_auth_users:",
        `  prometheus: '${HASH}'`,
        `  toolkit: '${TOOLKIT_HASH}'`,
      ].join("\n"),
    );
    expect(c.tls?.clientAuth).toBe("RequireAndVerifyClientCert");
    expect(c.tls?.requestCert).toBe(true);
    expect(c.tls?.rejectUnauthorized).toBe(true);
    expect(c.tls?.allowedSans).toEqual(["prometheus.monitoring"]);
    expect(c.tls?.files).toEqual([pki["server.crt"], pki["server.key"], pki["ca.crt"]]);
    expect(c.tls?.secure).toMatchObject({
      minVersion: "TLSv1.2",
      maxVersion: "TLSv1.3",
      ecdhCurve: "P-256:X25519",
      honorCipherOrder: true,
    });
    // The TLS 1.2 suite in OpenSSL's name; TLS 1.3 keeps its suites, as in Go.
    expect(c.tls?.secure.ciphers).toMatch(/ECDHE-ECDSA-AES128-GCM-SHA256/);
    expect(c.tls?.secure.ciphers).toMatch(/TLS_AES_256_GCM_SHA384/);
    expect(c.headers).toEqual({ "X-Frame-Options": "deny", "Strict-Transport-Security": "max-age=31536000" });
    expect([...c.users.keys()]).toEqual(["prometheus", "toolkit"]);
  });

  it("an empty file, or one without tls_server_config, is plain HTTP without users (as the toolkit)", () => {
    for (const text of ["", "{}\n", "http_server_config:\n  http2: false\n", "basic_auth_users:\n"]) {
      const c = parse(text);
      expect(c.tls).toBeUndefined();
      expect(c.users.size).toBe(0);
    }
  });

  it.each([
    ["tls_server_config:\n  cert_fle: x\n", /tls_server_config: Unrecognized key: "cert_fle"/],
    ["basic_auth_users:\n  prom: plaintext\n", /basic_auth_users\.prom: not a bcrypt hash/],
    [
      "http_server_config:\n  headers:\n    Server: scrapez\n",
      /http_server_config\.headers\.Server: this header can not be configured/,
    ],
    [
      "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
      /http_server_config\.headers\.X-Frame-Options: expected one of deny, sameorigin/,
    ],
    ["rate_limit:\n  interval: 1s\n", /rate_limit: not supported by scrapez proxy/],
    ["tls_server_config:\n  cert_file: server.crt\n", /tls_server_config\.key_file: missing/],
    [
      "tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n",
      /tls_server_config\.cert_file: cannot read .*nope\.crt: ENOENT/,
    ],
    [
      "tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n",
      /tls_server_config: cannot use the certificate, key/,
    ],
    [
      "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_ca_file: ca.crt\n",
      /tls_server_config\.client_ca_file: set, but client_auth_type is NoClientCert/,
    ],
    [
      "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n",
      /tls_server_config\.client_ca_file: missing/,
    ],
    [
      "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAnyClientCert\n  client_allowed_sans: [a]\n",
      /tls_server_config\.client_allowed_sans: needs a verified client certificate/,
    ],
    [
      "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: Sometimes\n",
      /tls_server_config\.client_auth_type: Invalid option/,
    ],
    [
      "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
      /tls_server_config\.cipher_suites\[0\]: TLS_RSA_WITH_RC4_128_SHA is not a cipher suite Node's TLS offers/,
    ],
    [
      "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  curve_preferences: [X25519MLKEM768]\n",
      /tls_server_config\.curve_preferences\[0\]: X25519MLKEM768 is not supported/,
    ],
    [
      "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS13\n  max_version: TLS12\n",
      /tls_server_config\.max_version: TLS12 is below min_version/,
    ],
    [
      "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: SSL3\n",
      /tls_server_config\.min_version: Invalid option/,
    ],
  ])("refuses %j naming the field", (text, message) => {
    expect(() => parse(text)).toThrow(message);
  });

  it("says which file is not YAML", () => {
    expect(() => parse("basic_auth_users: [\n")).toThrow(/web config .*\.yml is not valid YAML/);
  });
});

describe("bcrypt users and the toolkit's cache", () => {
  const users = new Map([["prometheus", HASH]]);

  it("checks the password against the hash; $2y$ hashes (htpasswd, the toolkit's docs) work too", async () => {
    const cache = new BcryptCache();
    expect(await cache.check(users, "prometheus", "s3cret")).toBe(true);
    expect(await cache.check(users, "prometheus", "wrong")).toBe(false);
    expect(await cache.check(users, "nobody", "s3cret")).toBe(false);
    expect(await cache.check(new Map([["t", TOOLKIT_HASH]]), "t", "fakepassword")).toBe(true);
  });

  it("pays bcrypt once per user and password: repeats, and requests at the same time, are answered from the cache", async () => {
    const cache = new BcryptCache();
    await Promise.all([1, 2, 3].map(() => cache.check(users, "prometheus", "s3cret")));
    expect(cache.computed).toBe(1);
    for (let i = 0; i < 10; i++) expect(cache.cached(users, "prometheus", "s3cret")).toBe(true);
    for (let i = 0; i < 10; i++) expect(await cache.check(users, "prometheus", "s3cret")).toBe(true);
    expect(cache.computed).toBe(1);
    // A new hash for the same user (the file changed) is not answered from the old entry.
    const rotated = new Map([["prometheus", bcrypt.hashSync("n3w", 4)]]);
    expect(cache.cached(rotated, "prometheus", "s3cret")).toBeUndefined();
    expect(await cache.check(rotated, "prometheus", "s3cret")).toBe(false);
    expect(cache.computed).toBe(2);
  });

  it("runs bcrypt in a worker thread: the event loop keeps turning while distinct wrong passwords are checked", async () => {
    // Cost 10, the toolkit's own hash: on the main thread (bcryptjs's async form, sliced with process.nextTick) these
    // held the event loop, and a timer could not fire until they were done.
    const cache = new BcryptCache({ worker: new BcryptWorker() });
    const toolkit = new Map([["t", TOOLKIT_HASH]]);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const seen: number[] = [];
    try {
      const results = await Promise.all(
        Array.from({ length: 6 }, (_, i) =>
          cache.check(toolkit, "t", `wrong-${i}`).then((ok) => {
            seen.push(ticks);
            return ok;
          }),
        ),
      );
      expect(results).toEqual([false, false, false, false, false, false]);
    } finally {
      clearInterval(timer);
    }
    expect(cache.computed).toBe(6);
    // The timer kept firing while the comparisons ran (they run one after another in the worker): at least once for
    // each answer after the first. On the main thread the same six let it fire once between first and last.
    expect(seen[0]!).toBeGreaterThan(0);
    expect(seen[5]! - seen[0]!).toBeGreaterThanOrEqual(5);
  });

  it("refuses a check when 64 (here 2) are already waiting, rather than queueing it; a refusal is not cached", async () => {
    const warnings: [string, Record<string, unknown> | undefined][] = [];
    const cache = new BcryptCache({
      worker: new BcryptWorker(),
      maxPending: 2,
      log: { warn: (msg, fields) => void warnings.push([msg, fields]) },
    });
    const checks = Array.from({ length: 6 }, (_, i) => cache.check(users, "prometheus", `guess-${i}`));
    expect(cache.pending).toBe(2);
    expect(cache.refused).toBe(4);
    // The same credentials as one already waiting share its comparison: not refused, not one more in the queue.
    const same = cache.check(users, "prometheus", "guess-0");
    expect(cache.pending).toBe(2);
    expect(await Promise.all([...checks, same])).toEqual([false, false, false, false, false, false, false]);
    expect(cache.computed).toBe(2);
    expect(cache.cached(users, "prometheus", "guess-1")).toBe(false);
    expect(cache.cached(users, "prometheus", "guess-5")).toBeUndefined();
    // One warning for the burst (rate-limited), with counts and never a password.
    expect(warnings).toHaveLength(1);
    expect(JSON.stringify(warnings)).not.toMatch(/guess/);
    // With room again, the right password passes.
    expect(await cache.check(users, "prometheus", "s3cret")).toBe(true);
    expect(cache.pending).toBe(0);
  });

  it("starts the worker again after it dies; the checks it was running are refused, not answered", async () => {
    const worker = new BcryptWorker();
    const cache = new BcryptCache({ worker });
    expect(await cache.check(users, "prometheus", "s3cret")).toBe(true);
    const running = cache.check(new Map([["t", TOOLKIT_HASH]]), "t", "dies");
    await worker.terminate();
    expect(await running).toBe(false);
    expect(cache.refused).toBe(1);
    expect(cache.cached(new Map([["t", TOOLKIT_HASH]]), "t", "dies")).toBeUndefined();
    expect(await cache.check(users, "prometheus", "wrong")).toBe(false);
    expect(worker.started).toBe(2);
  });

  it("WebUsersScheme never runs bcrypt in verify(): a request's warmed answers outlive the cache; unwarmed is refused", async () => {
    const scheme = new WebUsersScheme(
      new WebConfigFile(td.file("scheme.yml", `basic_auth_users:\n  prometheus: '${HASH}'\n`)),
    );
    const auth = new Authenticator([scheme]);
    const good = { authorization: basic("prometheus", "s3cret") };
    // Not warmed and not cached: refused, and no comparison ran.
    expect(auth.check({ ...good })).toEqual({ ok: false });
    expect(scheme.cache.computed).toBe(0);
    await scheme.warm(good);
    // Other clients' wrong passwords fill the cache past 100 entries: the entry may be evicted, the request's answer
    // (with its headers) is not.
    for (let i = 0; i < 150; i++) await scheme.cache.check(new Map([["prometheus", HASH]]), "prometheus", `x${i}`);
    expect(auth.check(good)).toEqual({ ok: true, header: "authorization", principal: "basic:prometheus" });
    expect(auth.credentialHeaders(good)).toEqual(["authorization"]);
    const bad = { authorization: basic("prometheus", "nope") };
    await scheme.warm(bad);
    expect(auth.check(bad)).toEqual({ ok: false });
  });

  it("keeps at most 100 results", () => {
    const cache = new BcryptCache();
    for (let i = 0; i < 150; i++) cache.set(BcryptCache.key("u", HASH, String(i)), false);
    let kept = 0;
    for (let i = 0; i < 150; i++) if (cache.get(BcryptCache.key("u", HASH, String(i))) !== undefined) kept++;
    expect(kept).toBe(100);
  });
});

describe("client certificate SANs as the toolkit compares them", () => {
  it("reads DNS, IP, URI and e-mail SANs from Node's subjectaltname", () => {
    expect(certSans('DNS:a.example, IP Address:10.0.0.1, URI:spiffe://x/y, email:m@x.org, DNS:"b,c"')).toEqual([
      "a.example",
      "10.0.0.1",
      "spiffe://x/y",
      "m@x.org",
      "b,c",
    ]);
    expect(sansAllowed("DNS:a.example", ["a.example"])).toBe(true);
    expect(sansAllowed("DNS:a.example.evil", ["a.example"])).toBe(false);
    expect(sansAllowed(undefined, ["a.example"])).toBe(false);
  });
});

describe("the file re-read while running", () => {
  it("stats on each look, parses again only after a change, and reports each new outcome once", () => {
    const f = td.file("reread.yml", `basic_auth_users:\n  a: '${HASH}'\n`);
    const seen: string[] = [];
    const w = new WebConfigFile(
      f,
      () => undefined,
      (s) => seen.push(s.ok ? `ok:${[...s.config.users.keys()]}` : "bad"),
    );
    const g = w.current().generation;
    expect(w.current().generation).toBe(g); // unchanged: not parsed again
    replace(f, `basic_auth_users:\n  b: '${HASH}'\n`);
    expect(w.current()).toMatchObject({ ok: true });
    replace(f, "basic_auth_users:\n  b: nohash\n");
    expect(w.current().ok).toBe(false);
    expect(w.current().ok).toBe(false);
    replace(f, `basic_auth_users:\n  c: '${HASH}'\n`);
    expect(w.current().ok).toBe(true);
    expect(seen).toEqual(["ok:b", "bad", "ok:c"]);
  });

  it("refuses at start a file that is invalid", () => {
    const f = td.file("bad-start.yml", "basic_auth_users:\n  a: x\n");
    expect(() => new WebConfigFile(f)).toThrow(/basic_auth_users\.a: not a bcrypt hash/);
  });
});

describe("the proxy's listener with a web config", () => {
  const overlay = new StandInOverlay();
  let app: Upstream;
  const running: Running[] = [];
  const start = async (raw: Record<string, unknown>) => {
    const r = await startProxy(td.dir, [overlay], raw);
    running.push(r);
    return r;
  };
  beforeAll(async () => {
    app = await new Upstream((_q, r) => r.end("ok\n")).start();
    overlay.add("app", { port: app.port });
  });
  afterAll(async () => {
    for (const r of running) await r.close();
    await app.close();
  });

  it("basic_auth_users guard every endpoint; the headers are on every answer; a changed file applies to the next request", async () => {
    const f = td.file(
      "users.yml",
      `basic_auth_users:\n  prometheus: '${HASH}'\nhttp_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n`,
    );
    const p = await start({ webConfigFile: f });
    const denied = await request(p.port, "http://app/metrics");
    expect(denied.status).toBe(401);
    expect(denied.headers["www-authenticate"]).toMatch(/^Basic/);
    expect(denied.headers["x-content-type-options"]).toBe("nosniff");
    const ok = await request(p.port, "http://app/metrics", {
      headers: { "proxy-authorization": basic("prometheus", "s3cret") },
    });
    expect([ok.status, ok.text, ok.headers["x-content-type-options"]]).toEqual([200, "ok\n", "nosniff"]);
    expect((await request(p.port, "/sd", { headers: { authorization: basic("prometheus", "wrong") } })).status).toBe(
      401,
    );
    // The password changes in the file: the old one is refused on the next request, the new one accepted.
    replace(f, `basic_auth_users:\n  prometheus: '${bcrypt.hashSync("n3w", 4)}'\n`);
    expect((await request(p.port, "/sd", { headers: { authorization: basic("prometheus", "s3cret") } })).status).toBe(
      401,
    );
    const now = await request(p.port, "/sd", { headers: { authorization: basic("prometheus", "n3w") } });
    expect(now.status).toBe(200);
    expect(now.headers["x-content-type-options"]).toBeUndefined();
    // No users left: open again (loopback listener), as in the toolkit.
    replace(f, "{}\n");
    expect((await request(p.port, "/sd")).status).toBe(200);
  });

  it("a file that turns invalid fails every request with 500 (the old users are not kept) until it is fixed", async () => {
    const f = td.file("breaks.yml", `basic_auth_users:\n  prometheus: '${HASH}'\n`);
    const p = await start({ webConfigFile: f });
    const auth = { authorization: basic("prometheus", "s3cret") };
    expect((await request(p.port, "/sd", { headers: auth })).status).toBe(200);
    replace(f, "basic_auth_users:\n  prometheus: not-a-hash\n");
    const bad = await request(p.port, "/sd", { headers: auth });
    expect(bad.status).toBe(500);
    expect(bad.text).toMatch(/web config \(--web\.config\.file\) is invalid/);
    expect(bad.text).not.toMatch(/prometheus/); // the reason is in the log, not told to whoever asks
    expect(
      p.logs.find((l) => l.msg === "web config is invalid: requests are refused (500) until it is fixed")?.reason,
    ).toMatch(/basic_auth_users\.prometheus: not a bcrypt hash/);
    replace(f, `basic_auth_users:\n  prometheus: '${HASH}'\n`);
    expect((await request(p.port, "/sd", { headers: auth })).status).toBe(200);
  });

  it("a non-loopback listener needs users or verified client certificates in the web config", async () => {
    const f = td.file("open.yml", "{}\n");
    await expect(start({ webConfigFile: f, listen: "0.0.0.0:0" })).rejects.toThrow(
      /listen 0\.0\.0\.0:0 is not a loopback address, so auth is required: add basic_auth_users/,
    );
  });

  it("POST /-/reload: 405 for GET, 403 without --web.enable-lifecycle, else the reload's outcome", async () => {
    const off = await start({});
    expect((await request(off.port, "/-/reload", { method: "GET" })).status).toBe(405);
    const refused = await request(off.port, "/-/reload", { method: "POST" });
    expect([refused.status, refused.text]).toEqual([403, expect.stringMatching(/Lifecycle API is not enabled/)]);
    const on = await start({ enableLifecycle: true });
    let outcome: { ok: true; changed: string[] } | { ok: false; reason: string } = { ok: true, changed: ["discovery"] };
    on.proxy.setReloader(() => Promise.resolve(outcome));
    const done = await request(on.port, "/-/reload", { method: "POST" });
    expect([done.status, done.text]).toEqual([200, "config reloaded; changed: discovery\n"]);
    outcome = { ok: false, reason: "proxy.yaml is invalid: timeouts.dialSeconds: too big" };
    const failed = await request(on.port, "/-/reload", { method: "PUT" });
    expect([failed.status, failed.text]).toEqual([
      500,
      "failed to reload config: proxy.yaml is invalid: timeouts.dialSeconds: too big\n",
    ]);
  });

  describe("TLS from the web config", () => {
    const get = (port: number, path: string, client: tls.ConnectionOptions = {}) =>
      new Promise<string>((resolve) => {
        https
          .get({ host: "127.0.0.1", port, path, ca: readFileSync(pki["ca.crt"]!), agent: false, ...client }, (res) => {
            let body = "";
            res.on("data", (d: Buffer) => (body += d.toString()));
            res.on("end", () => resolve(`${res.statusCode} ${body}`));
          })
          .on("error", (e: Error & { code?: string }) => resolve(`error ${e.code ?? e.message}`));
      });
    const tlsYaml = (extra: string) =>
      `tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_ca_file: ca.crt\n${extra}`;

    it("client_allowed_sans: a certificate from the CA with an allowed SAN passes, one without is refused", async () => {
      const f = td.file(
        "mtls.yml",
        tlsYaml("  client_auth_type: RequireAndVerifyClientCert\n  client_allowed_sans: [prometheus.monitoring]\n"),
      );
      const p = await start({ webConfigFile: f });
      const allowed = clientWithSans("allowed", "DNS:prometheus.monitoring");
      const other = clientWithSans("other", "DNS:grafana.monitoring");
      expect(await get(p.port, "http://app/metrics", allowed)).toBe("200 ok\n");
      expect(await get(p.port, "http://app/metrics", other)).toMatch(/^error /);
      expect(await get(p.port, "/-/healthy")).toMatch(/^error /);
      expect(
        p.logs.some(
          (l) => l.msg === "TLS client refused" && /include none of client_allowed_sans/.test(String(l.reason)),
        ),
      ).toBe(true);
      // The allowed SANs change in the file: the next handshake uses the new list.
      replace(
        f,
        tlsYaml("  client_auth_type: RequireAndVerifyClientCert\n  client_allowed_sans: [grafana.monitoring]\n"),
      );
      expect(await get(p.port, "http://app/metrics", other)).toBe("200 ok\n");
      expect(await get(p.port, "http://app/metrics", allowed)).toMatch(/^error /);
    });

    it("client_auth_type changes at run time apply to the next handshake; turning TLS off is refused (500s until undone)", async () => {
      const f = td.file("auth-type.yml", tlsYaml("  client_auth_type: RequireAndVerifyClientCert\n"));
      const p = await start({ webConfigFile: f });
      expect(await get(p.port, "/-/healthy")).toMatch(/^error /);
      replace(f, tlsYaml("  client_auth_type: VerifyClientCertIfGiven\n"));
      expect(await get(p.port, "/-/healthy")).toBe("200 scrapez proxy is healthy\n");
      const rogue = { cert: readFileSync(pki["rogue.crt"]!), key: readFileSync(pki["rogue.key"]!) };
      expect(await get(p.port, "/-/healthy", rogue)).toMatch(/^error /);
      replace(f, "{}\n");
      expect(await get(p.port, "/-/healthy")).toMatch(/^error /);
      expect(
        p.logs.find((l) => l.msg === "web config is invalid: requests are refused (500) until it is fixed")?.reason,
      ).toMatch(/turns TLS off: restart scrapez proxy/);
    });

    it("a renewed certificate file is served from the next connection on", async () => {
      const dir = join(td.dir, "renew");
      const first = makePki(dir);
      const f = td.file(
        "renew.yml",
        `tls_server_config:\n  cert_file: renew/server.crt\n  key_file: renew/server.key\n`,
      );
      const p = await start({ webConfigFile: f });
      const serial = () =>
        new Promise<string>((resolve, reject) => {
          const s = tls.connect({ host: "127.0.0.1", port: p.port, rejectUnauthorized: false }, () => {
            resolve(s.getPeerCertificate().serialNumber);
            s.destroy();
          });
          s.on("error", reject);
        });
      const before = await serial();
      // Same CA directory, a new server certificate written over the old files.
      const again = makePki(join(dir, "next"));
      replace(first["server.crt"]!, readFileSync(again["server.crt"]!, "utf8"));
      replace(first["server.key"]!, readFileSync(again["server.key"]!, "utf8"));
      const after = await serial();
      expect(after).not.toBe(before);
      expect(after).toBe(
        new (await import("node:crypto")).X509Certificate(readFileSync(again["server.crt"]!)).serialNumber,
      );
    });

    it("cipher_suites and max_version as Go names them are what the handshake offers", async () => {
      const f = td.file(
        "ciphers.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  max_version: TLS12\n" +
          "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256]\n",
      );
      const p = await start({ webConfigFile: f });
      const got = await new Promise<{ version: string | null; cipher: string }>((resolve, reject) => {
        const s = tls.connect({ host: "127.0.0.1", port: p.port, rejectUnauthorized: false }, () => {
          resolve({ version: s.getProtocol(), cipher: s.getCipher().name });
          s.destroy();
        });
        s.on("error", reject);
      });
      expect(got).toEqual({ version: "TLSv1.2", cipher: "ECDHE-ECDSA-CHACHA20-POLY1305" });
    });
  });
});

it("a parsed config keeps user names and hashes only (parseWebConfig on YAML already read)", () => {
  expect(parseWebConfig({ basic_auth_users: { a: HASH } }, join(td.dir, "x.yml")).users.get("a")).toBe(HASH);
});
