/**
 * Vitest globalSetup of the integration project: when SCRAPEZ_DOCKER_PREBUILD=1 (scripts/test.sh, the whole suite),
 * starts the scrapez image's `docker build` (docker.ts, scrapezImage) at the start of the run, so a cold build
 * (minutes on vfs) overlaps with the tests that need no image. The tests that need it wait on the same lock and
 * find it built; a failed build here is only logged: those tests build again and fail with the build's own error.
 * A run of single files builds when a test first asks. Every run first removes what killed runs left (removeOrphans).
 */
import { removeOrphans, scrapezImage } from "./docker.js";

export async function setup(): Promise<(() => Promise<void>) | undefined> {
  // What killed runs left (containers still running, their networks and volumes) goes first, whichever run this is.
  try {
    const n = await removeOrphans();
    if (n)
      process.stderr.write(
        `[docker-prebuild] removed ${n} container(s)/network(s)/volume(s) left by killed test runs\n`,
      );
  } catch {
    // No engine (or no docker CLI): the tests that need one say so themselves.
  }
  if (process.env.SCRAPEZ_DOCKER_PREBUILD !== "1") return undefined;
  const build = scrapezImage().then(
    () => undefined,
    (err: unknown) => {
      process.stderr.write(
        `[docker-prebuild] the scrapez image did not build: ${(err as Error).message.slice(0, 500)}\n`,
      );
    },
  );
  // Teardown waits for it: a build left running would hold the lock and keep the process from exiting.
  return () => build;
}
