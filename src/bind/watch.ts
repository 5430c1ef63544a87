/**
 * Watches a config file for changes that matter: the file's directory is watched (a Kubernetes ConfigMap update
 * swaps the `..data` symlink and never names the file itself; editors write a temp file and rename it), and the
 * file's text decides whether anything changed, so unrelated files in the directory (a status file written next to
 * the config, editor swap files) never trigger a reload.
 */
import { readFileSync, watch } from "node:fs";
import { dirname } from "node:path";

function readText(file: string): string | undefined {
  try {
    return readFileSync(file, "utf8");
  } catch {
    return undefined;
  }
}

/** Calls `onChange` (debounced) whenever `file`'s text differs from the last text seen. Returns a stop function. */
export function watchConfigFile(file: string, onChange: () => void, debounceMs = 300): () => void {
  let last = readText(file);
  let timer: NodeJS.Timeout | undefined;
  const watcher = watch(dirname(file), () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      const text = readText(file);
      if (text === last) return;
      last = text;
      onChange();
    }, debounceMs);
  });
  watcher.on("error", () => undefined);
  return () => {
    clearTimeout(timer);
    watcher.close();
  };
}
