/**
 * One-command onboarding's pieces that need no overlay (src/cli/onboard.ts): where the state directory is, the
 * bind's targets from --service/--upstream, the checks of the state directory, and what is printed (valid YAML,
 * commands a shell runs as they are). The whole flow runs against a real controller in
 * test/integration/onboard.test.ts.
 */
import { chmodSync, mkdirSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import YAML from "yaml";
import { defaultStateDir, ensureIdentity, prepareDir, proxyUrlFlag, targetsFromFlags } from "../../src/cli/onboard.js";
import { BindReport, bindPolicyHelp, proxySnippet, scrapePath, shellQuote } from "../../src/cli/onboard-report.js";
import { removeDir, tempDir } from "../harness/process.js";

const dir = tempDir("onboard-unit");
afterAll(() => removeDir(dir));

describe("the state directory", () => {
  it("is /var/lib/scrapez for root, else $XDG_STATE_HOME/scrapez, else ~/.local/state/scrapez", () => {
    expect(defaultStateDir({ XDG_STATE_HOME: "/x/state", HOME: "/home/u" }, 0)).toBe("/var/lib/scrapez");
    expect(defaultStateDir({ XDG_STATE_HOME: "/x/state", HOME: "/home/u" }, 1000)).toBe("/x/state/scrapez");
    expect(defaultStateDir({ XDG_STATE_HOME: "relative", HOME: "/home/u" }, 1000)).toBe("/home/u/.local/state/scrapez");
    expect(defaultStateDir({ HOME: "/home/u" }, 1000)).toBe("/home/u/.local/state/scrapez");
  });

  it("is created 0700 with its parents; one that is a file is refused naming it and the fix", () => {
    const d = join(dir, "a", "b", "state");
    expect(prepareDir(d)).toEqual([]);
    expect(statSync(d).mode & 0o777).toBe(0o700);
    const f = join(dir, "file");
    writeFileSync(f, "");
    expect(() => prepareDir(f)).toThrow(
      expect.objectContaining({
        code: "SCRAPEZ_STATE_DIR_UNUSABLE",
        message: expect.stringMatching(/the state directory .*file is not a directory: .*--state-dir/),
      }),
    );
  });

  it("warns when it is open to other users", () => {
    const d = join(dir, "open");
    mkdirSync(d);
    chmodSync(d, 0o755);
    expect(prepareDir(d)).toEqual([expect.stringMatching(/is open to other users \(mode 755\).*chmod 700/)]);
  });

  it("without a token and without an identity: says to give --jwt", async () => {
    await expect(ensureIdentity(join(dir, "none", "bind-identity.json"), undefined)).rejects.toMatchObject({
      code: "SCRAPEZ_IDENTITY_UNUSABLE",
      message: expect.stringMatching(/no identity in .*bind-identity\.json yet: give --jwt <token file>/),
    });
  });

  it("a token file that is an identity file (JSON) is refused before anything is created", async () => {
    const t = join(dir, "identity-not-token.jwt");
    writeFileSync(t, '{"ztAPI": "https://ctrl:1280"}');
    const state = join(dir, "never-made");
    await expect(ensureIdentity(join(state, "bind-identity.json"), t)).rejects.toMatchObject({
      code: "SCRAPEZ_IDENTITY_UNUSABLE",
      message: expect.stringMatching(/the token .*: this is JSON \(an identity file\?\), not an enrollment token/),
    });
    expect(() => statSync(state)).toThrow(/ENOENT/);
  });

  /** A token that parses (its signature is checked only against the controller's certificate). */
  const token = (name: string, iss = "https://ctrl.example:1280") => {
    const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
    const t = join(dir, name);
    writeFileSync(t, `${b64({ alg: "RS256" })}.${b64({ em: "ott", iss, sub: "id-1", jti: "j-1" })}.c2ln`);
    return t;
  };

  it("an identity directory that cannot be made is refused with the caller's advice (a config file's)", async () => {
    const file = join(dir, "plain-file-for-identity");
    writeFileSync(file, "");
    const advice = "change `identity` in the config file (or give --identity)";
    const refused = ensureIdentity(join(file, "bind-identity.json"), token("t-advice.jwt"), { otherDir: advice });
    await expect(refused).rejects.toMatchObject({
      code: "SCRAPEZ_STATE_DIR_UNUSABLE",
      message: expect.stringMatching(/the identity's directory .* or change `identity` in the config file/),
    });
    await expect(refused).rejects.toMatchObject({ message: expect.not.stringMatching(/--state-dir/) });
    // Without advice from the caller: another state directory.
    await expect(ensureIdentity(join(file, "x.json"), token("t-default.jwt"))).rejects.toMatchObject({
      message: expect.stringMatching(/or choose another with --state-dir/),
    });
  });

  it("enrolls through the config's egressProxy", async () => {
    const connects: string[] = [];
    const proxy = createServer((sock) => {
      sock.once("data", (b) => {
        connects.push(b.toString("latin1").split("\r\n")[0]!);
        sock.end("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
      });
    });
    await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r));
    const { port } = proxy.address() as { port: number };
    try {
      await expect(
        ensureIdentity(join(dir, "via-proxy", "bind-identity.json"), token("t-proxy.jwt"), {
          egressProxy: `http://127.0.0.1:${port}`,
        }),
      ).rejects.toMatchObject({ code: "SCRAPEZ_IDENTITY_UNUSABLE", message: expect.stringMatching(/ctrl\.example/) });
    } finally {
      proxy.close();
    }
    expect(connects).toEqual(["CONNECT ctrl.example:1280 HTTP/1.1"]);
  });
});

describe("scrapez enroll", () => {
  it("refuses an --out whose directory cannot be made before it reads the token's controller", async () => {
    const { main } = await import("../../src/cli/main.js");
    const file = join(dir, "plain-file");
    writeFileSync(file, "");
    const token = join(dir, "token.jwt");
    writeFileSync(token, "a.b.c");
    const err: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((s: string) => (err.push(s), true)) as typeof process.stderr.write;
    try {
      expect(await main(["enroll", "--jwt", token, "--out", join(file, "x.json")])).toBe(1);
    } finally {
      process.stderr.write = write;
    }
    expect(err.join("")).toMatch(
      /^scrapez enroll: \[SCRAPEZ_STATE_DIR_UNUSABLE\] the directory of --out \S+plain-file is not a directory: .* or give another --out\n$/,
    );
  });
});

describe("--service/--upstream pairs", () => {
  it("pair in order; a URL without a path serves /metrics, one with a path serves that path", () => {
    expect(
      targetsFromFlags(["node", "app"], ["http://127.0.0.1:9100", "https://127.0.0.1:8443/actuator/prometheus"]),
    ).toEqual([
      { service: "node", upstream: "http://127.0.0.1:9100", paths: ["/metrics"] },
      { service: "app", upstream: "https://127.0.0.1:8443", paths: ["/actuator/prometheus"] },
    ]);
  });

  it.each([
    [["a", "b"], ["http://h:1"], /go in pairs.*2 --service and 1 --upstream/],
    [
      ["a"],
      ["127.0.0.1:9100"],
      /--upstream 127\.0\.0\.1:9100 \(for --service a\) is not a URL: give http:\/\/host:port/,
    ],
    [["a"], ["ftp://h:21"], /--upstream ftp:\/\/h:21 \(for --service a\) is not an http\(s\) URL/],
    [["a"], ["not a url"], /--upstream not a url \(for --service a\) is not a URL/],
    [["a"], ["http://h:1/m?x=1"], /without a query, fragment or credentials/],
  ])("refuse %j %j as a usage error", (services, upstreams, why) => {
    expect(() => targetsFromFlags(services, upstreams)).toThrow(
      expect.objectContaining({ name: "UsageError", message: expect.stringMatching(why) }),
    );
  });

  it("--proxy-url takes the proxy's address only", () => {
    expect(proxyUrlFlag(undefined)).toBe("http://127.0.0.1:9480");
    expect(proxyUrlFlag("http://10.0.0.5:9480/")).toBe("http://10.0.0.5:9480");
    expect(() => proxyUrlFlag("10.0.0.5:9480")).toThrow(/give http:\/\/host:port/);
    expect(() => proxyUrlFlag("http://10.0.0.5:9480/sd")).toThrow(/give http:\/\/host:port/);
  });
});

describe("what is printed", () => {
  it("the bind's jobs are valid YAML, one per target with its path and the target's host name", () => {
    const out: string[] = [];
    const r = new BindReport(
      [
        { service: "node", paths: ["/metrics"] },
        { service: "My App", paths: ["/probe*", "/actuator/prometheus"] },
      ],
      "http://127.0.0.1:9480",
      (s) => out.push(s),
    );
    r.authenticated("host-a");
    expect(YAML.parse(out.join(""))).toEqual({
      scrape_configs: [
        { job_name: "node", proxy_url: "http://127.0.0.1:9480", static_configs: [{ targets: ["node"] }] },
        {
          job_name: "My App",
          proxy_url: "http://127.0.0.1:9480",
          metrics_path: "/actuator/prometheus",
          static_configs: [{ targets: ["x--4d7920417070"] }],
        },
      ],
    });
  });

  it("each service's fate once: the commands that let it bind when it fails, a line when it is bound", () => {
    const out: string[] = [];
    const r = new BindReport([{ service: "node", paths: ["/metrics"] }], "http://p:1", (s) => out.push(s));
    r.authenticated("host-a");
    out.length = 0;
    r.update({ node: { state: "failed", lastError: "not visible" } });
    r.update({ node: { state: "failed", lastError: "not visible" } });
    r.update({ node: { state: "bound" } });
    r.update({ node: { state: "rebinding" } });
    r.update({ node: { state: "bound" } });
    expect(out).toEqual([
      bindPolicyHelp("node", "host-a", "not visible"),
      'scrapez bind: service "node" bound; the central scrapez proxy reaches it as http://node/metrics\n',
    ]);
  });

  it("one path per target in the job and in the bound line: the first exact path, else one a `*` rule allows", () => {
    expect(scrapePath({ service: "a", paths: ["/probe*", "/actuator/prometheus"] })).toBe("/actuator/prometheus");
    expect(scrapePath({ service: "a", paths: ["/*"] })).toBe("/metrics");
    expect(scrapePath({ service: "a", paths: ["/metrics/*"] })).toBe("/metrics/");
    expect(scrapePath({ service: "a", paths: ["/probe*"] })).toBe("/probe");
    expect(scrapePath({ service: "a", paths: ["/x/*", "/y"] })).toBe("/y");
    const out: string[] = [];
    const r = new BindReport([{ service: "app", paths: ["/probe*", "/actuator/prometheus"] }], "http://p:1", (s) =>
      out.push(s),
    );
    r.authenticated("host-a");
    r.update({ app: { state: "bound" } });
    expect(YAML.parse(out[0]!).scrape_configs[0].metrics_path).toBe("/actuator/prometheus");
    expect(out[1]).toBe(
      'scrapez bind: service "app" bound; the central scrapez proxy reaches it as http://app/actuator/prometheus\n',
    );
  });

  it("shell words are quoted only when a shell would read them otherwise", () => {
    expect(shellQuote("@node")).toBe("@node");
    expect(shellQuote("#scrapez")).toBe("'#scrapez'");
    expect(shellQuote("it's mine")).toBe(`'it'\\''s mine'`);
    expect(bindPolicyHelp("my svc", "host a", "x")).toContain(
      "ziti edge create service-policy 'my svc-bind' Bind --service-roles '@my svc' --identity-roles '@host a'",
    );
  });

  it("the proxy's job names its address; a wildcard listener is shown as loopback with a note", () => {
    const y = proxySnippet({ host: "0.0.0.0", port: 9480 }, { tls: false, auth: false });
    expect(y).toMatch(/^# It listens on every address \(0\.0\.0\.0\)/m);
    expect(YAML.parse(y).scrape_configs[0]).toMatchObject({
      proxy_url: "http://127.0.0.1:9480",
      http_sd_configs: [{ url: "http://127.0.0.1:9480/sd" }],
    });
    expect(
      YAML.parse(proxySnippet({ host: "::1", port: 1 }, { tls: true, auth: true })).scrape_configs[0],
    ).toMatchObject({ proxy_url: "https://[::1]:1" });
  });
});
