import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { AppErrorCodes, ProxyErrorCodes, ScrapezError } from "../../src/common/errors.js";
import { ConfigError } from "../../src/common/config/errors.js";
import { GenerateError } from "../../src/generate/generate.js";
import { ErrorCodes } from "../../src/ziti/errors.js";

const docs = readFileSync("docs/errors.md", "utf8");

describe("docs/errors.md lists every stable code", () => {
  it.each(Object.values(ErrorCodes))("SDK code %s", (code) => expect(docs).toContain(`| \`${code}\` |`));
  it.each(Object.values(AppErrorCodes))("application code %s", (code) => expect(docs).toContain(`| \`${code}\` |`));
  it.each(Object.values(ProxyErrorCodes))("X-Scrapez-Proxy-Error value %s", (code) =>
    expect(docs).toContain(`| \`${code}\` |`),
  );
});

describe("ScrapezError", () => {
  it("config and generate errors are ScrapezErrors with their codes, and keep a cause", () => {
    expect(new ConfigError("x")).toBeInstanceOf(ScrapezError);
    expect(new ConfigError("x").code).toBe("SCRAPEZ_CONFIG_INVALID");
    expect(new GenerateError("y").code).toBe("SCRAPEZ_GENERATE_INVALID");
    const cause = new Error("inner");
    expect(new ScrapezError(AppErrorCodes.SCRAPE_TIMEOUT, "slow", { cause }).cause).toBe(cause);
  });
});
