/** `scrapez enroll --jwt <file> --out <identity.json>`: enrollment with our own code, no ziti CLI needed. */
import { readFile } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { parseArgs } from "node:util";
import { prepareDir } from "./onboard.js";
import { type Command } from "./registry.js";

const HELP = `Usage: scrapez enroll --jwt <token.jwt> --out <identity.json> [--key-type EC|RSA]

Enrolls a new OpenZiti identity from its one-time enrollment token (JWT) and writes the identity file
(mode 0600), creating its directory (0700) if needed. The directory is checked writable before the token is used
(a token is good once), and the token against the controller that issued it before anything is sent.
`;

export const command: Command = {
  async run(argv) {
    const { values } = parseArgs({
      args: argv,
      options: {
        jwt: { type: "string" },
        out: { type: "string" },
        "key-type": { type: "string", default: "EC" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    });
    if (values.help) {
      process.stdout.write(HELP);
      return 0;
    }
    if (!values.jwt || !values.out) {
      process.stderr.write(`scrapez enroll: --jwt and --out are required\n\n${HELP}`);
      return 2;
    }
    const keyType = values["key-type"]?.toUpperCase();
    if (keyType !== "EC" && keyType !== "RSA") {
      process.stderr.write(`scrapez enroll: --key-type must be EC or RSA, not "${values["key-type"]}"\n`);
      return 2;
    }
    let jwt: string;
    try {
      jwt = (await readFile(values.jwt, "utf8")).trim();
    } catch (err) {
      process.stderr.write(`scrapez enroll: cannot read the token file ${values.jwt}: ${(err as Error).message}\n`);
      return 1;
    }
    const { enroll, identityKeyPin, saveIdentity } = await import("../ziti/index.js");
    try {
      prepareDir(dirname(resolve(values.out)), "the directory of --out", "give another --out");
      const identity = await enroll({ jwt, keyType });
      await saveIdentity(values.out, identity);
      process.stdout.write(
        `enrolled "${identity.name}"; identity written to ${values.out} (mode 0600); key ${identityKeyPin(identity.certPem)}\n`,
      );
      return 0;
    } catch (err) {
      const e = err as Error & { code?: string };
      process.stderr.write(`scrapez enroll: ${e.code ? `[${e.code}] ` : ""}${e.message}\n`);
      return 1;
    }
  },
};
