/** OpenZiti's own Go peers, `ziti tunnel host` and `ziti tunnel proxy`, as reference implementations. */
import { zitiBin } from "./binaries.js";
import { canConnect, freePort } from "./ports.js";
import { ManagedProcess } from "./process.js";

/** Hosts every service the identity may Bind that has a host.v1 config. */
export async function tunnelHost(identityFile: string, services: string[]): Promise<ManagedProcess> {
  const p = new ManagedProcess({
    name: "ziti-tunnel-host",
    command: zitiBin(),
    args: ["tunnel", "host", "-i", identityFile],
  }).start();
  for (const s of services) {
    await p.waitForLog(
      new RegExp(`hosting service, waiting for connections.*"service":"${s}"`),
      60_000,
      `hosting ${s}`,
    );
  }
  return p;
}

/**
 * Dials `service` for every TCP connection to the returned port. (It listens on 0.0.0.0; tests connect only
 * over 127.0.0.1.)
 */
export async function tunnelProxy(
  identityFile: string,
  service: string,
): Promise<{ proc: ManagedProcess; port: number }> {
  const port = await freePort();
  const proc = new ManagedProcess({
    name: "ziti-tunnel-proxy",
    command: zitiBin(),
    args: ["tunnel", "proxy", "-i", identityFile, `${service}:${port}`],
  }).start();
  await proc.waitFor(() => canConnect(port), 60_000, `proxy port ${port} open`);
  return { proc, port };
}
