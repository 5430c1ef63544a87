/**
 * `scrapez check` and the proxy's web config (exporter-toolkit format, src/proxy/web-config.ts): a proxy config's
 * `webConfigFile`, or `--web.config.file` as scrapez proxy takes it, is checked as the proxy checks it at start
 * (the format, the TLS files it names, the proxy's own rules with its config), and alone without a proxy config.
 * Each case: the files, the command line, the exit code, and what is printed (the summary, or the error naming the
 * field). The proxy's own reading of the file is test/unit/web-config.test.ts; a real proxy with it,
 * test/integration/web-config.test.ts.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import bcrypt from "bcryptjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import YAML from "yaml";
import { runCheck } from "../../src/cli/check.js";
import { WebListener } from "../../src/proxy/web-listener.js";
import { loadProxyConfig } from "../../src/proxy/config.js";
import { createLogger } from "../../src/common/log.js";
import { makePki } from "../harness/pki.js";

const dir = mkdtempSync(join(tmpdir(), "scrapez-check-web-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
writeFileSync(join(dir, "id.json"), "{}", { mode: 0o600 });
const HASH = bcrypt.hashSync("s3cret", 4);
let pki: Record<string, string>;
beforeAll(() => {
  pki = makePki(join(dir, "pki"));
});

let n = 0;
/** Writes a file (an object as YAML, or raw text) and returns its path. */
function file(content: unknown, name = `f${n++}.yml`): string {
  const p = join(dir, name);
  writeFileSync(p, typeof content === "string" ? content : YAML.stringify(content));
  return p;
}

async function check(args: string[]) {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runCheck(args, {
    stdout: { write: (s: string) => out.push(s) },
    stderr: { write: (s: string) => err.push(s) },
    env: {},
  });
  return { code, out: out.join(""), err: err.join("") };
}

/** The web configs of the cases (the TLS ones name the test PKI's files, made in beforeAll). */
const web = {
  users: () => ({ basic_auth_users: { prometheus: HASH } }),
  mtls: () => ({
    tls_server_config: {
      cert_file: pki["server.crt"],
      key_file: pki["server.key"],
      client_auth_type: "RequireAndVerifyClientCert",
      client_ca_file: pki["ca.crt"],
      client_allowed_sans: ["prometheus.monitoring"],
    },
  }),
  headersOnly: () => ({ http_server_config: { headers: { "X-Frame-Options": "deny" } } }),
};
const proxy = (extra: object = {}) => ({ identities: ["id.json"], ...extra });

interface Case {
  name: string;
  /** The command line, given the web config's path and the proxy config's (written from `config`). */
  args: (webFile: string, configFile: string) => string[];
  /** The web config's content (object: YAML), or undefined for a path that does not exist. */
  webConfig: (() => unknown) | undefined;
  /** The proxy config, given the web config's path (undefined: none written). */
  config?: (webFile: string) => object;
  code: 0 | 1 | 2;
  /** What stdout (exit 0) or stderr (otherwise) says. */
  says: RegExp;
}

