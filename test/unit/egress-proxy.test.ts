/**
 * The egress proxy's CONNECT client (src/ziti/transport/egress-proxy.ts) against scripted proxies on loopback: what
 * it sends, every kind of answer (200 in pieces, 407, 403, 5xx, garbage, an oversized head, silence, a closed
 * port), bytes after the 200 (the tunnel's), and TLS with a client certificate inside the tunnel, for router
 * channels (connectTls) and controller requests (EgressAgent). NO_PROXY and proxy URLs are table-driven.
 */
import { readFileSync } from "node:fs";
import https from "node:https";
import net from "node:net";
import { join } from "node:path";
import tls from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseBindConfig } from "../../src/bind/config.js";
import { parseProxyConfig } from "../../src/proxy/config.js";
import { EgressAgent, httpsExchange } from "../../src/ziti/api/https.js";
import { ErrorCodes, ZitiError } from "../../src/ziti/errors.js";
import {
  NoProxy,
  challengeSchemes,
  egressRoute,
  openTunnel,
  parseConnectAnswer,
  parseProxyUrl,
  type EgressProxy,
} from "../../src/ziti/transport/egress-proxy.js";
import { connectTls } from "../../src/ziti/transport/tls.js";
import { makePki } from "../harness/pki.js";
import { removeDir, tempDir } from "../harness/process.js";

describe("NO_PROXY matching", () => {
  const cases: [list: string, host: string, port: number, exempt: boolean][] = [
    ["", "ctrl.example.com", 443, false],
    ["*", "ctrl.example.com", 443, true],
    ["*", "10.1.2.3", 1280, true],
    ["example.com", "example.com", 443, true],
    ["example.com", "ctrl.example.com", 443, true],
    ["example.com", "CTRL.Example.COM.", 443, true],
    ["example.com", "badexample.com", 443, false],
    ["example.com", "example.com.evil.net", 443, false],
    [".example.com", "ctrl.example.com", 443, true],
    [".example.com", "example.com", 443, true],
    ["*.example.com", "a.b.example.com", 443, true],
    ["example.com:8443", "ctrl.example.com", 8443, true],
    ["example.com:8443", "ctrl.example.com", 443, false],
    ["localhost, .internal ,10.0.0.0/8", "router.internal", 3022, true],
    ["localhost .internal 10.0.0.0/8", "10.200.1.1", 3022, true],
    ["localhost,.internal,10.0.0.0/8", "11.0.0.1", 3022, false],
    ["10.0.0.0/8", "ten.example.com", 443, false],
    ["198.18.0.1", "198.18.0.1", 1280, true],
    ["198.18.0.1", "198.18.0.10", 1280, false],
    ["198.18.0.1:1280", "198.18.0.1", 3022, false],
    ["198.18.0.0/15", "198.19.255.254", 3022, true],
    ["198.18.0.0/15", "198.20.0.1", 3022, false],
    ["::1", "[::1]", 443, true],
    ["[::1]:443", "::1", 443, true],
    ["[::1]:443", "::1", 80, false],
    ["fd00::/8", "fd12:3456::1", 443, true],
    ["fd00::/8", "fe80::1", 443, false],
    ["0:0:0:0:0:0:0:1", "::1", 443, true],
  ];
  it.each(cases)("NO_PROXY=%j, %s:%i -> exempt %s", (list, host, port, exempt) => {
    expect(new NoProxy(list).matches(host, port)).toBe(exempt);
  });
});

