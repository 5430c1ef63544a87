/**
 * One-command onboarding (`--jwt`) in the image, as docs/container.md#one-command-onboarding---jwt-in-a-container
 * says to run it: the image built from the repository's Dockerfile (test/harness/docker.ts), run hardened
 * (`--read-only --tmpfs /tmp --user 10001:10001 --cap-drop ALL --security-opt no-new-privileges`) against the real
 * test overlay on docker0's address (198.18.200.1), with a real one-time token of the real controller:
 * - without a writable state directory (the default one is on the read-only root; a named volume as the engine makes
 *   it is root's), `scrapez bind --jwt` stops before it uses the token;
 * - the docs' commands as written (the state directory made as they make it, then their `docker run -d`; only the
 *   container's name, its label, the network and the tag substituted) enroll with that same token (it was still
 *   good) into the host directory, bind, and the exec probe passes on the status file there; the same `docker run`
 *   again, in a new container, reuses the identity.
 */
import { chmodSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  BRIDGE_HOST,
  docker,
  dockerOk,
  HARDENED,
  LABEL,
  labelArgs,
  removeLabelled,
  requireEngine,
  RUN_ID,
  scrapezImage,
} from "../harness/docker.js";
import { repoRoot } from "../harness/binaries.js";
import { Overlay, type IdentityRef } from "../harness/overlay.js";
import { waitUntil } from "../harness/ports.js";
import { removeDir, runCommand, tempDir } from "../harness/process.js";

const HOST = BRIDGE_HOST;
/** The docs' names: the service `node`, the token `$PWD/host-a.jwt`, the state directory `$PWD/state`. */
const SERVICE = "node";
const pwd = tempDir("image-onboard");
const token = join(pwd, "host-a.jwt");
const state = join(pwd, "state");
const volume = `scrapez-onboard-state-${RUN_ID}`;
let image: string;
let overlay: Overlay;
let ref: IdentityRef;

/** The documented command line: the token read-only, the exporter given as a flag pair. */
const bindArgs = (stateDir?: string) => [
  "bind",
  "--jwt",
  "/token/host-a.jwt",
  ...(stateDir ? ["--state-dir", stateDir] : []),
  "--service",
  SERVICE,
  "--upstream",
  "http://127.0.0.1:9100",
];
const tokenMount = ["-v", `${token}:/token/host-a.jwt:ro`];

