/**
 * What a reload of `scrapez bind` can apply. Every field of the config either takes effect on reload (see
 * BindServer.apply and src/cli/bind.ts) or is listed here: a new config that changes one of these is refused as a
 * whole, naming each, and the running config stays in force. docs/configuration.md has the table.
 */
import { AppErrorCodes, ScrapezError } from "../common/errors.js";
import type { BindConfig } from "./config.js";

/**
 * Fields read once, when the overlay context is opened: the identity file, how it authenticates, when its
 * certificate is renewed. Changing them means a new context, which is a restart.
 */
export const RESTART_FIELDS = ["identity", "zitiAuth", "renewCertBeforeDays", "egressProxy"] as const;

/** The fields of RESTART_FIELDS whose value differs between the running config and the new one. */
export function restartFields(running: BindConfig, next: BindConfig): string[] {
  return RESTART_FIELDS.filter((k) => next[k] !== running[k]);
}

/** A reload refused because it changes fields that apply only at start. */
export class ReloadNeedsRestart extends ScrapezError {
  constructor(readonly fields: readonly string[]) {
    super(
      AppErrorCodes.RELOAD_NEEDS_RESTART,
      `${fields.join(", ")} changed: restart scrapez bind to apply ${fields.length > 1 ? "them" : "it"} ` +
        "(nothing of the new config was applied)",
    );
    this.name = "ReloadNeedsRestart";
  }
}

/** Throws ReloadNeedsRestart when `next` changes a field of RESTART_FIELDS. */
export function checkReloadable(running: BindConfig, next: BindConfig): void {
  const fields = restartFields(running, next);
  if (fields.length > 0) throw new ReloadNeedsRestart(fields);
}
