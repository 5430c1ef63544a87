/**
 * ZitiContext with an injected router connector (ContextOptions.connectRouter): a dial goes through the whole
 * context (authentication, the service list, a Dial session, the router channel and its hello, the virtual
 * connection) with no real router: a small HTTPS stand-in answers the controller's client API and the scripted
 * fake router (test/harness/fake-router.ts) is the router. The real overlay is the proof of dialing itself
 * (test/integration/sdk.test.ts); this shows the seam, so context-level tests need no router.
 */
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { ZitiContext, type Identity } from "../../src/ziti/index.js";
import { ContentType, dec, Header } from "../../src/ziti/internal.js";
import { FakeRouter } from "../harness/fake-router.js";
import { apiSession, startControllerStandIn } from "../harness/controller-standin.js";
import { makePki } from "../harness/pki.js";
import { removeDir, tempDir } from "../harness/process.js";

const ROUTER_URL = "tls://router.invalid:3022";
let dir: string;
let pki: Record<string, string>;
let router: FakeRouter;
let controller: Awaited<ReturnType<typeof startControllerStandIn>>;

beforeAll(async () => {
  dir = tempDir("ctx-connector");
  pki = makePki(join(dir, "pki"));
  router = await FakeRouter.start();
  // The controller's client API, as much of it as one dial needs.
  controller = await startControllerStandIn(pki, (method, path) => {
    if (method === "POST" && path === "authenticate") return apiSession("api-session-token", "api-session-1");
    if (method === "GET" && path === "services") {
      const app = { id: "svc-1", name: "app", permissions: ["Dial"], encryptionRequired: false };
      return [200, { data: [app], meta: { pagination: { totalCount: 1 } } }];
    }
    if (method === "POST" && path === "sessions") {
      const edgeRouters = [{ name: "r1", hostname: "router.invalid", isOnline: true, urls: { tls: ROUTER_URL } }];
      return [200, { data: { id: "session-1", token: "dial-session-token", edgeRouters } }];
    }
    if (method === "GET" && path === "current-api-session/service-updates") {
      return [200, { data: { lastChangeAt: "2025-01-01T00:00:00Z" } }];
    }
    if (method === "DELETE" && path === "current-api-session") return [200, {}];
    return undefined;
  });
});

afterAll(async () => {
  await router?.close();
  await controller?.close();
  removeDir(dir);
});

function identity(): Identity {
  return {
    ztAPI: `https://127.0.0.1:${controller.port}/edge/client/v1`,
    certPem: readFileSync(pki["client.crt"]!, "utf8"),
    keyPem: readFileSync(pki["client.key"]!, "utf8"),
    caPem: readFileSync(pki["ca.crt"]!, "utf8"),
    name: "client",
    raw: {},
  };
}

it("a dial runs over the injected connector: the session's router URL is what it is given, data flows both ways, the channel is shared", async () => {
  const asked: string[] = [];
  const connect = router.connector();
  const ctx = await ZitiContext.open(identity(), {
    auth: "legacy",
    connectRouter: (url) => {
      asked.push(url);
      return connect();
    },
  });
  try {
    const dialing = ctx.dial("app");
    const connectMsg = await router.next(ContentType.Connect);
    // The hello before it carried the API session's token, as on a real router.
    const hello = router.received.find((m) => m.contentType === ContentType.Hello)!;
    expect(hello.headers.get(Header.SessionToken)?.toString()).toBe("api-session-token");
    // The Connect carries the Dial session's token in its body.
    expect(connectMsg.body.toString()).toBe("dial-session-token");
    router.connected(connectMsg);
    const conn = await dialing;
    const connId = dec.u32(connectMsg.headers, Header.ConnId)!;

    conn.write("ping");
    const data = await router.next((m) => m.contentType === ContentType.Data && m.body.length > 0);
    expect(data.body.toString()).toBe("ping");
    const reading = once(conn, "data") as Promise<[Buffer]>;
    router.data(connId, Buffer.from("pong"));
    expect((await reading)[0].toString()).toBe("pong");

    // A second dial to the same router reuses the channel: the connector is not called again.
    const second = ctx.dial("app");
    const before = router.received.filter((m) => m.contentType === ContentType.Connect).length;
    const connect2 = await router.next((m) => m.contentType === ContentType.Connect && m !== connectMsg);
    router.connected(connect2);
    (await second).destroy();
    expect(router.received.filter((m) => m.contentType === ContentType.Connect).length).toBe(before + 1);
    expect(asked).toEqual([ROUTER_URL]);
    expect(controller.seen).toEqual(expect.arrayContaining(["POST authenticate", "GET services", "POST sessions"]));
    conn.destroy();
  } finally {
    await ctx.close();
  }
});