describe("proxy URLs", () => {
  const ok: [string, Partial<EgressProxy>][] = [
    ["http://proxy.corp:3128", { host: "proxy.corp", port: 3128, auth: undefined, display: "http://proxy.corp:3128" }],
    ["http://proxy.corp", { host: "proxy.corp", port: 80, display: "http://proxy.corp:80" }],
    ["proxy.corp:8080", { host: "proxy.corp", port: 8080 }],
    ["http://[fd00::5]:3128/", { host: "fd00::5", port: 3128, display: "http://[fd00::5]:3128" }],
    [
      "http://scrape%40corp:p%3Ass@198.18.5.2:3128",
      { host: "198.18.5.2", auth: { user: "scrape@corp", password: "p:ss" }, display: "http://198.18.5.2:3128" },
    ],
  ];
  it.each(ok)("%s", (url, want) => expect(parseProxyUrl(url, "HTTPS_PROXY")).toMatchObject(want));

  const bad: [string, RegExp][] = [
    ["https://user:secret@proxy.corp:3128", /https:\/\/ proxies are not supported.*http:\/\/host:port/],
    ["socks5://proxy.corp:1080", /socks5:\/\/ proxies are not supported/],
    ["http://user:secret@proxy corp:3128", /not a proxy URL/],
    ["http://proxy.corp:99999", /not a proxy URL/],
    ["http://user:sec/secret@proxy.corp:3128", /not a proxy URL/],
    ["http://us%ZZer:secret@proxy.corp:3128", /not valid percent-encoding/],
  ];
  it.each(bad)("%s is refused, naming the setting, never the password", (url, why) => {
    let err: ZitiError | undefined;
    try {
      parseProxyUrl(url, "HTTPS_PROXY");
    } catch (e) {
      err = e as ZitiError;
    }
    expect(err?.code).toBe(ErrorCodes.EGRESS_PROXY_INVALID);
    expect(err?.message).toMatch(/^HTTPS_PROXY: /);
    expect(err?.message).toMatch(why);
    expect(err?.message).not.toContain("secret");
  });
});

describe("egressRoute: the setting, then https_proxy / HTTPS_PROXY, minus NO_PROXY", () => {
  it("takes https_proxy before HTTPS_PROXY, applies NO_PROXY, and describes itself without credentials", () => {
    const r = egressRoute(undefined, {
      HTTPS_PROXY: "http://upper:3128",
      https_proxy: "http://u:secret@lower:3128",
      NO_PROXY: ".internal",
    });
    expect(r.proxy?.host).toBe("lower");
    expect(r.proxyFor("ctrl.example.com", 443)?.host).toBe("lower");
    expect(r.proxyFor("ctrl.internal", 443)).toBeUndefined();
    expect(r.description).toBe("http://lower:3128 (from https_proxy; NO_PROXY: .internal)");
    expect(r.description).not.toContain("secret");
  });
  it("uses HTTPS_PROXY alone, and ignores an empty https_proxy", () => {
    const r = egressRoute(undefined, { HTTPS_PROXY: "http://upper:3128", https_proxy: "" });
    expect(r.proxy?.source).toBe("HTTPS_PROXY");
  });
  it("an explicit setting wins over the environment; NO_PROXY still exempts", () => {
    const r = egressRoute("http://explicit:8080", { HTTPS_PROXY: "http://env:3128", no_proxy: "ctrl.corp" });
    expect(r.proxyFor("router.corp", 3022)?.display).toBe("http://explicit:8080");
    expect(r.proxyFor("ctrl.corp", 1280)).toBeUndefined();
    expect(r.description).toBe("http://explicit:8080 (from egressProxy; no_proxy: ctrl.corp)");
  });
  it("`direct` turns the proxy off whatever the environment says", () => {
    const r = egressRoute("direct", { HTTPS_PROXY: "http://env:3128" });
    expect(r.proxy).toBeUndefined();
    expect(r.proxyFor("ctrl.corp", 443)).toBeUndefined();
    expect(r.description).toBe("direct");
  });
  it("nothing set: direct", () => expect(egressRoute(undefined, {}).description).toBe("direct"));
  it("a malformed HTTPS_PROXY is an error naming the variable", () =>
    expect(() => egressRoute(undefined, { HTTPS_PROXY: "ftp://x" })).toThrow(/^HTTPS_PROXY: ftp:\/\/ proxies/));
});

