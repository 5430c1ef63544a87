/**
 * OpenZiti's own Go peers, `ziti tunnel host` and `ziti tunnel proxy` of the line under test (zitiBin()), as
 * reference implementations, each with its own defaults: v2.0.3's tunnel runs with SDK flow control
 * (`--sdk-flow-control`, default true), v1.6.3's has no such flag (that came in a later 1.6.x) and runs in the legacy
 * flow-control mode. Our SDK speaks both. --cli-agent=false: no gops agent socket.
 */
import { zitiBin } from "./binaries.js";
import { canConnect, freePort } from "./ports.js";
import { ManagedProcess } from "./process.js";

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** `ziti tunnel host -i <identity>`: hosts every service the identity may Bind that has a host.v1 config. */
export class ZitiTunnelHost extends ManagedProcess {
  readonly identityFile: string;

  constructor(identityFile: string) {
    super({
      name: "ziti-tunnel-host",
      command: zitiBin(),
      args: ["tunnel", "host", "--cli-agent=false", "-i", identityFile],
    });
    this.identityFile = identityFile;
  }

  /** Starts it and waits until it logged "hosting service, waiting for connections" for each of `services`. */
  static async start(identityFile: string, services: string[], timeoutMs = 60_000): Promise<ZitiTunnelHost> {
    const p = new ZitiTunnelHost(identityFile).start();
    try {
      for (const s of services) await p.waitForHosting(s, timeoutMs);
    } catch (err) {
      await p.close();
      throw err;
    }
    return p;
  }

  /** Waits for the log line that says `service` is bound (JSON log: `"service":"<name>"`). */
  async waitForHosting(service: string, timeoutMs = 60_000): Promise<void> {
    await this.waitForLog(
      new RegExp(`hosting service, waiting for connections.*"service":"${escapeRe(service)}"`),
      timeoutMs,
      `hosting ${service}`,
    );
  }
}

/**
 * `ziti tunnel proxy -i <identity> <service>:<port>`: dials `service` for every TCP connection to `port`.
 * It listens on 0.0.0.0 (the CLI has no bind-address option); tests connect only over 127.0.0.1.
 */
export class ZitiTunnelProxy extends ManagedProcess {
  readonly port: number;
  readonly service: string;

  constructor(identityFile: string, service: string, port: number) {
    super({
      name: "ziti-tunnel-proxy",
      command: zitiBin(),
      args: ["tunnel", "proxy", "--cli-agent=false", "-i", identityFile, `${service}:${port}`],
    });
    this.port = port;
    this.service = service;
  }

  /**
   * Starts it on a free port and waits until the port accepts connections (the proxy opens it only after it
   * loaded the identity, authenticated and found the service).
   */
  static async start(identityFile: string, service: string, timeoutMs = 60_000): Promise<ZitiTunnelProxy> {
    const p = new ZitiTunnelProxy(identityFile, service, await freePort()).start();
    try {
      await p.waitFor(() => canConnect(p.port), timeoutMs, `proxy port ${p.port} open`);
    } catch (err) {
      await p.close();
      throw err;
    }
    return p;
  }

  /** http://127.0.0.1:<port> */
  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }
}

/** ZitiTunnelHost.start, as a function. */
export async function tunnelHost(identityFile: string, services: string[]): Promise<ZitiTunnelHost> {
  return ZitiTunnelHost.start(identityFile, services);
}

/** ZitiTunnelProxy.start, in the `{ proc, port }` shape older tests use. */
export async function tunnelProxy(
  identityFile: string,
  service: string,
): Promise<{ proc: ZitiTunnelProxy; port: number }> {
  const proc = await ZitiTunnelProxy.start(identityFile, service);
  return { proc, port: proc.port };
}
