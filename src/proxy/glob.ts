/**
 * `/sd`'s `service=` globs, compiled once per query: `*` any run, `?` one character, every other character literal
 * (the same reading as globMatch in src/common/naming.ts, which the discovery selectors of the config use).
 *
 * A glob with k characters other than `*` is a chain of k + 1 states (state j: the first j of them matched; a `*`
 * keeps its state on any character), run over the name as a bit set, 32 states per word (Shift-And). Each character
 * of the name costs one shift, one AND and one OR per word: at most name × ⌈(k + 1) / 32⌉ word operations, with no
 * backtracking, whatever the glob. A name shorter than k is refused before that, so k never exceeds the name's
 * length, and a name that does not start with the glob's leading literal characters (or end with its trailing ones)
 * is refused after comparing those alone.
 */

/** A compiled glob: `test(name)` says whether the whole name matches. */
export interface Glob {
  readonly source: string;
  test(name: string): boolean;
}

export function compileGlob(source: string): Glob {
  const tokens: string[] = []; // the characters other than `*`, in order
  const starAfter: boolean[] = [false]; // starAfter[j]: a `*` follows the j-th token (j = 0: the glob starts with one)
  // UTF-16 code units, as globMatch reads them (a `?` is one unit).
  for (let u = 0; u < source.length; u++) {
    if (source[u] === "*") starAfter[tokens.length] = true;
    else {
      tokens.push(source[u]!);
      starAfter.push(false);
    }
  }
  const k = tokens.length;
  const words = Math.ceil((k + 1) / 32);
  const bit = (m: Uint32Array, j: number) => void (m[j >>> 5]! |= 1 << (j & 31));
  const any = new Uint32Array(words); // states a `?` token leads to (any character takes them)
  const ascii: (Uint32Array | undefined)[] = new Array<Uint32Array | undefined>(128).fill(undefined);
  const other = new Map<string, Uint32Array>(); // beyond ASCII
  const keep = new Uint32Array(words); // states a `*` holds
  for (let j = 0; j <= k; j++) if (starAfter[j]) bit(keep, j);
  tokens.forEach((t, i) => (t === "?" ? bit(any, i + 1) : undefined));
  const maskOf = (c: string): Uint32Array | undefined => {
    const code = c.charCodeAt(0);
    return code < 128 ? ascii[code] : other.get(c);
  };
  tokens.forEach((t, i) => {
    if (t === "?") return;
    let m = maskOf(t);
    if (!m) {
      m = Uint32Array.from(any);
      const code = t.charCodeAt(0);
      if (code < 128) ascii[code] = m;
      else other.set(t, m);
    }
    bit(m, i + 1);
  });
  // Literal characters the name must start (end) with: up to the first (after the last) `*`.
  const firstStar = starAfter.indexOf(true);
  const prefix = firstStar < 0 ? k : firstStar;
  const lastStar = starAfter.lastIndexOf(true);
  const suffix = lastStar < 0 ? 0 : k - lastStar;
  const exact = firstStar < 0;
  const last = k >>> 5;
  const lastBit = 1 << (k & 31);
  const state = new Uint32Array(words);
  // One word (up to 31 characters other than `*`, the usual glob): the same run on plain numbers.
  const any0 = any[0]!;
  const keep0 = keep[0]!;
  const masks0 = new Map<string, number>();
  ascii.forEach((m, code) => (m ? masks0.set(String.fromCharCode(code), m[0]!) : undefined));
  other.forEach((m, c) => masks0.set(c, m[0]!));

  const run = (name: string): boolean => {
    if (words === 1) {
      let d = 1;
      for (let i = 0; i < name.length && d !== 0; i++) d = ((d << 1) & (masks0.get(name[i]!) ?? any0)) | (d & keep0);
      return (d & lastBit) !== 0;
    }
    state.fill(0);
    state[0] = 1;
    for (let i = 0; i < name.length; i++) {
      const m = maskOf(name[i]!) ?? any;
      let carry = 0;
      let alive = 0;
      for (let w = 0; w < words; w++) {
        const d = state[w]!;
        const next = (((d << 1) | carry) & m[w]!) | (d & keep[w]!);
        carry = d >>> 31;
        state[w] = next;
        alive |= next;
      }
      if (alive === 0) return false;
    }
    return (state[last]! & lastBit) !== 0;
  };

  const test = (name: string): boolean => {
    const n = name.length;
    if (n < k || (exact && n !== k)) return false;
    for (let i = 0; i < prefix; i++) if (tokens[i] !== "?" && tokens[i] !== name[i]) return false;
    if (exact) return true;
    for (let i = 1; i <= suffix; i++) if (tokens[k - i] !== "?" && tokens[k - i] !== name[n - i]) return false;
    return run(name);
  };
  return { source, test };
}
