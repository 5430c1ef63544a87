/**
 * A Dockerfile reader for tests: stages and their instructions, as Docker's parser splits them (comments, line
 * continuations, JSON exec form, `--flag=value` options, `KEY=value` pairs with quotes, `${ARG}` substitution).
 * Enough for our own Dockerfile; not a general implementation (no heredocs, no escape directive, no ONBUILD).
 */

export interface Instruction {
  /** Upper-case keyword: FROM, RUN, COPY, ... */
  op: string;
  /** `--from=build` -> { from: "build" } */
  flags: Record<string, string>;
  /** The rest after the flags, continuation lines joined with a space. */
  args: string;
  /** For the exec (JSON) form of RUN, CMD, ENTRYPOINT. */
  exec?: string[];
  /** Line number (1-based) of the instruction's first line. */
  line: number;
}

export interface Stage {
  /** `FROM image AS name` */
  name?: string;
  from: string;
  instructions: Instruction[];
}

export interface Dockerfile {
  /** ARGs declared before the first FROM, with their defaults. */
  globalArgs: Record<string, string>;
  stages: Stage[];
}

/** Splits shell-like words: quotes group, backslash escapes, quotes removed. */
export function words(s: string): string[] {
  const out: string[] = [];
  let cur = "";
  let have = false;
  let quote: '"' | "'" | undefined;
  for (let i = 0; i < s.length; i++) {
    const ch = s[i]!;
    if (quote) {
      if (ch === quote) quote = undefined;
      else if (ch === "\\" && quote === '"' && i + 1 < s.length) cur += s[++i];
      else cur += ch;
    } else if (ch === '"' || ch === "'") {
      quote = ch;
      have = true;
    } else if (ch === "\\" && i + 1 < s.length) {
      cur += s[++i];
      have = true;
    } else if (/\s/.test(ch)) {
      if (have || cur) out.push(cur);
      cur = "";
      have = false;
    } else {
      cur += ch;
      have = true;
    }
  }
  if (quote) throw new Error(`unterminated quote in: ${s}`);
  if (have || cur) out.push(cur);
  return out;
}

/** `A=1 B="two words"` -> { A: "1", B: "two words" } (ENV, LABEL, ARG). */
export function pairs(s: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const w of words(s)) {
    const i = w.indexOf("=");
    if (i <= 0) throw new Error(`expected KEY=value, got ${JSON.stringify(w)}`);
    out[w.slice(0, i)] = w.slice(i + 1);
  }
  return out;
}

/** `${NAME}` and `$NAME` from `vars`; unknown names become "". */
export function substitute(s: string, vars: Record<string, string>): string {
  return s.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (_m, a?: string, b?: string) => {
    return vars[(a ?? b)!] ?? "";
  });
}

export function parseDockerfile(text: string): Dockerfile {
  const lines = text.split("\n");
  const logical: { text: string; line: number }[] = [];
  let buf = "";
  let start = 0;
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!;
    const t = raw.trim();
    // Comment lines are dropped, also inside a continued instruction (as Docker does).
    if (t.startsWith("#") || (t === "" && buf === "")) continue;
    if (buf === "") start = i + 1;
    if (t.endsWith("\\")) {
      buf += `${t.slice(0, -1).trim()} `;
      continue;
    }
    buf += t;
    if (buf.trim()) logical.push({ text: buf.trim(), line: start });
    buf = "";
  }
  if (buf.trim()) throw new Error(`line ${start}: the last instruction ends with a continuation`);

  const df: Dockerfile = { globalArgs: {}, stages: [] };
  for (const { text: l, line } of logical) {
    const m = /^([A-Za-z]+)\s*(.*)$/.exec(l);
    if (!m) throw new Error(`line ${line}: not an instruction: ${l}`);
    const op = m[1]!.toUpperCase();
    let rest = m[2]!;
    const flags: Record<string, string> = {};
    for (let f = /^--([a-z-]+)=(\S+)\s+/.exec(rest); f; f = /^--([a-z-]+)=(\S+)\s+/.exec(rest)) {
      flags[f[1]!] = f[2]!;
      rest = rest.slice(f[0].length);
    }
    const ins: Instruction = { op, flags, args: rest, line };
    if (["RUN", "CMD", "ENTRYPOINT"].includes(op) && rest.startsWith("[")) ins.exec = JSON.parse(rest) as string[];
    if (op === "FROM") {
      const w = words(rest);
      const as = w.findIndex((x) => x.toUpperCase() === "AS");
      df.stages.push({ from: w[0]!, ...(as > 0 ? { name: w[as + 1]! } : {}), instructions: [] });
      continue;
    }
    const stage = df.stages[df.stages.length - 1];
    if (!stage) {
      if (op !== "ARG") throw new Error(`line ${line}: ${op} before the first FROM`);
      const [k, v = ""] = rest.split("=", 2);
      df.globalArgs[k!.trim()] = v;
      continue;
    }
    stage.instructions.push(ins);
  }
  return df;
}

/** The final stage's image config: ENV, LABEL (ARGs substituted), USER, WORKDIR, ENTRYPOINT, CMD. */
export function imageConfig(stage: Stage, buildArgs: Record<string, string> = {}) {
  const args: Record<string, string> = {};
  const env: Record<string, string> = {};
  const labels: Record<string, string> = {};
  let user: string | undefined;
  let workdir = "/";
  let entrypoint: string[] | undefined;
  let cmd: string[] | undefined;
  for (const i of stage.instructions) {
    const vars = { ...args, ...env };
    if (i.op === "ARG") {
      const [k, v = ""] = i.args.split("=", 2);
      args[k!.trim()] = buildArgs[k!.trim()] ?? words(v).join(" ");
    } else if (i.op === "ENV")
      Object.assign(
        env,
        mapValues(pairs(i.args), (v) => substitute(v, vars)),
      );
    else if (i.op === "LABEL")
      Object.assign(
        labels,
        mapValues(pairs(i.args), (v) => substitute(v, vars)),
      );
    else if (i.op === "USER") user = substitute(i.args.trim(), vars);
    else if (i.op === "WORKDIR") workdir = substitute(i.args.trim(), vars);
    else if (i.op === "ENTRYPOINT") entrypoint = i.exec ?? ["/bin/sh", "-c", i.args];
    else if (i.op === "CMD") cmd = i.exec ?? ["/bin/sh", "-c", i.args];
  }
  return { args, env, labels, user, workdir, entrypoint, cmd };
}

function mapValues(o: Record<string, string>, f: (v: string) => string): Record<string, string> {
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, f(v)]));
}
