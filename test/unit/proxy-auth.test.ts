/**
 * Credentials and TLS on the proxy's listener: bearer token, basic auth, either header (a stock Prometheus sends the
 * job's `authorization` as Authorization on absolute-form requests, and proxy_url userinfo as Proxy-Authorization),
 * stripping before forwarding, 401/407 challenges, and a TLS listener with client-certificate verification.
 */
import { readFileSync } from "node:fs";
import https from "node:https";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Authenticator, authenticatorFor, parseCredentials } from "../../src/proxy/auth.js";
import { ERROR_HEADER } from "../../src/proxy/request.js";
import {
  StandInOverlay,
  Upstream,
  connect,
  makePki,
  readAll,
  request,
  startProxy,
  testDir,
  type Running,
} from "../harness/proxy-standin.js";

const TOKEN = "s3cret-token";
const PASSWORD = "pa55:word"; // a colon in the password is legal in Basic
const td = testDir();
const tokenFile = td.file("token", `${TOKEN}\n`);
td.file("password", `${PASSWORD}\n`);
const basic = (user: string, pw: string) => `Basic ${Buffer.from(`${user}:${pw}`).toString("base64")}`;
let app: Upstream;
const overlay = new StandInOverlay();
let bearerProxy: Running;
let basicProxy: Running;

beforeAll(async () => {
  app = await new Upstream((_q, r) => r.end("ok\n")).start();
  overlay.add("app", { port: app.port });
  bearerProxy = await startProxy(td.dir, [overlay], { auth: { bearerTokenFile: "token" } });
  basicProxy = await startProxy(td.dir, [overlay], { auth: { basic: { username: "prom", passwordFile: "password" } } });
});

afterAll(async () => {
  await bearerProxy?.close();
  await basicProxy?.close();
  await app?.close();
  td.remove();
});

describe("the authenticator", () => {
  const auth = authenticatorFor({ auth: { bearerTokenFile: tokenFile } });
  it.each([
    [{}, false],
    [{ authorization: `Bearer ${TOKEN}` }, "authorization"],
    [{ authorization: `bearer ${TOKEN}` }, "authorization"],
    [{ "proxy-authorization": `Bearer ${TOKEN}` }, "proxy-authorization"],
    [{ "proxy-authorization": basic("anyone", TOKEN) }, "proxy-authorization"],
    [{ authorization: `Bearer ${TOKEN}x` }, false],
    [{ authorization: `Bearer ${TOKEN.slice(0, -1)}` }, false],
    [{ authorization: "Bearer " }, false],
    [{ authorization: TOKEN }, false],
    [{ authorization: basic("anyone", "wrong") }, false],
    // the exporter's own credentials in Authorization, the proxy's in Proxy-Authorization
    [{ authorization: "Bearer for-exporter", "proxy-authorization": `Bearer ${TOKEN}` }, "proxy-authorization"],
  ])("bearer: %j -> %s", (headers, want) => {
    const r = auth.check(headers);
    expect(r.ok ? r.header : false).toBe(want);
  });

  it("passes everyone when no credentials are configured", () => {
    expect(new Authenticator([]).check({})).toEqual({ ok: true });
    expect(new Authenticator([]).credentialHeaders({ authorization: `Bearer ${TOKEN}` })).toEqual([]);
  });

  it("refuses empty or unreadable secret files, naming the field", () => {
    expect(() => authenticatorFor({ auth: { bearerTokenFile: td.file("empty", "\n") } })).toThrow(
      /auth\.bearerTokenFile: .*empty is empty/,
    );
    expect(() => authenticatorFor({ auth: { basic: { username: "u", passwordFile: `${td.dir}/missing` } } })).toThrow(
      /auth\.basic\.passwordFile: cannot read/,
    );
  });
});

