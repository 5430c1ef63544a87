/**
 * Layer 3: a context's certificate renewal. It checks when the identity's certificate is due (a third of its
 * lifetime left by default, or when an administrator asked), extends it with the controller (keeping the key unless
 * a key roll was asked for), writes the identity file back when it can, and retries with back-off. The context hears
 * of each outcome (the "certRenewed" / "certRenewalFailed" events).
 */
import { Backoff } from "../backoff.js";
import { debug } from "../debug.js";
import { ErrorCodes, ZitiError } from "../errors.js";
import type { ControllerClient } from "./controller.js";
import { saveIdentity, type Identity } from "./identity.js";
import { certTimes, makeCsr, renewalDueAt } from "./renew.js";

const log = debug("context");

/** The "certRenewed" event's argument. */
export interface CertRenewedEvent {
  previousNotAfter: Date;
  notAfter: Date;
  /** The identity file was rewritten (atomically, mode 0600). */
  written: boolean;
  /** Why the file was not rewritten (read-only, e.g. a Kubernetes Secret; or loaded without a file). */
  notWrittenReason?: string;
  path?: string;
  /** A new key was made (an administrator asked for a key roll): key pins (`allow.keys`) change. */
  keyRolled: boolean;
}

/** The "certRenewalFailed" event's argument. */
export interface CertRenewalFailedEvent {
  error: Error & { code?: string };
  notAfter: Date;
  retryInMs: number;
}

export interface CertRenewerOptions {
  /** Renew this long before expiry (-1: when a third of the lifetime is left; 0: never). */
  renewCertBeforeMs: number;
  /** How often to check whether the certificate is due. */
  certCheckMs: number;
  /** Our identity's name as the controller knows it, for error messages. */
  identityName: () => string;
  /** The identity holds the new certificate (and key): whatever was made from the old ones goes (at once). */
  credentialsChanged: () => void;
  renewed: (e: CertRenewedEvent) => void;
  failed: (e: CertRenewalFailedEvent) => void;
}

export class CertRenewer {
  readonly #identity: Identity;
  readonly #controller: ControllerClient;
  readonly #opts: CertRenewerOptions;
  #timer: NodeJS.Timeout | undefined;
  readonly #backoff = new Backoff({ initialMs: 60_000, maxMs: 60 * 60_000 });
  #lastRenewalAt = 0;
  #renewing: Promise<void> | undefined;
  #stopped = false;

  constructor(identity: Identity, controller: ControllerClient, opts: CertRenewerOptions) {
    this.#identity = identity;
    this.#controller = controller;
    this.#opts = opts;
  }

  /** Checks in `ms` (and from then on by itself). */
  schedule(ms: number): void {
    clearTimeout(this.#timer);
    if (this.#stopped || this.#opts.renewCertBeforeMs === 0) return;
    this.#timer = setTimeout(() => void this.#check(), Math.min(ms, 2 ** 31 - 1));
    this.#timer.unref();
  }

  /** Stops checking for good. */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
  }

  /** A timer callback: catches everything. Renews when due (or when the controller asked for it). */
  async #check(): Promise<void> {
    const t = certTimes(this.#identity.certPem);
    const before = this.#opts.renewCertBeforeMs >= 0 ? this.#opts.renewCertBeforeMs : undefined;
    const due = renewalDueAt(t, before).getTime();
    const session = this.#controller.session;
    const requested = session?.certExtendRequested === true || session?.certKeyRollRequested === true;
    const now = Date.now();
    // Not twice within an hour: a renewBefore longer than the lifetime the controller issues must not loop.
    const recently = now - this.#lastRenewalAt < 60 * 60_000;
    if ((now < due && !requested) || recently) {
      if (recently && now >= due) {
        log("certificate renewed less than an hour ago and due again: renewBefore exceeds the issued lifetime");
      }
      this.schedule(Math.max(1_000, Math.min(this.#opts.certCheckMs, due - now)));
      return;
    }
    try {
      await this.renew();
      this.#backoff.reset();
      this.schedule(this.#opts.certCheckMs);
    } catch (err) {
      const retryInMs = this.#backoff.next();
      log("certificate renewal failed: %s; retrying in %d ms", (err as Error).message, retryInMs);
      this.#opts.failed({ error: err as Error, notAfter: t.notAfter, retryInMs });
      this.schedule(retryInMs);
    }
  }

  /** Extends the certificate now; concurrent calls share one renewal. */
  renew(): Promise<void> {
    this.#renewing ??= this.#renew().finally(() => (this.#renewing = undefined));
    return this.#renewing;
  }

  async #renew(): Promise<void> {
    const id = this.#identity;
    const previous = certTimes(id.certPem);
    const session = this.#controller.session ?? (await this.#controller.authenticate());
    if (!session.certExtendable) {
      throw new ZitiError(
        ErrorCodes.AUTH_FAILED,
        `identity "${this.#opts.identityName()}": the controller cannot extend this certificate (not issued by the ` +
          "network, e.g. a third-party CA): renew it with its issuer",
      );
    }
    const rollKey = session.certKeyRollRequested;
    const { csrPem, keyPem } = await makeCsr(id.name, id.keyPem, rollKey);
    const { certPem } = await this.#controller.renewCertificate(csrPem, keyPem);
    id.certPem = certPem;
    id.keyPem = keyPem;
    this.#opts.credentialsChanged();
    this.#lastRenewalAt = Date.now();
    const now = certTimes(certPem);
    let written = false;
    let notWrittenReason: string | undefined;
    if (id.path) {
      try {
        await saveIdentity(id.path, id);
        written = true;
      } catch (err) {
        notWrittenReason = (err as Error).message;
      }
    } else {
      notWrittenReason = "the identity was not loaded from a file";
    }
    log(
      "certificate renewed: expires %s (was %s)%s",
      now.notAfter.toISOString(),
      previous.notAfter.toISOString(),
      written ? `; ${id.path} rewritten` : `; file NOT rewritten: ${notWrittenReason}`,
    );
    this.#opts.renewed({
      previousNotAfter: previous.notAfter,
      notAfter: now.notAfter,
      written,
      ...(notWrittenReason ? { notWrittenReason } : {}),
      ...(id.path ? { path: id.path } : {}),
      keyRolled: rollKey,
    });
  }
}