describe("challengeSchemes: the authentication schemes a 407 (or 401) offers", () => {
  const answer = (status: number, header: string, values: string[]) =>
    parseConnectAnswer(
      Buffer.from(`HTTP/1.1 ${status} X\r\n${values.map((v) => `${header}: ${v}\r\n`).join("")}\r\n`),
    )!;
  it.each([
    ["one Basic challenge", ['Basic realm="corp"'], ["Basic"]],
    ["NTLM and Negotiate, one header each", ["NTLM", "Negotiate"], ["NTLM", "Negotiate"]],
    [
      "several challenges in one header, with parameters",
      ['Digest realm="x", qop="auth", NTLM, Basic realm="y"'],
      ["Digest", "NTLM", "Basic"],
    ],
    ["a token68 after the scheme is not a scheme", ["Negotiate YIIGhgYJKoZIhvcSAQICAQBu=="], ["Negotiate"]],
    ["a parameter with spaces around =", ['Digest realm = "x" , nonce="n"'], ["Digest"]],
    ["the same scheme twice, once", ["basic", 'Basic realm="r"'], ["basic"]],
    ["no challenge", [], []],
  ])("%s", (_what, values, schemes) => {
    expect(challengeSchemes(answer(407, "Proxy-Authenticate", values))).toEqual(schemes);
  });
  it("a 401 is read from WWW-Authenticate, a 407 from Proxy-Authenticate", () => {
    const both = "Proxy-Authenticate: NTLM\r\nWWW-Authenticate: Negotiate\r\n";
    expect(challengeSchemes(parseConnectAnswer(Buffer.from(`HTTP/1.0 401 X\r\n${both}\r\n`))!)).toEqual(["Negotiate"]);
    expect(challengeSchemes(parseConnectAnswer(Buffer.from(`HTTP/1.1 407 X\r\n${both}\r\n`))!)).toEqual(["NTLM"]);
  });
});

describe("parseConnectAnswer", () => {
  it("reads status, reason, headers and the bytes after the head", () => {
    const a = parseConnectAnswer(Buffer.from("HTTP/1.1 200 Connection established\r\nVia: 1.1 px\r\n\r\n\x16\x03"));
    expect(a).toMatchObject({ status: 200, reason: "Connection established" });
    expect(a?.headers.get("via")).toEqual(["1.1 px"]);
    expect(a?.rest).toEqual(Buffer.from([0x16, 0x03]));
  });
  it("keeps every value of a repeated header, in order", () => {
    const a = parseConnectAnswer(
      Buffer.from("HTTP/1.1 407 Auth\r\nProxy-Authenticate: NTLM\r\nproxy-authenticate: Negotiate\r\n\r\n"),
    );
    expect(a?.headers.get("proxy-authenticate")).toEqual(["NTLM", "Negotiate"]);
  });
  it("waits for more while the head is incomplete but can still be one", () => {
    for (const part of ["", "H", "HTTP/1.", "HTTP/1.0 20", "HTTP/1.1 407 Proxy Auth\r\nProxy-Auth"])
      expect(parseConnectAnswer(Buffer.from(part))).toBeUndefined();
  });
  it("refuses what cannot start an HTTP answer as soon as it shows", () => {
    for (const part of ["SSH-2.0-OpenSSH_9.2\r\n", "\x16\x03\x01", "HTTP/2 200\r\n", "HTTP/1.1 OK\r\n\r\n"])
      expect(() => parseConnectAnswer(Buffer.from(part)), part).toThrow(/not an HTTP answer/);
    expect(() => parseConnectAnswer(Buffer.from("HTTP/1.1 200 OK\r\nno colon\r\n\r\n"))).toThrow(/malformed header/);
  });
});

