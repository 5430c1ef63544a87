/** `scrapez identity key --identity <file>`: the pin of an identity's key, for a bind target's `allow.keys`. */
import { parseArgs } from "node:util";
import { type Command } from "./registry.js";

const HELP = `Usage: scrapez identity key --identity <identity.json> [--offline]

Prints the identity's name and id (asked from the controller; --offline skips that) and the pin of its key,
sha256:<base64url>, to paste into a scrapez bind target's allow.keys:

  allow:
    identities: [<name>]
    keys: { <name>: "sha256:..." }

Only callers that prove they hold a pinned key are admitted by an allow-list (see docs/bind.md, "Verified
callers"). The pin changes when the identity is re-enrolled or its certificate is renewed with a new key.
`;

export const command: Command = {
  async run(argv) {
    const [sub, ...rest] = argv;
    if (sub === "-h" || sub === "--help") {
      process.stdout.write(HELP);
      return 0;
    }
    if (sub !== "key") {
      process.stderr.write(`scrapez identity: unknown subcommand ${sub ? `"${sub}"` : "(none)"}\n\n${HELP}`);
      return 2;
    }
    const { values } = parseArgs({
      args: rest,
      options: {
        identity: { type: "string", short: "i" },
        offline: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    });
    if (values.help) {
      process.stdout.write(HELP);
      return 0;
    }
    if (!values.identity) {
      process.stderr.write(`scrapez identity key: --identity is required\n\n${HELP}`);
      return 2;
    }
    const { loadIdentity, identityKeyPin, ZitiContext } = await import("../ziti/index.js");
    let identity;
    try {
      identity = await loadIdentity(values.identity);
    } catch (err) {
      const e = err as Error & { code?: string };
      process.stderr.write(`scrapez identity key: ${e.code ? `[${e.code}] ` : ""}${e.message}\n`);
      return 1;
    }
    const pin = identityKeyPin(identity.certPem);
    let name = "(unknown: --offline)";
    let id = identity.name;
    if (!values.offline) {
      try {
        const ctx = await ZitiContext.fromIdentity(identity, { servicePollMs: 0 });
        name = ctx.identityName;
        id = ctx.identityId ?? id;
        await ctx.close();
      } catch (err) {
        name = `(unknown: the controller did not answer: ${(err as Error).message})`;
      }
    }
    const known = !name.startsWith("(");
    process.stdout.write(
      `name: ${name}\nid:   ${id}\nkey:  ${pin}\n\nfor allow.keys:\n  ${known ? name : "<name>"}: "${pin}"\n`,
    );
    return 0;
  },
};
