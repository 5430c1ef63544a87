/** Throwaway PKIs for TLS tests. */
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/** A throwaway PKI made with openssl: a CA, a server cert for 127.0.0.1/localhost, a client cert, and a rogue client. */
export function makePki(dir: string): Record<string, string> {
  mkdirSync(dir, { recursive: true });
  const run = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  const key = (name: string) => ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", name];
  run("req", "-x509", ...key("ca.key"), "-out", "ca.crt", "-days", "2", "-subj", "/CN=scrapez-unit-ca");
  run("req", "-x509", ...key("rogue-ca.key"), "-out", "rogue-ca.crt", "-days", "2", "-subj", "/CN=rogue-ca");
  const leaf = (name: string, ca: string, ext: string) => {
    run("req", ...key(`${name}.key`), "-out", `${name}.csr`, "-subj", `/CN=${name}`);
    writeFileSync(join(dir, `${name}.ext`), `${ext}\n`);
    run(
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      `${ca}.crt`,
      "-CAkey",
      `${ca}.key`,
      "-CAcreateserial",
      "-out",
      `${name}.crt`,
      "-days",
      "2",
      "-extfile",
      `${name}.ext`,
    );
  };
  leaf("server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost");
  leaf("client", "ca", "extendedKeyUsage=clientAuth");
  leaf("rogue", "rogue-ca", "extendedKeyUsage=clientAuth");
  const out: Record<string, string> = {};
  for (const f of ["ca.crt", "server.crt", "server.key", "client.crt", "client.key", "rogue.crt", "rogue.key"]) {
    out[f] = join(dir, f);
  }
  return out;
}

/** Key types `issueLeaf` can make. */
export type LeafKey = "ec" | "ec384" | "rsa";

/**
 * Issues one more leaf `<dir>/<name>.{key,crt}` from a CA that `makePki` made (`ca` or `rogue-ca`), with the given
 * key type, subject CN (default: the name) and subjectAltName (`san`, e.g. "DNS:prometheus.monitoring"). Returns the
 * paths.
 */
export function issueLeaf(
  dir: string,
  name: string,
  ca: "ca" | "rogue-ca",
  opts: { key?: LeafKey; cn?: string; san?: string } = {},
): { crt: string; key: string } {
  const run = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  const keyArgs = {
    ec: ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    ec384: ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
    rsa: ["-newkey", "rsa:2048"],
  }[opts.key ?? "ec"];
  run("req", ...keyArgs, "-nodes", "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${opts.cn ?? name}`);
  const san = opts.san ? `subjectAltName=${opts.san}\n` : "";
  writeFileSync(join(dir, `${name}.ext`), `extendedKeyUsage=clientAuth\n${san}`);
  run(
    "x509",
    "-req",
    "-in",
    `${name}.csr`,
    "-CA",
    `${ca}.crt`,
    "-CAkey",
    `${ca}.key`,
    "-CAcreateserial",
    "-out",
    `${name}.crt`,
    "-days",
    "2",
    "-extfile",
    `${name}.ext`,
  );
  return { crt: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
}