/** A scripted proxy on loopback: records each CONNECT head and answers as `answer` says. */
async function scriptedProxy(answer: (sock: net.Socket, head: string) => void) {
  const heads: string[] = [];
  const server = net.createServer((sock) => {
    let buf = "";
    const onData = (c: Buffer) => {
      buf += c.toString("latin1");
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) return;
      sock.off("data", onData);
      sock.pause(); // the client's first tunnel bytes wait for the pipe (pipe() resumes)
      const head = buf.slice(0, end);
      heads.push(head);
      answer(sock, head);
    };
    sock.on("data", onData);
    sock.on("error", () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    heads,
    proxy: (auth?: { user: string; password: string }): EgressProxy => ({
      host: "127.0.0.1",
      port,
      auth,
      display: `http://127.0.0.1:${port}`,
      source: "egressProxy",
    }),
    url: `http://127.0.0.1:${port}`,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

/** A forwarding proxy: CONNECT host:port -> 127.0.0.1:port, then bytes both ways. */
const forwarding = (sock: net.Socket, head: string) => {
  const port = Number(/^CONNECT \S+:(\d+) /.exec(head)![1]);
  const up = net.connect({ host: "127.0.0.1", port }, () => {
    sock.write("HTTP/1.1 200 Connection established\r\n\r\n");
    sock.pipe(up).pipe(sock);
  });
  up.on("error", () => sock.destroy());
};

async function tunnelError(p: Promise<unknown>): Promise<ZitiError> {
  try {
    await p;
  } catch (e) {
    return e as ZitiError;
  }
  throw new Error("the tunnel opened");
}

describe("openTunnel: the CONNECT exchange", () => {
  const target = { host: "ctrl.example.com", port: 1280 };

  it("sends CONNECT with Host, and Basic Proxy-Authorization only when credentials are set", async () => {
    const px = await scriptedProxy((s) => s.end("HTTP/1.1 200 OK\r\n\r\n"));
    try {
      (await openTunnel(px.proxy({ user: "scrape", password: "s3cr:t" }), target, 5_000)).destroy();
      (await openTunnel(px.proxy(), { host: "fd00::7", port: 3022 }, 5_000)).destroy();
      expect(px.heads[0]).toBe(
        "CONNECT ctrl.example.com:1280 HTTP/1.1\r\nHost: ctrl.example.com:1280\r\n" +
          `Proxy-Authorization: Basic ${Buffer.from("scrape:s3cr:t").toString("base64")}`,
      );
      expect(px.heads[1]).toBe("CONNECT [fd00::7]:3022 HTTP/1.1\r\nHost: [fd00::7]:3022");
    } finally {
      await px.close();
    }
  });

  it("reads a 200 that arrives a byte at a time (HTTP/1.0 too), with headers", async () => {
    const px = await scriptedProxy((s) => {
      const bytes = Buffer.from("HTTP/1.0 200 Connection established\r\nProxy-Agent: scripted/1\r\n\r\n");
      let i = 0;
      const t = setInterval(() => {
        if (i < bytes.length) s.write(bytes.subarray(i, ++i));
        else clearInterval(t);
      }, 1);
    });
    try {
      const sock = await openTunnel(px.proxy(), target, 5_000);
      sock.destroy();
    } finally {
      await px.close();
    }
  });

  it("bytes the proxy sends after the 200 are the tunnel's: read first, in order", async () => {
    const px = await scriptedProxy((s) => {
      s.write("HTTP/1.1 200 Connection established\r\n\r\nbanner from the destination\n");
      setTimeout(() => s.end("and more\n"), 20);
    });
    try {
      const sock = await openTunnel(px.proxy(), target, 5_000);
      const chunks: Buffer[] = [];
      sock.on("data", (c: Buffer) => chunks.push(c));
      await new Promise((r) => sock.on("end", r));
      expect(Buffer.concat(chunks).toString()).toBe("banner from the destination\nand more\n");
    } finally {
      await px.close();
    }
  });

  it("407 without credentials: proxy authentication required, where to set them", async () => {
    const px = await scriptedProxy((s) =>
      s.end('HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="corp"\r\n\r\n'),
    );
    try {
      const err = await tunnelError(openTunnel(px.proxy(), target, 5_000));
      expect(err.code).toBe(ErrorCodes.EGRESS_PROXY_AUTH);
      expect(err.message).toContain(`egress proxy ${px.url} (from egressProxy)`);
      expect(err.message).toContain("CONNECT ctrl.example.com:1280 with 407 Proxy Authentication Required");
      expect(err.message).toContain("proxy authentication required: set credentials in egressProxy");
      expect(err.message).toContain(`http://user:password@127.0.0.1:`);
    } finally {
      await px.close();
    }
  });

  it("407 with credentials: they were refused; the password is never in the message", async () => {
    const px = await scriptedProxy((s) => s.end("HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"));
    try {
      const p = { ...px.proxy({ user: "scrape", password: "hunter2" }), source: "HTTPS_PROXY" };
      const err = await tunnelError(openTunnel(p, target, 5_000));
      expect(err.code).toBe(ErrorCodes.EGRESS_PROXY_AUTH);
      expect(err.message).toContain("refused the credentials");
      expect(err.message).toContain("the HTTPS_PROXY environment variable");
      expect(err.message).not.toContain("hunter2");
      expect(err.message).not.toContain(Buffer.from("scrape:hunter2").toString("base64"));
    } finally {
      await px.close();
    }
  });

  it("407 asking only for schemes scrapez does not speak (NTLM, Negotiate): says so and what to do instead", async () => {
    const px = await scriptedProxy((s) =>
      s.end(
        "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: NTLM\r\nProxy-Authenticate: Negotiate\r\n\r\n",
      ),
    );
    try {
      const err = await tunnelError(openTunnel(px.proxy({ user: "scrape", password: "hunter2" }), target, 5_000));
      expect(err.code).toBe(ErrorCodes.EGRESS_PROXY_AUTH);
      expect(err.message).toContain(
        "with 407 Proxy Authentication Required: it asks for NTLM, Negotiate authentication, and scrapez speaks only Basic",
      );
      expect(err.message).toContain("allow Basic for this client on the proxy");
      expect(err.message).not.toContain("refused the credentials"); // they were never judged
      expect(err.message).not.toContain("hunter2");
    } finally {
      await px.close();
    }
  });

  it("401 to CONNECT (tinyproxy's answer to bad credentials) reads as 407", async () => {
    const px = await scriptedProxy((s) => s.end("HTTP/1.0 401 Unauthorized\r\n\r\n"));
    try {
      const err = await tunnelError(openTunnel(px.proxy({ user: "scrape", password: "wrong" }), target, 5_000));
      expect(err.code).toBe(ErrorCodes.EGRESS_PROXY_AUTH);
      expect(err.message).toContain("refused the credentials for CONNECT ctrl.example.com:1280 (401 Unauthorized)");
    } finally {
      await px.close();
    }
  });

  it("403: CONNECT denied by the proxy's rules, naming the destination", async () => {
    const px = await scriptedProxy((s) => s.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"));
    try {
      const err = await tunnelError(openTunnel(px.proxy(), target, 5_000));
      expect(err.code).toBe(ErrorCodes.EGRESS_PROXY_REFUSED);
      expect(err.message).toMatch(/denied CONNECT ctrl\.example\.com:1280 \(403 Forbidden\)/);
      expect(err.message).toContain("allow CONNECT to ctrl.example.com:1280");
    } finally {
      await px.close();
    }
  });

  it("502: refused, the proxy could not reach the destination", async () => {
    const px = await scriptedProxy((s) => s.end("HTTP/1.1 502 Bad Gateway\r\n\r\n"));
    try {
      const err = await tunnelError(openTunnel(px.proxy(), target, 5_000));
      expect(err.code).toBe(ErrorCodes.EGRESS_PROXY_REFUSED);
      expect(err.message).toContain("refused CONNECT ctrl.example.com:1280 (502 Bad Gateway)");
    } finally {
      await px.close();
    }
  });

  it("garbage instead of an HTTP answer: refused at once, shown printable", async () => {
    const px = await scriptedProxy((s) => s.write("SSH-2.0-OpenSSH_9.2\x01\x02\r\n")); // and never closes
    try {
      const err = await tunnelError(openTunnel(px.proxy(), target, 60_000));
      expect(err.code).toBe(ErrorCodes.EGRESS_PROXY_BAD_ANSWER);
      expect(err.message).toContain('not an HTTP answer: "SSH-2.0-OpenSSH_9.2??"');
      expect(err.message).toContain("is it an HTTP proxy?");
    } finally {
      await px.close();
    }
  });

  it("an answer head larger than 16 KiB is refused", async () => {
    const px = await scriptedProxy((s) => {
      s.write("HTTP/1.1 200 OK\r\n");
      for (let i = 0; i < 200; i++) s.write(`X-Filler-${i}: ${"x".repeat(100)}\r\n`);
    });
    try {
      const err = await tunnelError(openTunnel(px.proxy(), target, 60_000));
      expect(err.code).toBe(ErrorCodes.EGRESS_PROXY_BAD_ANSWER);
      expect(err.message).toContain("a head larger than 16384 bytes");
    } finally {
      await px.close();
    }
  });

  it("a proxy that closes without answering", async () => {
    const px = await scriptedProxy((s) => s.end("HTTP/1.1 200"));
    try {
      const err = await tunnelError(openTunnel(px.proxy(), target, 5_000));
      expect(err.code).toBe(ErrorCodes.EGRESS_PROXY_BAD_ANSWER);
      expect(err.message).toContain("closed the connection without answering CONNECT ctrl.example.com:1280");
    } finally {
      await px.close();
    }
  });

  it("a proxy that never answers: unreachable after the deadline", async () => {
    const px = await scriptedProxy(() => undefined);
    try {
      const err = await tunnelError(openTunnel(px.proxy(), target, 300));
      expect(err.code).toBe(ErrorCodes.EGRESS_PROXY_UNREACHABLE);
      expect(err.message).toContain("did not answer CONNECT ctrl.example.com:1280 within 300 ms");
    } finally {
      await px.close();
    }
  });

  it("no proxy listening: unreachable, naming the proxy without its credentials", async () => {
    const px = await scriptedProxy(() => undefined);
    const p = px.proxy({ user: "scrape", password: "hunter2" });
    await px.close();
    const err = await tunnelError(openTunnel(p, target, 5_000));
    expect(err.code).toBe(ErrorCodes.EGRESS_PROXY_UNREACHABLE);
    expect(err.message).toContain(`cannot reach egress proxy ${p.display} (from egressProxy): ECONNREFUSED`);
    expect(err.message).toContain("check that the proxy runs");
    expect(err.message).not.toContain("hunter2");
  });
});

describe("TLS inside the tunnel, with the identity's certificate and the same server name", () => {
  let dir = "";
  let pki: Record<string, string>;
  let server: tls.Server;
  let httpsServer: https.Server;
  let tlsPort = 0;
  let httpsPort = 0;
  const seen: { servername: string | false | null; client: string | undefined }[] = [];
  const pem = (f: string) => readFileSync(pki[f]!, "utf8");
  const creds = () => ({ certPem: pem("client.crt"), keyPem: pem("client.key"), caPem: pem("ca.crt") });

  beforeAll(async () => {
    dir = tempDir("egress-unit");
    pki = makePki(join(dir, "pki"));
    const opts = { cert: pem("server.crt"), key: pem("server.key"), ca: pem("ca.crt"), requestCert: true };
    server = tls.createServer({ ...opts, rejectUnauthorized: true }, (s) => {
      seen.push({ servername: s.servername, client: s.getPeerX509Certificate()?.subject });
      s.end("router says hi");
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    tlsPort = (server.address() as net.AddressInfo).port;
    httpsServer = https.createServer({ ...opts, rejectUnauthorized: true }, (req, res) => {
      const s = req.socket as tls.TLSSocket;
      res.end(`controller: ${s.servername} ${s.getPeerX509Certificate()?.subject.replace(/\n/g, ",")}`);
    });
    await new Promise<void>((r) => httpsServer.listen(0, "127.0.0.1", r));
    httpsPort = (httpsServer.address() as net.AddressInfo).port;
  });
  afterAll(async () => {
    await new Promise((r) => server?.close(r));
    await new Promise((r) => httpsServer?.close(r));
    removeDir(dir);
  });

  it("connectTls: a router channel's TLS runs through the proxy; the router sees SNI and the client cert", async () => {
    const px = await scriptedProxy(forwarding);
    try {
      const route = egressRoute(px.url, {});
      const sock = await connectTls({ host: "localhost", port: tlsPort }, creds(), 5_000, route);
      let got = "";
      await new Promise<void>((r) =>
        sock.on("data", (c: Buffer) => {
          got += c.toString();
          if (got.length >= "router says hi".length) r();
        }),
      );
      sock.destroy();
      expect(got).toBe("router says hi");
      expect(px.heads).toEqual([`CONNECT localhost:${tlsPort} HTTP/1.1\r\nHost: localhost:${tlsPort}`]);
      expect(seen.at(-1)).toEqual({ servername: "localhost", client: "CN=client" });
    } finally {
      await px.close();
    }
  });

  it("connectTls: bytes after the 200 reach the TLS layer (junk there fails the handshake)", async () => {
    const px = await scriptedProxy((sock, head) => {
      const port = Number(/^CONNECT \S+:(\d+) /.exec(head)![1]);
      const up = net.connect({ host: "127.0.0.1", port }, () => {
        sock.write("HTTP/1.1 200 OK\r\n\r\nJUNK-NOT-TLS\r\n\r\n");
        sock.pipe(up).pipe(sock);
      });
      up.on("error", () => sock.destroy());
    });
    try {
      const err = await tunnelError(
        connectTls({ host: "localhost", port: tlsPort }, creds(), 5_000, egressRoute(px.url, {})),
      );
      expect(err.code).toBe(ErrorCodes.CHANNEL_CLOSED);
      expect(err.message).toContain(`cannot connect to edge router localhost:${tlsPort} through ${px.url}`);
    } finally {
      await px.close();
    }
  });

  it("connectTls: the proxy's refusal keeps its code and names the router", async () => {
    const px = await scriptedProxy((s) => s.end("HTTP/1.1 403 Forbidden\r\n\r\n"));
    try {
      const err = await tunnelError(
        connectTls({ host: "localhost", port: tlsPort }, creds(), 5_000, egressRoute(px.url, {})),
      );
      expect(err.code).toBe(ErrorCodes.EGRESS_PROXY_REFUSED);
      expect(err.message).toMatch(
        /^cannot connect to edge router localhost:\d+: egress proxy http:\/\/127\.0\.0\.1:\d+/,
      );
    } finally {
      await px.close();
    }
  });

  it("EgressAgent: a controller request with mTLS through the tunnel; keep-alive reuses it", async () => {
    const px = await scriptedProxy(forwarding);
    const agent = new EgressAgent(egressRoute(px.url, {}), {
      keepAlive: true,
      cert: pem("client.crt"),
      key: pem("client.key"),
      ca: pem("ca.crt"),
    });
    try {
      for (let i = 0; i < 2; i++) {
        const r = await httpsExchange(new URL(`https://localhost:${httpsPort}/edge/client/v1/version`), {
          method: "GET",
          tls: { agent },
          timeoutMs: 5_000,
          maxBodyBytes: 1024,
        });
        expect(r.body.toString()).toBe("controller: localhost CN=client");
      }
      expect(px.heads).toEqual([`CONNECT localhost:${httpsPort} HTTP/1.1\r\nHost: localhost:${httpsPort}`]);
    } finally {
      agent.destroy();
      await px.close();
    }
  });

  it("EgressAgent: a destination NO_PROXY exempts goes direct", async () => {
    const px = await scriptedProxy(forwarding);
    const agent = new EgressAgent(egressRoute(px.url, { NO_PROXY: "localhost" }), {
      cert: pem("client.crt"),
      key: pem("client.key"),
      ca: pem("ca.crt"),
    });
    try {
      const r = await httpsExchange(new URL(`https://localhost:${httpsPort}/`), {
        method: "GET",
        tls: { agent },
        timeoutMs: 5_000,
        maxBodyBytes: 1024,
      });
      expect(r.body.toString()).toBe("controller: localhost CN=client");
      expect(px.heads).toEqual([]);
    } finally {
      agent.destroy();
      await px.close();
    }
  });

  it("EgressAgent: a 407 reaches the request as the proxy's error", async () => {
    const px = await scriptedProxy((s) => s.end("HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"));
    const agent = new EgressAgent(egressRoute(px.url, {}), { ca: pem("ca.crt") });
    try {
      const err = await tunnelError(
        httpsExchange(new URL(`https://localhost:${httpsPort}/`), {
          method: "GET",
          tls: { agent },
          timeoutMs: 5_000,
          maxBodyBytes: 1024,
        }),
      );
      expect((err.cause as ZitiError).code).toBe(ErrorCodes.EGRESS_PROXY_AUTH);
      expect(err.message).toContain("proxy authentication required");
    } finally {
      agent.destroy();
      await px.close();
    }
  });
});

describe("egressProxy in bind.yaml and proxy.yaml", () => {
  const bind = (extra: object, env: NodeJS.ProcessEnv = {}, flags = {}) =>
    parseBindConfig(
      { identity: "id.json", targets: [{ service: "node", upstream: "http://127.0.0.1:9100" }], ...extra },
      "bind.yaml",
      "/",
      env,
      flags,
      { checkFiles: false },
    );
  const proxy = (extra: object, env: NodeJS.ProcessEnv = {}) =>
    parseProxyConfig({ identities: ["id.json"], ...extra }, "proxy.yaml", "/", env, {}, { checkFiles: false });

  it("takes a proxy URL with credentials, host:port, or direct; unset stays unset (HTTPS_PROXY then applies)", () => {
    expect(bind({ egressProxy: "http://scrape:pw@proxy.corp:3128" }).egressProxy).toBe(
      "http://scrape:pw@proxy.corp:3128",
    );
    expect(proxy({ egressProxy: "proxy.corp:3128" }).egressProxy).toBe("proxy.corp:3128");
    expect(bind({ egressProxy: "direct" }).egressProxy).toBe("direct");
    expect(bind({}, { HTTPS_PROXY: "http://env:3128" }).egressProxy).toBeUndefined();
  });

  it("a malformed HTTPS_PROXY is a config error naming the variable (not its value), unless egressProxy is set", () => {
    const env = { HTTPS_PROXY: "socks5://user:hunter2@proxy.corp:1080" };
    for (const parse of [() => bind({}, env), () => proxy({}, env)]) {
      expect(parse).toThrow(/HTTPS_PROXY \(the egress proxy while egressProxy is unset\): expected http:\/\//);
      expect(parse).not.toThrow(/hunter2/);
    }
    expect(bind({ egressProxy: "direct" }, env).egressProxy).toBe("direct");
    expect(bind({}, { https_proxy: "proxy.corp:3128", HTTPS_PROXY: "socks5://x" }).egressProxy).toBeUndefined();
  });

  it("SCRAPEZ_EGRESS_PROXY and --egress-proxy override the file", () => {
    expect(bind({ egressProxy: "http://file:1" }, { SCRAPEZ_EGRESS_PROXY: "http://env:2" }).egressProxy).toBe(
      "http://env:2",
    );
    const c = bind({}, { SCRAPEZ_EGRESS_PROXY: "http://env:2" }, { "egress-proxy": "http://flag:3" });
    expect(c.egressProxy).toBe("http://flag:3");
  });

  it.each([
    "https://user:hunter2@proxy.corp:3128",
    "socks5://user:hunter2@proxy.corp:1080",
    "http://user:hunter2@:3128",
  ])("%s is refused, naming the field and not the password", (v) => {
    for (const parse of [() => bind({ egressProxy: v }), () => proxy({ egressProxy: v })]) {
      let msg = "";
      try {
        parse();
      } catch (e) {
        msg = (e as Error).message;
      }
      expect(msg).toMatch(/egressProxy.*expected http:\/\/\[user:password@\]host:port/s);
      expect(msg).not.toContain("hunter2");
    }
  });
});