describe("credentials as presented, and which scheme proves whom", () => {
  it.each([
    ["Bearer abc", { scheme: "bearer", token: "abc" }],
    ["  bearer abc  ", { scheme: "bearer", token: "abc" }],
    [basic("prom", "pa:ss"), { scheme: "basic", user: "prom", password: "pa:ss" }],
    [basic("", "tok"), { scheme: "basic", user: "", password: "tok" }],
    [`Basic ${Buffer.from("no-colon").toString("base64")}`, undefined],
    ["Bearer", undefined],
    ["Bearer a b", undefined],
    ["Digest abc", undefined],
    ["abc", undefined],
  ])("%j parses as %j", (header, want) => {
    const p = parseCredentials(header);
    const shown =
      p === undefined
        ? undefined
        : p.scheme === "bearer"
          ? { scheme: p.scheme, token: p.token.toString() }
          : { scheme: p.scheme, user: p.user, password: p.password.toString() };
    expect(shown).toEqual(want);
  });

  // Both configured, and the basic password equal to the token: basic users are tried first.
  const both = authenticatorFor({
    auth: { bearerTokenFile: tokenFile, basic: { username: "prom", passwordFile: td.file("same-as-token", TOKEN) } },
  });
  it.each([
    [{ authorization: basic("prom", TOKEN) }, "basic:prom"],
    [{ authorization: basic("other", TOKEN) }, "bearer:other"],
    [{ authorization: basic("", TOKEN) }, "bearer"],
    [{ authorization: `Bearer ${TOKEN}` }, "bearer"],
    [{ authorization: basic("prom", "nope") }, undefined],
  ])("%j is %s", (headers, principal) => {
    const r = both.check(headers);
    expect(r.ok ? r.principal : undefined).toBe(principal);
  });

  it("sends the bearer challenge when a token is configured, else basic", () => {
    expect(both.challenge).toBe('Bearer realm="scrapez"');
    const basicOnly = authenticatorFor({ auth: { basic: { username: "u", passwordFile: td.file("pw", "x") } } });
    expect(basicOnly.challenge).toBe('Basic realm="scrapez"');
  });

  it("a new scheme plugs in without touching the rest: its principal, its header stripped, others passed", () => {
    const onlyAlice = new Authenticator([
      {
        challenge: 'Basic realm="scrapez"',
        verify: (p) => (p.scheme === "basic" && p.user === "alice" ? "custom:alice" : undefined),
      },
    ]);
    const headers = { "proxy-authorization": basic("alice", "x"), authorization: "Bearer for-exporter" };
    expect(onlyAlice.check(headers)).toEqual({ ok: true, header: "proxy-authorization", principal: "custom:alice" });
    expect(onlyAlice.credentialHeaders(headers)).toEqual(["proxy-authorization"]);
    expect(onlyAlice.check({ authorization: basic("bob", "x") })).toEqual({ ok: false });
  });
});