const cases: Case[] = [
  {
    name: "a proxy config's webConfigFile with bcrypt users",
    webConfig: web.users,
    config: (w) => proxy({ webConfigFile: w }),
    args: (_w, c) => ["--config", c],
    code: 0,
    says: /valid proxy config \(1 identity file\(s\), listen 127\.0\.0\.1:9480; web config \S+: plain HTTP, 1 basic auth user\(s\)\)/,
  },
  {
    name: "--web.config.file with mTLS and client_allowed_sans, applied to the proxy config as scrapez proxy would",
    webConfig: web.mtls,
    config: () => proxy({ listen: "0.0.0.0:9480" }),
    args: (w, c) => ["--config", c, "--web.config.file", w],
    code: 0,
    says: /valid proxy config \(.*listen 0\.0\.0\.0:9480; web config \S+: TLS, client auth RequireAndVerifyClientCert, 1 allowed SAN\(s\)\)/,
  },
  {
    name: "a non-loopback listener whose auth is the web config's users",
    webConfig: web.users,
    config: (w) => proxy({ listen: "0.0.0.0:9480", webConfigFile: w }),
    args: (_w, c) => ["--config", c],
    code: 0,
    says: /valid proxy config .*1 basic auth user/,
  },
  {
    name: "--web.config.file alone: the file checked without a proxy config",
    webConfig: web.mtls,
    args: (w) => ["--web.config.file", w],
    code: 0,
    says: /^\S+: valid web config \(TLS, client auth RequireAndVerifyClientCert, 1 allowed SAN\(s\)\)\n$/,
  },
  {
    name: "--no-files and a web config that is not there: not checked, and said so",
    webConfig: undefined,
    config: (w) => proxy({ webConfigFile: w }),
    args: (_w, c) => ["--config", c, "--no-files"],
    code: 0,
    says: /valid proxy config \(.*; web config \S+ not checked: it is not there \(--no-files\)\)/,
  },
  {
    name: "a web config that is not there",
    webConfig: undefined,
    config: (w) => proxy({ webConfigFile: w }),
    args: (_w, c) => ["--config", c],
    code: 1,
    says: /webConfigFile: file \S+ does not exist/,
  },
  {
    name: "a password where a bcrypt hash belongs",
    webConfig: () => ({ basic_auth_users: { prometheus: "s3cret" } }),
    config: (w) => proxy({ webConfigFile: w }),
    args: (_w, c) => ["--config", c],
    code: 1,
    says: /web config \S+ is invalid:\n {2}basic_auth_users\.prometheus: not a bcrypt hash/,
  },
  {
    name: "a misspelt top-level key (the toolkit parses strictly)",
    webConfig: () => ({ tls_server_confg: {} }),
    config: (w) => proxy({ webConfigFile: w }),
    args: (_w, c) => ["--config", c],
    code: 1,
    says: /web config \S+ is invalid:\n.*tls_server_confg/,
  },
  {
    name: "a header the toolkit does not let a web config set",
    webConfig: () => ({ http_server_config: { headers: { "X-Powered-By": "scrapez" } } }),
    args: (w) => ["--web.config.file", w],
    code: 1,
    says: /http_server_config\.headers\.X-Powered-By: this header can not be configured/,
  },
  {
    name: "rate_limit, which the proxy does not do",
    webConfig: () => ({ rate_limit: { interval: "1s" } }),
    config: (w) => proxy({ webConfigFile: w }),
    args: (_w, c) => ["--config", c],
    code: 1,
    says: /rate_limit: not supported by scrapez proxy/,
  },
  {
    name: "a certificate file that cannot be read",
    webConfig: () => ({ tls_server_config: { cert_file: join(dir, "absent.crt"), key_file: pki["server.key"] } }),
    args: (w) => ["--web.config.file", w],
    code: 1,
    says: /tls_server_config\.cert_file: cannot read \S+absent\.crt: ENOENT/,
  },
  {
    name: "client_allowed_sans without a verified client certificate",
    webConfig: () => ({
      tls_server_config: {
        cert_file: pki["server.crt"],
        key_file: pki["server.key"],
        client_allowed_sans: ["prometheus.monitoring"],
      },
    }),
    args: (w) => ["--web.config.file", w],
    code: 1,
    says: /tls_server_config\.client_allowed_sans: needs a verified client certificate/,
  },
  {
    name: "a key that is not the certificate's",
    webConfig: () => ({ tls_server_config: { cert_file: pki["server.crt"], key_file: pki["client.key"] } }),
    args: (w) => ["--web.config.file", w],
    code: 1,
    says: /tls_server_config: cannot use the certificate, key, client CA or ciphers/,
  },
  {
    name: "a cipher suite Node's TLS does not offer",
    webConfig: () => ({
      tls_server_config: {
        cert_file: pki["server.crt"],
        key_file: pki["server.key"],
        cipher_suites: ["TLS_RSA_WITH_RC4_128_SHA"],
      },
    }),
    args: (w) => ["--web.config.file", w],
    code: 1,
    says: /tls_server_config\.cipher_suites\[0\]: TLS_RSA_WITH_RC4_128_SHA is not a cipher suite/,
  },
  {
    name: "not YAML",
    webConfig: () => "basic_auth_users: [\n",
    args: (w) => ["--web.config.file", w],
    code: 1,
    says: /web config \S+ is not valid YAML/,
  },
  {
    name: "the proxy's rule: TLS from the web config and from the proxy config at once",
    webConfig: web.mtls,
    config: (w) => proxy({ webConfigFile: w, tls: { cert: pki["server.crt"], key: pki["server.key"] } }),
    args: (_w, c) => ["--config", c],
    code: 1,
    says: /tls_server_config and the proxy config's tls are both set: use one of them/,
  },
  {
    name: "the proxy's rule: a non-loopback listener with no auth in the web config",
    webConfig: web.headersOnly,
    config: () => proxy({ listen: "0.0.0.0:9480" }),
    args: (w, c) => ["--config", c, "--web.config.file", w],
    code: 1,
    says: /listen 0\.0\.0\.0:9480 is not a loopback address, so auth is required: add basic_auth_users/,
  },
  {
    name: "--web.config.file with only a bind config: the web config is checked alone, not left out",
    webConfig: () => ({ basic_auth_users: { prometheus: "plain" } }),
    config: () => ({ identity: "id.json", targets: [{ service: "node", upstream: "http://127.0.0.1:9100" }] }),
    args: (w, c) => ["--config", c, "--web.config.file", w],
    code: 1,
    says: /basic_auth_users\.prometheus: not a bcrypt hash/,
  },
  {
    name: "--web.config.file without a file name",
    webConfig: web.users,
    args: () => ["--web.config.file", ""],
    code: 2,
    says: /--web\.config\.file needs a file name/,
  },
];

describe("scrapez check with a web config", () => {
  it.each(cases.map((c) => [c.name, c] as const))("%s", async (_name, c) => {
    const webFile = c.webConfig ? file(c.webConfig()) : join(dir, `absent-${n++}.yml`);
    const configFile = c.config ? file(c.config(webFile)) : "";
    const r = await check(c.args(webFile, configFile));
    expect(r.code, `${r.out}${r.err}`).toBe(c.code);
    expect(c.code === 0 ? r.out : r.err).toMatch(c.says);
    if (c.code === 0) expect(r.err).toBe("");
  });

  it("an invalid web config gets the error the proxy gives at start, word for word", async () => {
    for (const w of [
      { basic_auth_users: { prometheus: "s3cret" }, http_server_config: { headers: { Server: "x" } } },
      web.headersOnly(),
    ]) {
      const webFile = file(w);
      const configFile = file(proxy({ listen: "0.0.0.0:9480", webConfigFile: webFile }));
      // What src/proxy/server.ts does at start: the proxy logs this message as the reason it cannot start.
      let atStart = "";
      try {
        new WebListener(
          webFile,
          () => loadProxyConfig(configFile, {}),
          createLogger("error", {}, () => undefined),
        );
      } catch (err) {
        atStart = (err as Error).message;
      }
      expect(atStart).not.toBe("");
      const r = await check(["--config", configFile]);
      expect(r.code).toBe(1);
      expect(r.err).toBe(`${atStart}\n`);
    }
  });
});
