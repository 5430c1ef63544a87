/** The process-wide policy for what escapes (item 4): one structured line with context, then exit 70. */
import { describe, expect, it } from "vitest";
import { FATAL_EXIT_CODE, fatalLine, makeFatalHandler } from "../../src/cli/fatal.js";

function run(err: unknown, origin: "uncaughtException" | "unhandledRejection", component = () => "proxy") {
  const lines: string[] = [];
  const exits: number[] = [];
  const handle = makeFatalHandler({ component, write: (l) => lines.push(l), exit: (c) => exits.push(c) });
  handle(err, origin);
  return { lines, exits, handle };
}

describe("fatal handler", () => {
  it("logs one JSON line with the component, the error's code, message and stack, then exits 70", () => {
    const err = Object.assign(new Error("boom in a timer", { cause: new Error("the cause") }), { code: "E_TEST" });
    const { lines, exits } = run(err, "uncaughtException");
    expect(exits).toEqual([FATAL_EXIT_CODE]);
    expect(FATAL_EXIT_CODE).toBe(70);
    expect(lines).toHaveLength(1);
    expect(lines[0]!.endsWith("\n")).toBe(true);
    expect(lines[0]!.trimEnd()).not.toContain("\n");
    const rec = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect(rec).toMatchObject({
      level: "fatal",
      component: "proxy",
      origin: "uncaughtException",
      error: "Error",
      code: "E_TEST",
      reason: "boom in a timer",
      cause: "the cause",
      pid: process.pid,
      exitCode: 70,
    });
    expect(rec.msg).toMatch(/uncaught exception.*supervisor restarts/);
    expect(rec.stack).toMatch(/boom in a timer\n\s+at /);
    expect(Date.parse(rec.time as string)).not.toBeNaN();
  });

  it("handles rejections with values that are not errors, and ones that cannot be serialized", () => {
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    for (const [value, reason] of [
      ["just a string", "just a string"],
      [42, "42"],
      [undefined, "undefined"],
      [circular, "[object Object]"],
    ] as const) {
      const { lines, exits } = run(value, "unhandledRejection", () => "bind");
      expect(exits).toEqual([70]);
      const rec = JSON.parse(lines[0]!) as Record<string, unknown>;
      expect(rec).toMatchObject({ component: "bind", origin: "unhandledRejection", reason });
      expect(rec.msg).toMatch(/unhandled promise rejection/);
    }
  });

  it("still exits when writing the line or naming the component fails, and exits at once on a second escape", () => {
    const exits: number[] = [];
    const handle = makeFatalHandler({
      component: () => {
        throw new Error("no component");
      },
      write: () => {
        throw new Error("stderr is gone");
      },
      exit: (c) => exits.push(c),
    });
    handle(new Error("first"), "uncaughtException");
    handle(new Error("second"), "uncaughtException");
    expect(exits).toEqual([70, 70]);
    const line = fatalLine("uncaughtException", new Error("x"), "scrapez");
    expect(JSON.parse(line)).toMatchObject({ component: "scrapez", reason: "x" });
  });
});
