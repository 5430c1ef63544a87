/** Reading scrapez's `--log.format logfmt` lines back in tests. */

/** A logfmt parser as go-logfmt reads a line: key=value pairs, values bare or double-quoted with escapes. */
export function parseLogfmt(line: string): Record<string, string> {
  const out: Record<string, string> = {};
  const re = /([^\s=]+)=("(?:[^"\\]|\\.)*"|[^\s"]*)/gy;
  let rest = line.trim();
  while (rest.length) {
    re.lastIndex = 0;
    const m = re.exec(rest);
    if (!m) throw new Error(`not logfmt at ${JSON.stringify(rest)}`);
    out[m[1]!] = m[2]!.startsWith('"') ? (JSON.parse(m[2]!) as string) : m[2]!;
    rest = rest.slice(m[0].length).trimStart();
  }
  return out;
}
