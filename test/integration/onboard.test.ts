/**
 * One command from an enrollment token to a scraped exporter (issue 24 item 4), against a real controller and router,
 * node_exporter and Prometheus 3: `scrapez proxy --jwt` and `scrapez bind --jwt --service --upstream`, each from a
 * fresh token into a state directory of its own, print the `ziti` commands that let their identities dial and
 * bind (run here as printed) and the prometheus.yml lines (checked by promtool and run by Prometheus as printed).
 * The same commands again reuse the identities; bad tokens, a state directory that cannot be written and an
 * identity of another controller are refused with what is wrong and what to do. Prometheus 2.42 scrapes with the
 * printed lines too.
 */
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { promtoolBin } from "../harness/binaries.js";
import { NodeExporter } from "../harness/node-exporter.js";
import { Overlay } from "../harness/overlay.js";
import { freePort, waitUntil } from "../harness/ports.js";
import { ManagedProcess, runCommand, tempDir, type CommandResult } from "../harness/process.js";
import { Prometheus } from "../harness/prometheus.js";
import { cliPath } from "../harness/scrapez.js";

let overlay: Overlay;
let exporter: NodeExporter;
let prometheus: Prometheus | undefined;
let work: string;
/** The `ziti` CLI's login lives under this HOME, `ziti` itself on this PATH. */
let zitiEnv: NodeJS.ProcessEnv;
const procs: ManagedProcess[] = [];

/** A `scrapez` process of the CLI in dist/ with these arguments. */
function scrapez(name: string, args: string[], user?: { uid: number; gid: number; groups: number[] }) {
  const dir = tempDir(name);
  chmodSync(dir, 0o755); // its cwd, readable by another user too
  const p = new ManagedProcess({ name, command: process.execPath, args: [cliPath, ...args], ownDir: dir, user });
  procs.push(p);
  return p;
}

/** Runs a scrapez command to its end. */
function scrapezOnce(args: string[]): Promise<CommandResult> {
  return runCommand(process.execPath, [cliPath, ...args], { timeoutMs: 60_000 });
}

/** Writes a token file; returns its path. */
function tokenFile(name: string, jwt: string): string {
  const f = join(work, `${name}.jwt`);
  writeFileSync(f, jwt, { mode: 0o644 });
  return f;
}

/** The YAML block printed after `header`: the header's comment lines and every line up to the next plain line. */
function printedYaml(out: string, header: RegExp): string {
  const lines = out.split("\n");
  const start = lines.findIndex((l) => header.test(l));
  expect(start, `no block ${header} in:\n${out}`).toBeGreaterThanOrEqual(0);
  const block: string[] = [];
  for (const l of lines.slice(start)) {
    if (!(l.startsWith("#") || l.startsWith(" ") || l.startsWith("-") || l === "scrape_configs:")) break;
    block.push(l);
  }
  return block.join("\n") + "\n";
}

/** The `ziti edge ...` command lines printed after `marker`. */
function printedCommands(out: string, marker: RegExp): string[] {
  const at = out.search(marker);
  expect(at, `no ${marker} in:\n${out}`).toBeGreaterThanOrEqual(0);
  const lines = out.slice(at).split("\n");
  const cmds: string[] = [];
  for (const l of lines.slice(1)) {
    if (l.startsWith("#")) continue;
    if (!l.startsWith("ziti ")) break;
    cmds.push(l);
  }
  return cmds;
}

/** Runs printed commands as a shell runs them, logged in to the overlay's controller. */
async function runAsPrinted(cmds: string[]): Promise<void> {
  for (const c of cmds) {
    const r = await runCommand("sh", ["-c", c], { env: zitiEnv, timeoutMs: 60_000 });
    expect(r.code, `${c}\n${r.stdout}\n${r.stderr}`).toBe(0);
  }
}

function promtoolCheck(yaml: string, name: string): Promise<CommandResult> {
  const f = join(work, name);
  writeFileSync(f, yaml);
  return runCommand(promtoolBin(), ["check", "config", f]);
}

const mode = (p: string) => statSync(p).mode & 0o777;
/** The files in a directory (none when it was not made). */
const filesIn = (dir: string): string[] => (existsSync(dir) ? readdirSync(dir) : []);

beforeAll(async () => {
  work = tempDir("onboard");
  chmodSync(work, 0o755);
  overlay = await Overlay.start();
  exporter = await NodeExporter.start();
  const bin = join(work, ".bin");
  const home = join(work, ".home");
  for (const d of [bin, home]) mkdirSync(d);
  symlinkSync(overlay.zitiBin, join(bin, "ziti"));
  zitiEnv = { ...process.env, PATH: `${bin}:${process.env.PATH ?? ""}`, HOME: home };
  await runAsPrinted([`ziti edge login 127.0.0.1:${overlay.ctrlPort} -u admin -p admin --yes`]);
}, 120_000);