/** The lines of docs/container.md's sh block about `--jwt` (continuations joined). */
function docsJwtBlock(): string[] {
  const text = readFileSync(join(repoRoot, "docs/container.md"), "utf8");
  const block = [...text.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!).find((b) => b.includes(" --jwt "));
  if (!block) throw new Error("docs/container.md has no sh block with --jwt");
  return block
    .replace(/\\\n\s*/g, "")
    .split("\n")
    .map((l) =>
      l
        .replace(/\s+#.*$/, "")
        .replace(/\s+/g, " ")
        .trim(),
    )
    .filter((l) => l !== "");
}

/** `docker run --rm` of the image, hardened, to its end. */
async function runOnce(runArgs: string[], cmd: string[]) {
  return docker(["run", "--rm", ...labelArgs(), ...HARDENED, ...runArgs, image, ...cmd], { timeoutMs: 120_000 });
}

beforeAll(async () => {
  await requireEngine();
  [image, overlay] = await Promise.all([scrapezImage(), Overlay.start({ host: HOST })]);
  await overlay.service(SERVICE, { dial: ["#nobody"], bind: ["#onboard-servers"] });
  ref = await overlay.createIdentity("host-c", ["onboard-servers"]);
  chmodSync(pwd, 0o755);
  writeFileSync(token, ref.jwt, { mode: 0o644 });
  await dockerOk(["volume", "create", ...labelArgs(), volume]);
}, 900_000);

afterAll(async () => {
  await removeLabelled();
  await docker(["volume", "rm", "-f", volume]);
  await overlay?.close();
  removeDir(pwd);
}, 120_000);

describe("scrapez bind --jwt in the image", () => {
  it("without a writable state directory stops before it uses the token: not on the read-only root, not in a volume root owns", async () => {
    const root = await runOnce(tokenMount, bindArgs());
    expect(root.code, root.stderr).toBe(1);
    expect(root.stderr).toMatch(
      /^scrapez bind: \[SCRAPEZ_STATE_DIR_UNUSABLE\] the identity's directory \/\.local\/state\/scrapez cannot be made \(\w+\): .*uid 10001.*--state-dir/,
    );
    const owned = await runOnce([...tokenMount, "-v", `${volume}:/state`], bindArgs("/state"));
    expect(owned.code, owned.stderr).toBe(1);
    expect(owned.stderr).toMatch(
      /^scrapez bind: \[SCRAPEZ_STATE_DIR_UNUSABLE\] the identity's directory \/state is not writable \(EACCES\)/,
    );
    // The token is still good: the next test enrolls with it.
  }, 300_000);

  it("the docs' commands, as written: enroll into the host directory uid 10001 owns, bind, pass the exec probe on the status file there; the same `docker run` in a new container reuses the identity", async () => {
    const [mkdir, run, logs, ...rest] = docsJwtBlock();
    expect([mkdir, run?.slice(0, 13), logs, rest]).toEqual([
      "mkdir -p state && sudo chown 10001:10001 state && chmod 700 state",
      "docker run -d",
      "docker logs scrapez-bind",
      [],
    ]);
    // Run as root here: sudo is not needed (nor installed).
    const made = await runCommand("bash", ["-c", mkdir!.replace("sudo ", "")], { cwd: pwd });
    expect(made.code, made.stderr).toBe(0);
    expect([statSync(state).uid, statSync(state).mode & 0o777]).toEqual([10001, 0o700]);
    // Substituted: the container's name and label (teardown finds it), a network of its own instead of the
    // exporter's (nothing here scrapes it), the tag.
    const start = async (name: string) => {
      const cmd = run!
        .replace("--name scrapez-bind", `--name ${name} --label ${LABEL}=${RUN_ID}`)
        .replace("--network container:node-exporter", "--network bridge")
        .replace(" scrapez:0.1.0 ", ` ${image} `);
      expect(cmd).toContain(`--name ${name} `);
      const r = await runCommand("bash", ["-c", cmd], { cwd: pwd, timeoutMs: 120_000 });
      expect(r.code, r.stderr).toBe(0);
    };
    const bound = new RegExp(`service "${SERVICE}" bound`);
    let seen = "";
    /** The docs' `docker logs` until the service is bound (the log in the failure report). */
    const waitBound = (name: string) =>
      waitUntil(
        async () => {
          const r = await docker(["logs", name]);
          seen = `${r.stdout}${r.stderr}`;
          return bound.test(seen);
        },
        90_000,
        `${name}: service bound`,
        () => seen,
      );

    const first = `onboard-bind-${RUN_ID}`;
    await start(first);
    await waitBound(first);
    expect(seen).toContain(
      `scrapez bind: enrolled identity id ${ref.id} of controller ${overlay.ctrlUrl} into /state/bind-identity.json (mode 0600)`,
    );
    // What the docs say it prints: the job for prometheus.yml.
    expect(seen).toMatch(/^ {2}- job_name: node$/m);
    const file = statSync(join(state, "bind-identity.json"));
    expect([file.uid, file.mode & 0o777]).toEqual([10001, 0o600]);
    expect(JSON.parse(readFileSync(join(state, "bind-identity.json"), "utf8"))).toMatchObject({
      ztAPI: expect.stringContaining(HOST),
    });
    // docs/container.md's probe.
    const probe = await docker([
      "exec",
      first,
      "scrapez",
      "probe",
      "--ready",
      "--status-file",
      "/state/bind-status.json",
    ]);
    expect(probe.code, `${probe.stdout}${probe.stderr}`).toBe(0);
    await dockerOk(["stop", "-t", "15", first], { timeoutMs: 60_000 });
    expect((await dockerOk(["inspect", "--format", "{{.State.ExitCode}}", first])).trim()).toBe("0");
    await dockerOk(["rm", first]);

    const again = `onboard-bind-again-${RUN_ID}`;
    await start(again);
    await waitBound(again);
    expect(seen).toMatch(
      /scrapez bind: using the identity enrolled earlier: \/state\/bind-identity\.json \(identity \S+, controller \S+, key sha256:\S+\); the token \/token\/host-a\.jwt is not needed any more/,
    );
    await dockerOk(["stop", "-t", "15", again], { timeoutMs: 60_000 });
  }, 300_000);
});
