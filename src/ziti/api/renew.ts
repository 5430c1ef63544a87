/**
 * Certificate renewal helpers: when a certificate is due, and a CSR for the identity's CN signed with its
 * existing key (or a new one).
 *
 * Same key by default: the controller's extend endpoint signs any CSR it is given
 * (controller/model/authenticator_manager.go@v1.6.3 ExtendCertForIdentity checks the presented certificate, not
 * the CSR's key), and scrapez bind allow-lists pin callers by key (`allow.keys`, `scrapez identity key`): keeping
 * the key keeps every pin valid. A new key is made only when an administrator asked for a key roll
 * (`isCertKeyRollRequested`), which changes the pin (logged with the new pin).
 */
import "reflect-metadata";
import { KeyObject, X509Certificate, createPrivateKey, createPublicKey, webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

/** The identity's leaf certificate (the first block of `certPem`). */
export function leafCertificate(certPem: string): X509Certificate {
  const m = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/.exec(certPem);
  return new X509Certificate(m ? m[0] : certPem);
}

export interface CertTimes {
  notBefore: Date;
  notAfter: Date;
}

export function certTimes(certPem: string): CertTimes {
  const c = leafCertificate(certPem);
  return { notBefore: new Date(c.validFrom), notAfter: new Date(c.validTo) };
}

/**
 * When to renew: `renewBeforeMs` before expiry if given, else when a third of the lifetime is left (a one-year
 * certificate: about four months before it expires, leaving months of retries if the controller is away).
 */
export function renewalDueAt(t: CertTimes, renewBeforeMs?: number): Date {
  const life = t.notAfter.getTime() - t.notBefore.getTime();
  const before = renewBeforeMs ?? Math.max(0, life / 3);
  return new Date(t.notAfter.getTime() - before);
}

function algorithmOf(key: KeyObject): webcrypto.RsaHashedImportParams | webcrypto.EcKeyImportParams {
  if (key.asymmetricKeyType === "rsa") return { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" };
  if (key.asymmetricKeyType === "ec") {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    const namedCurve = curve === "secp384r1" ? "P-384" : curve === "secp521r1" ? "P-521" : "P-256";
    return { name: "ECDSA", namedCurve };
  }
  throw new Error(`unsupported key type ${key.asymmetricKeyType ?? "?"} (EC or RSA keys only)`);
}

/**
 * A PEM CSR for `commonName`, signed with `keyPem` (the identity's key) or, with `rollKey`, with a new key of the
 * same kind. Returns the CSR and the key it was made with (PKCS#8 PEM).
 */
export async function makeCsr(
  commonName: string,
  keyPem: string,
  rollKey = false,
): Promise<{ csrPem: string; keyPem: string }> {
  const current = createPrivateKey(keyPem);
  const alg = algorithmOf(current);
  const sign = alg.name === "ECDSA" ? { ...alg, hash: "SHA-256" } : alg;
  let keys: webcrypto.CryptoKeyPair;
  if (rollKey) {
    const gen =
      alg.name === "ECDSA"
        ? { name: "ECDSA", namedCurve: (alg as webcrypto.EcKeyImportParams).namedCurve }
        : {
            name: "RSASSA-PKCS1-v1_5",
            hash: "SHA-256",
            modulusLength: 2048,
            publicExponent: new Uint8Array([1, 0, 1]),
          };
    keys = (await webcrypto.subtle.generateKey(gen, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  } else {
    const pkcs8 = current.export({ type: "pkcs8", format: "der" });
    const spki = createPublicKey(current).export({ type: "spki", format: "der" });
    keys = {
      privateKey: await webcrypto.subtle.importKey("pkcs8", pkcs8, alg, true, ["sign"]),
      publicKey: await webcrypto.subtle.importKey("spki", spki, alg, true, ["verify"]),
    };
  }
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: [{ CN: [commonName] }],
    keys,
    signingAlgorithm: sign,
  });
  const outKey = rollKey ? KeyObject.from(keys.privateKey).export({ type: "pkcs8", format: "pem" }).toString() : keyPem;
  return { csrPem: csr.toString("pem"), keyPem: outKey };
}
