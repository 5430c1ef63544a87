/** The stop signals of the long-running commands (bind, proxy): the first starts a graceful stop, a second ends it. */

export interface StopSignal {
  /** The signal that started the stop: SIGTERM (Kubernetes, docker stop) or SIGINT (Ctrl-C). */
  signal: NodeJS.Signals;
  /** Resolves on a second SIGTERM/SIGINT: stop waiting for requests in flight. */
  again: Promise<NodeJS.Signals>;
}

/** Resolves on the first SIGTERM or SIGINT. */
export function untilStopSignal(): Promise<StopSignal> {
  return new Promise((resolve) => {
    const first = (signal: NodeJS.Signals) => {
      process.off("SIGTERM", first);
      process.off("SIGINT", first);
      const again = new Promise<NodeJS.Signals>((r) => {
        process.once("SIGTERM", () => r("SIGTERM"));
        process.once("SIGINT", () => r("SIGINT"));
      });
      resolve({ signal, again });
    };
    process.on("SIGTERM", first);
    process.on("SIGINT", first);
  });
}
