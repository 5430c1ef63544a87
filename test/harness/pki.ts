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
