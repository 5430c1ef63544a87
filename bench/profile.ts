/**
 * `node dist/bench/profile.js DIR [--top=N] [--match=TEXT]`: where the CPU went in the `.cpuprofile` files that
 * `SCRAPEZ_NODE_ARGS="--cpu-prof --cpu-prof-dir=DIR" npm run bench -- e2e` leaves (one per scrapez process). For
 * each file: the share of samples that were idle, garbage collection or program code, then the functions with the
 * most self time and the most total time (a function counted once per stack however often it recurses), and self
 * time by source file. Shares are of the busy (non-idle) time, so two runs compare even when one waited longer.
 * `--match` keeps only the files whose name contains TEXT; which file is which process is printed from its first
 * frames (the proxy's and the bind's command line modules).
 */
import { readFileSync, readdirSync } from "node:fs";
import { basename, join } from "node:path";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  hitCount?: number;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

/** A short, stable name for a frame: function, file (from src/ or node: on) and line. */
function frameName(f: CallFrame): string {
  const url = f.url
    .replace(/^file:\/\//, "")
    .replace(/^.*\/dist\//, "")
    .replace(/^.*\/node_modules\//, "npm:");
  const where = url ? ` ${url}:${f.lineNumber + 1}` : "";
  return `${f.functionName || "(anonymous)"}${where}`;
}

function fileName(f: CallFrame): string {
  if (!f.url) return f.functionName.startsWith("(") ? f.functionName : "(native)";
  return f.url
    .replace(/^file:\/\//, "")
    .replace(/^.*\/dist\//, "")
    .replace(/^.*\/node_modules\//, "npm:");
}

/** Which scrapez command a profile is of, from the files its frames came from. */
function processOf(p: CpuProfile): string {
  const urls = new Set(p.nodes.map((n) => n.callFrame.url));
  const has = (s: string) => [...urls].some((u) => u.includes(s));
  if (has("/src/bind/exchange.js")) return "bind";
  if (has("/src/proxy/scrape.js")) return "proxy";
  return "?";
}

function summarise(file: string, p: CpuProfile, top: number): string {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  // Self time per node: each sample's following delta belongs to it (as Chrome's DevTools count it).
  const self = new Map<number, number>();
  const samples = p.samples ?? [];
  const deltas = p.timeDeltas ?? [];
  for (let i = 0; i < samples.length; i++) {
    const dt = deltas[i + 1] ?? 0;
    self.set(samples[i]!, (self.get(samples[i]!) ?? 0) + dt);
  }
  const totalUs = [...self.values()].reduce((a, b) => a + b, 0);
  let idle = 0;
  let gc = 0;
  let program = 0;
  for (const [id, us] of self) {
    const name = byId.get(id)!.callFrame.functionName;
    if (name === "(idle)") idle += us;
    else if (name === "(garbage collector)") gc += us;
    else if (name === "(program)") program += us;
  }
  const busy = Math.max(1, totalUs - idle);
  const selfByFn = new Map<string, number>();
  const selfByFile = new Map<string, number>();
  const totalByFn = new Map<string, number>();
  // Depth-first from the root, with the names already on the stack, so recursion is counted once.
  const visit = (id: number, onStack: Set<string>): number => {
    const n = byId.get(id)!;
    const name = frameName(n.callFrame);
    const mine = self.get(id) ?? 0;
    selfByFn.set(name, (selfByFn.get(name) ?? 0) + mine);
    const file = fileName(n.callFrame);
    selfByFile.set(file, (selfByFile.get(file) ?? 0) + mine);
    const added = !onStack.has(name);
    if (added) onStack.add(name);
    let total = mine;
    for (const c of n.children ?? []) total += visit(c, onStack);
    if (added) {
      onStack.delete(name);
      totalByFn.set(name, (totalByFn.get(name) ?? 0) + total);
    }
    return total;
  };
  visit(p.nodes[0]!.id, new Set());
  for (const k of ["(root)", "(idle)", "(program)", "(garbage collector)"]) {
    selfByFn.delete(k);
    totalByFn.delete(k);
  }
  const pct = (us: number) => `${((100 * us) / busy).toFixed(1).padStart(5)} %`;
  const list = (m: Map<string, number>) =>
    [...m]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([k, us]) => `  ${pct(us)}  ${k}`)
      .join("\n");
  const seconds = (p.endTime - p.startTime) / 1e6;
  return [
    `== ${basename(file)} (${processOf(p)}): ${seconds.toFixed(1)} s, busy ${((totalUs - idle) / 1e6).toFixed(2)} s ` +
      `(${((100 * (totalUs - idle)) / Math.max(1, totalUs)).toFixed(1)} % of samples); of busy: GC ${pct(gc)}, ` +
      `program ${pct(program)}`,
    `-- self time, by function`,
    list(selfByFn),
    `-- total time, by function`,
    list(totalByFn),
    `-- self time, by file`,
    list(selfByFile),
  ].join("\n");
}

const args = process.argv.slice(2);
const dir = args.find((a) => !a.startsWith("--"));
if (!dir) {
  process.stderr.write("usage: node dist/bench/profile.js DIR [--top=N] [--match=TEXT]\n");
  process.exit(2);
}
const top = Number(args.find((a) => a.startsWith("--top="))?.slice(6) ?? 40);
const match = args.find((a) => a.startsWith("--match="))?.slice(8);
const files = readdirSync(dir)
  .filter((f) => f.endsWith(".cpuprofile") && (!match || f.includes(match)))
  .sort();
if (!files.length) {
  process.stderr.write(`${dir}: no .cpuprofile files${match ? ` matching ${match}` : ""}\n`);
  process.exit(1);
}
for (const f of files) {
  const p = JSON.parse(readFileSync(join(dir, f), "utf8")) as CpuProfile;
  process.stdout.write(`${summarise(f, p, top)}\n\n`);
}