describe("bearer token on the listener", () => {
  it("401 with WWW-Authenticate when credentials are missing or wrong; nothing is dialed", async () => {
    const dials = overlay.dials.length;
    const attempts: Record<string, string>[] = [
      {},
      { authorization: "Bearer wrong" },
      { "proxy-authorization": "Bearer wrong" },
    ];
    for (const headers of attempts) {
      for (const target of ["http://app/metrics", "/sd", "/metrics", "/scrape/app/metrics"]) {
        const r = await request(bearerProxy.port, target, { headers });
        expect(r.status, `${target} ${JSON.stringify(headers)}`).toBe(401);
        expect(r.headers["www-authenticate"]).toBe('Bearer realm="scrapez"');
        expect(r.headers[ERROR_HEADER]).toBe("unauthenticated");
      }
    }
    expect(overlay.dials.length).toBe(dials);
  });

  it("accepts the token in Authorization (Prometheus's job authorization) and strips it", async () => {
    const r = await request(bearerProxy.port, "http://app/metrics", { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(r.status).toBe(200);
    expect(app.last.headers.authorization).toBeUndefined();
    expect(JSON.stringify(app.last.rawHeaders)).not.toContain(TOKEN);
  });

  it("accepts the token in Proxy-Authorization, forwarding the exporter's own Authorization", async () => {
    const r = await request(bearerProxy.port, "http://app/metrics", {
      headers: { "proxy-authorization": `Bearer ${TOKEN}`, authorization: "Bearer for-exporter" },
    });
    expect(r.status).toBe(200);
    expect(app.last.headers.authorization).toBe("Bearer for-exporter");
    expect(app.last.headers["proxy-authorization"]).toBeUndefined();
  });

  it("accepts proxy_url userinfo (Basic with the token as password), e.g. for CONNECT", async () => {
    const r = await request(bearerProxy.port, "/sd", {
      headers: { "proxy-authorization": basic("prometheus", TOKEN) },
    });
    expect(r.status).toBe(200);
    const c = await connect(bearerProxy.port, "app:80", { "proxy-authorization": basic("prometheus", TOKEN) });
    expect(c.status).toBe(200);
    c.socket.destroy();
  });

  it("CONNECT without credentials: 407 with Proxy-Authenticate", async () => {
    const c = await connect(bearerProxy.port, "app:443");
    expect(c.response).toMatch(/^HTTP\/1\.1 407 Proxy Authentication Required\r\n/);
    expect(c.response).toMatch(/\r\nproxy-authenticate: Bearer realm="scrapez"\r\n/);
    expect(await readAll(c.socket)).toBe("scrapez proxy: authentication required\n");
  });

  it("health endpoints need no credentials (for probes)", async () => {
    expect((await request(bearerProxy.port, "/-/healthy")).status).toBe(200);
    expect((await request(bearerProxy.port, "/-/ready")).status).toBe(200);
  });

  it("never logs the token", () => {
    expect(JSON.stringify(bearerProxy.logs)).not.toContain(TOKEN);
  });
});

describe("basic auth on the listener", () => {
  it.each([
    [basic("prom", PASSWORD), 200],
    [basic("prom", "wrong"), 401],
    [basic("other", PASSWORD), 401],
    [`Bearer ${PASSWORD}`, 401],
  ])("%s -> %i", async (authorization, status) => {
    const r = await request(basicProxy.port, "http://app/metrics", { headers: { authorization } });
    expect(r.status).toBe(status);
    if (status === 401) expect(r.headers["www-authenticate"]).toBe('Basic realm="scrapez"');
    else expect(app.last.headers.authorization).toBeUndefined();
  });
});

describe("TLS listener", () => {
  let pki: Record<string, string>;
  let mtls: Running;
  let plainTls: Running;
  const read = (f: string) => readFileSync(pki[f]!);

  beforeAll(async () => {
    pki = makePki(td.dir);
    mtls = await startProxy(td.dir, [overlay], {
      tls: { cert: pki["server.crt"], key: pki["server.key"], clientCA: pki["ca.crt"] },
    });
    plainTls = await startProxy(td.dir, [overlay], { tls: { cert: pki["server.crt"], key: pki["server.key"] } });
  });
  afterAll(async () => {
    await mtls?.close();
    await plainTls?.close();
  });

  function get(port: number, path: string, client: { cert?: Buffer; key?: Buffer } = {}): Promise<string> {
    return new Promise((resolve) => {
      https
        .get({ host: "127.0.0.1", port, path, ca: read("ca.crt"), agent: false, ...client }, (res) => {
          let body = "";
          res.on("data", (d: Buffer) => (body += d.toString()));
          res.on("end", () => resolve(`${res.statusCode} ${body}`));
        })
        .on("error", (e: Error & { code?: string }) => resolve(`error ${e.code ?? e.message}`));
    });
  }

  it("serves TLS with the configured certificate", async () => {
    expect(await get(plainTls.port, "http://app/metrics")).toBe("200 ok\n");
  });

  it("with a client CA: a client certificate it signed gets through", async () => {
    expect(await get(mtls.port, "http://app/metrics", { cert: read("client.crt"), key: read("client.key") })).toBe(
      "200 ok\n",
    );
    expect(await get(mtls.port, "/sd", { cert: read("client.crt"), key: read("client.key") })).toMatch(/^200 \[/);
  });

  it("with a client CA: no certificate, or one from another CA, is refused in the handshake", async () => {
    expect(await get(mtls.port, "/-/healthy")).toMatch(/^error /);
    expect(await get(mtls.port, "/-/healthy", { cert: read("rogue.crt"), key: read("rogue.key") })).toMatch(/^error /);
  });
});
