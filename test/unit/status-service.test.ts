/**
 * StatusService.serve (src/proxy/status/service.ts): it returns its promise, so a failure while the answer is
 * written reaches the server's guard (a 500 for that request, logged) instead of becoming an unhandled rejection
 * that ends the process.
 */
import type http from "node:http";
import { describe, expect, it } from "vitest";
import type { ServiceCatalog } from "../../src/proxy/catalog.js";
import type { StatusDocument } from "../../src/proxy/status/json.js";
import { StatusService } from "../../src/proxy/status/service.js";

function fakeRes(writeHead: () => void) {
  const res = { body: "", writeHead, end: (b?: string) => void (res.body = b ?? "") };
  return res;
}

const req = { url: "/status.json", method: "GET", headers: {} } as unknown as http.IncomingMessage;

describe("StatusService.serve", () => {
  it("rejects when the answer cannot be written, so the caller's guard handles it", async () => {
    const svc = new StatusService({} as ServiceCatalog, []);
    svc.document = () => ({}) as StatusDocument;
    const res = fakeRes(() => {
      throw new Error("boom");
    });
    await expect(svc.serve(req, res as unknown as http.ServerResponse, true)).rejects.toThrow("boom");
  });

  it("resolves once the answer is written", async () => {
    const svc = new StatusService({} as ServiceCatalog, []);
    svc.document = () => ({ ok: 1 }) as unknown as StatusDocument;
    let head = false;
    const res = fakeRes(() => void (head = true));
    await expect(svc.serve(req, res as unknown as http.ServerResponse, true)).resolves.toBeUndefined();
    expect(head).toBe(true);
    expect(res.body).toBe('{"ok":1}');
  });
});