afterAll(async () => {
  await prometheus?.close();
  for (const p of procs.reverse()) await p.close();
  await exporter?.close();
  await overlay?.close();
});

describe("scrapez bind --jwt and scrapez proxy --jwt: one command from token to scraped exporter", () => {
  let proxyPort: number;
  let proxyArgs: string[];
  let bindArgs: string[];
  let proxyState: string;
  let bindState: string;
  let bindJwt: string;
  let proxyJwt: string;

  it("from fresh tokens (two exporters on the bind): both enroll into 0700 state dirs (identity 0600), print the ziti commands they need, which run as printed; the printed prometheus.yml passes promtool and Prometheus 3.16 and 2.42 scrape node_exporter with it", async () => {
    const proxyRef = await overlay.createIdentity("prometheus-central");
    const bindRef = await overlay.createIdentity("host-a");
    proxyJwt = tokenFile("prometheus-central", proxyRef.jwt);
    bindJwt = tokenFile("host-a", bindRef.jwt);
    proxyState = join(work, "proxy-state");
    bindState = join(work, "bind-state");
    proxyPort = await freePort();

    proxyArgs = ["proxy", "--jwt", proxyJwt, "--state-dir", proxyState, "--listen", `127.0.0.1:${proxyPort}`];
    const proxy = scrapez("proxy", proxyArgs).start();
    // Authenticated, the service list loaded and empty: no policy lets it dial anything yet.
    await proxy.waitForLog(/may dial no service yet/, 60_000);
    const proxyOut = proxy.logTail();
    expect(proxyOut).toMatch(/scrapez proxy: enrolled identity id \S+ of controller https:\/\/127\.0\.0\.1:\d+ into /);
    const dial = printedCommands(proxyOut, /may dial no service yet/);
    expect(dial).toEqual([
      "ziti edge create service-policy prometheus-central-dial Dial --service-roles '#scrapez' --identity-roles @prometheus-central",
    ]);
    await runAsPrinted(dial);

    bindArgs = [
      "bind",
      "--jwt",
      bindJwt,
      "--state-dir",
      bindState,
      "--service",
      "node",
      "--upstream",
      exporter.url,
      // A second exporter (the same node_exporter, its path given): the pair repeats.
      "--service",
      "node-b",
      "--upstream",
      `${exporter.url}/metrics`,
      "--proxy-url",
      `http://127.0.0.1:${proxyPort}`,
    ];
    const bind = scrapez("bind", bindArgs).start();
    // The services do not exist yet: the bind says so, with the commands that create them and let host-a bind them.
    for (const svc of ["node", "node-b"]) {
      const marker = new RegExp(`service "${svc}" is not bound yet`);
      await bind.waitForLog(marker, 60_000);
      const cmds = printedCommands(bind.logTail(), marker);
      expect(cmds).toEqual([
        `ziti edge create service ${svc} --role-attributes scrapez`,
        `ziti edge create service-policy ${svc}-bind Bind --service-roles @${svc} --identity-roles @host-a`,
      ]);
      await runAsPrinted(cmds);
    }
    for (const svc of ["node", "node-b"]) {
      await bind.waitForLog(
        new RegExp(`service "${svc}" bound; the central scrapez proxy reaches it as http://${svc}/metrics`),
        90_000,
      );
      await proxy.waitForLog(
        new RegExp(`service "${svc}" discovered: the job above scrapes it as target ${svc}`),
        60_000,
      );
    }

    for (const [dir, file] of [
      [proxyState, "proxy-identity.json"],
      [bindState, "bind-identity.json"],
    ] as const) {
      expect(mode(dir)).toBe(0o700);
      expect(mode(join(dir, file))).toBe(0o600);
    }

    // What an operator sees on stdout (the README shows it): everything but the JSON log lines.
    const printed = (p: ManagedProcess) =>
      p
        .logTail()
        .split("\n")
        .filter((l) => l && !l.startsWith("{"))
        .join("\n");
    console.log(
      `[onboard] scrapez proxy printed:\n${printed(proxy)}\n[onboard] scrapez bind printed:\n${printed(bind)}`,
    );
    const proxyYaml = printedYaml(proxy.logTail(), /^# For prometheus\.yml/);
    expect(proxyYaml).toContain(`proxy_url: http://127.0.0.1:${proxyPort}\n`);
    expect(proxyYaml).toContain(`- url: http://127.0.0.1:${proxyPort}/sd\n`);
    const bindYaml = printedYaml(bind.logTail(), /^# For the central Prometheus/);
    expect(bindYaml).toContain("job_name: node\n");
    expect(bindYaml).toContain("job_name: node-b\n");
    for (const [name, yaml] of [
      ["proxy-printed.yml", proxyYaml],
      ["bind-printed.yml", bindYaml],
    ] as const) {
      const r = await promtoolCheck(yaml, name);
      expect(r.code, `${yaml}\n${r.stdout}${r.stderr}`).toBe(0);
    }

    // As printed, under a global section a prometheus.yml has anyway (a short interval keeps the test short), by
    // Prometheus 3.16 and 2.42; the 3.16 one keeps running for the next test.
    const global = "global:\n  scrape_interval: 2s\n";
    for (const version of ["2", "3"] as const) {
      const p = await Prometheus.start(global + proxyYaml, { version });
      for (const svc of ["node", "node-b"]) {
        const viaSd = await p.waitForQuery(`node_cpu_seconds_total{job="ziti",service="${svc}"}`, 60_000);
        expect(viaSd.length).toBeGreaterThan(0);
      }
      await p.reload(global + bindYaml);
      for (const job of ["node", "node-b"]) await p.waitForQuery(`up{job="${job}"} == 1`, 60_000);
      if (version === "3") prometheus = p;
      else await p.close();
    }
  }, 300_000);

  it("the same commands again reuse the enrolled identities (the tokens are used up; the bind's token file is even gone) and are scraped again", async () => {
    const before = {
      proxy: readFileSync(join(proxyState, "proxy-identity.json"), "utf8"),
      bind: readFileSync(join(bindState, "bind-identity.json"), "utf8"),
    };
    for (const p of procs.splice(0)) await p.close();
    unlinkSync(bindJwt);
    const restarted = Date.now() / 1000;

    const proxy = scrapez("proxy-again", proxyArgs).start();
    const bind = scrapez("bind-again", bindArgs).start();
    await bind.waitForLog(/service "node" bound/, 90_000);
    await proxy.waitForLog(/service "node" discovered/, 60_000);
    expect(proxy.logTail()).toMatch(
      /scrapez proxy: using the identity enrolled earlier: \S+proxy-identity\.json \(identity \S+, controller https:\/\/127\.0\.0\.1:\d+, key sha256:\S+\); the token \S+ is not needed any more/,
    );
    expect(bind.logTail()).toMatch(
      /scrapez bind: using the identity enrolled earlier: \S+bind-identity\.json .*\(cannot read the token file \S+ \(ENOENT\): not needed, the identity is enrolled\)/,
    );
    expect(readFileSync(join(proxyState, "proxy-identity.json"), "utf8")).toBe(before.proxy);
    expect(readFileSync(join(bindState, "bind-identity.json"), "utf8")).toBe(before.bind);
    // Scraped through the restarted pair: a sample newer than the restart, up.
    await prometheus!.waitForQuery(`up{job="node"} == 1 and timestamp(up{job="node"}) > ${restarted}`, 60_000);
  }, 180_000);

  it("refuses a garbage, an expired and a used-up token with what is wrong and what to do, and writes no identity", async () => {
    const fresh = (n: string) => join(work, `fresh-${n}`);
    const garbage = tokenFile("garbage", "this is not a token\n");
    const expiredRef = await overlay.createIdentity("expired-host");
    // Its token replaced by one that expires in 2 s (the controller's own enrollments API), then left to expire.
    const identity = await overlay.api<{ data: { enrollment: { ott: { id: string } } } }>(
      "GET",
      `identities/${expiredRef.id}`,
    );
    await overlay.api("DELETE", `enrollments/${identity.data.enrollment.ott.id}`);
    const created = await overlay.api<{ data: { id: string } }>("POST", "enrollments", {
      method: "ott",
      identityId: expiredRef.id,
      expiresAt: new Date(Date.now() + 2_000).toISOString(),
    });
    const expired = await overlay.api<{ data: { jwt: string } }>("GET", `enrollments/${created.data.id}`);
    const expiredJwt = tokenFile("expired", expired.data.jwt);
    await new Promise((r) => setTimeout(r, 2_500));

    const cases: [string, string, RegExp][] = [
      [
        "garbage",
        garbage,
        /the token \S+garbage\.jwt: expected 3 dot-separated base64url parts .*pass the content of the \.jwt file/,
      ],
      [
        "expired",
        expiredJwt,
        /the token \S+expired\.jwt: enrollment token expired at \S+: create a new one \(e\.g\. `ziti edge create enrollment ott <identity>`\)/,
      ],
      [
        "used",
        proxyJwt,
        /the token \S+prometheus-central\.jwt: enrollment with https:\/\/127\.0\.0\.1:\d+: the token was already used or is unknown to the controller .*create a new enrollment for the identity/,
      ],
    ];
    for (const [name, jwt, why] of cases) {
      const r = await scrapezOnce([
        "bind",
        "--jwt",
        jwt,
        "--state-dir",
        fresh(name),
        "--service",
        "node",
        "--upstream",
        exporter.url,
      ]);
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toMatch(/^scrapez bind: \[SCRAPEZ_IDENTITY_UNUSABLE\] /);
      expect(r.stderr).toMatch(why);
      expect(filesIn(fresh(name)), `bind, ${name} token`).toEqual([]);
      const p = await scrapezOnce(["proxy", "--jwt", jwt, "--state-dir", fresh(`${name}-proxy`)]);
      expect(p.code, p.stderr).toBe(1);
      expect(p.stderr).toMatch(/^scrapez proxy: \[SCRAPEZ_IDENTITY_UNUSABLE\] the token /);
      expect(p.stderr).toMatch(why);
      // Nothing written: no identity file, no status file, no leftover of the write test.
      expect(filesIn(fresh(`${name}-proxy`)), `proxy, ${name} token`).toEqual([]);
    }
  }, 120_000);

  it("refuses a state dir it cannot write before it uses the token, which then still enrolls", async () => {
    const ref = await overlay.createIdentity("readonly-host");
    const jwt = tokenFile("readonly-host", ref.jwt);
    const readonly = join(work, "readonly-state");
    mkdirSync(readonly, { mode: 0o755 });
    chmodSync(readonly, 0o555);
    // root writes anywhere: then the command runs as nobody, for whom the directory is read-only.
    const asRoot = process.getuid?.() === 0;
    const args = ["bind", "--jwt", jwt, "--state-dir", readonly, "--service", "node", "--upstream", exporter.url];
    const p = scrapez("bind-readonly", args, asRoot ? { uid: 65534, gid: 65534, groups: [65534] } : undefined).start();
    await waitUntil(() => !p.running, 30_000, "scrapez bind exits");
    expect(p.exitCode, p.logTail()).toBe(1);
    expect(p.logTail()).toMatch(
      new RegExp(
        `scrapez bind: \\[SCRAPEZ_STATE_DIR_UNUSABLE\\] the identity's directory ${readonly} is not writable \\(EACCES\\): ` +
          "scrapez keeps the enrolled identity there\\. Make it writable for this user \\(uid \\d+\\), or choose another with --state-dir",
      ),
    );
    // The token was not used: it enrolls now, in a directory that can be written.
    expect(readdirSync(readonly)).toEqual([]);
    const ok = await scrapezOnce(["enroll", "--jwt", jwt, "--out", join(work, "readonly-host.json")]);
    expect(ok.code, ok.stderr).toBe(0);
  }, 60_000);

  it("refuses a token of another controller, or of another identity, when the state dir holds an identity, naming both and advising what the command line can change", async () => {
    /** A bind config naming the identity the state dir holds (as a config file would). */
    const bindConfig = () => {
      const f = join(work, "mismatch-bind.yaml");
      writeFileSync(
        f,
        `identity: ${join(bindState, "bind-identity.json")}\nstatusFile: ${join(work, "mismatch-status.json")}\n` +
          `targets:\n  - service: node\n    upstream: ${exporter.url}\n`,
      );
      return f;
    };
    const other = await Overlay.start();
    try {
      const ref = await other.createIdentity("host-a-elsewhere");
      const jwt = tokenFile("elsewhere", ref.jwt);
      const r = await scrapezOnce(bindArgs.map((a) => (a === bindJwt ? jwt : a)));
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toContain(
        `scrapez bind: [SCRAPEZ_IDENTITY_UNUSABLE] ${join(bindState, "bind-identity.json")} holds an identity of ` +
          `controller ${overlay.ctrlUrl}, but the token ${jwt} is from controller ${other.ctrlUrl}. To join ` +
          `${other.ctrlUrl} too, give this command another --state-dir; to move to it, remove`,
      );
      // The same identity file named by a config file: --state-dir does not apply there (it is refused beside
      // --config), so the advice names the config's `identity`.
      const r2 = await scrapezOnce(["bind", "--config", bindConfig(), "--jwt", jwt]);
      expect(r2.code, r2.stderr).toBe(1);
      expect(r2.stderr).toContain(
        `scrapez bind: [SCRAPEZ_IDENTITY_UNUSABLE] ${join(bindState, "bind-identity.json")} holds an identity of ` +
          `controller ${overlay.ctrlUrl}, but the token ${jwt} is from controller ${other.ctrlUrl}. To join ` +
          `${other.ctrlUrl} too, point \`identity\` in ${bindConfig()} at another file (or give --identity); to ` +
          "move to it, remove",
      );
      expect(r2.stderr).not.toContain("--state-dir");
    } finally {
      await other.close();
    }
    const sibling = await overlay.createIdentity("host-b");
    const jwt = tokenFile("host-b", sibling.jwt);
    const r = await scrapezOnce(bindArgs.map((a) => (a === bindJwt ? jwt : a)));
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toMatch(
      new RegExp(
        `holds identity \\S+ of controller \\S+, but the token \\S+host-b\\.jwt is for identity ${sibling.id}\\. To run as ` +
          `${sibling.id}, give this command another --state-dir, or remove \\S+bind-identity\\.json and run it again`,
      ),
    );
    // The advice follows the command line: the identity file from a config file (bind's `identity`, the proxy's
    // `identities`), or from --identity, is not moved by --state-dir.
    const proxyConfig = join(work, "mismatch-proxy.yaml");
    writeFileSync(proxyConfig, `identities:\n  - ${join(proxyState, "proxy-identity.json")}\n`);
    const advised: [string[], string][] = [
      [
        ["bind", "--config", bindConfig(), "--jwt", jwt],
        `point \`identity\` in ${bindConfig()} at another file (or give --identity)`,
      ],
      [
        ["proxy", "--config", proxyConfig, "--jwt", jwt],
        `point \`identities\` in ${proxyConfig} at another file (or give --identity)`,
      ],
      [
        [
          "bind",
          "--jwt",
          jwt,
          "--identity",
          join(bindState, "bind-identity.json"),
          "--service",
          "node",
          "--upstream",
          exporter.url,
        ],
        "give this command another --identity",
      ],
    ];
    for (const [args, advice] of advised) {
      const a = await scrapezOnce(args);
      expect(a.code, a.stderr).toBe(1);
      expect(a.stderr).toMatch(/^scrapez (bind|proxy): \[SCRAPEZ_IDENTITY_UNUSABLE\] /);
      expect(a.stderr).toContain(`is for identity ${sibling.id}. To run as ${sibling.id}, ${advice}, or remove `);
      expect(a.stderr, args.join(" ")).not.toContain("--state-dir");
    }
  }, 120_000);

  it("with a config file, --jwt enrolls into the identity file the config names, once, and binds; --service or --state-dir with it are usage errors", async () => {
    const ref = await overlay.createIdentity("host-c", { roleAttributes: ["configured"] });
    await overlay.createService("node-c", { roleAttributes: ["configured"] });
    await overlay.createServicePolicy("node-c-bind", "Bind", ["#configured"], ["#configured"]);
    const jwt = tokenFile("host-c", ref.jwt);
    const dir = join(work, "configured");
    mkdirSync(dir);
    const config = join(dir, "bind.yaml");
    writeFileSync(
      config,
      `identity: ids/host-c.json\nstatusFile: status.json\ntargets:\n  - service: node-c\n    upstream: ${exporter.url}\n`,
    );
    for (const extra of [
      ["--service", "x", "--upstream", exporter.url],
      ["--state-dir", dir],
    ]) {
      const r = await scrapezOnce(["bind", "--config", config, "--jwt", jwt, ...extra]);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toMatch(/are for a run without --config|is for a run without --config/);
    }
    const bind = scrapez("bind-configured", ["bind", "--config", config, "--jwt", jwt]).start();
    await bind.waitForLog(/service "node-c" bound/, 90_000);
    const identity = join(dir, "ids", "host-c.json");
    expect(bind.logTail()).toContain(
      `scrapez bind: enrolled identity id ${ref.id} of controller ${overlay.ctrlUrl} into ${identity} (mode 0600)`,
    );
    expect(mode(join(dir, "ids"))).toBe(0o700);
    expect(mode(identity)).toBe(0o600);
    await bind.stop();
    const again = scrapez("bind-configured-again", ["bind", "--config", config, "--jwt", jwt]).start();
    await again.waitForLog(/service "node-c" bound/, 90_000);
    expect(again.logTail()).toContain(
      `scrapez bind: using the identity enrolled earlier: ${identity} (identity ${ref.id}`,
    );
  }, 120_000);
});
