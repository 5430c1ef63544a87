// One linter for the whole tree. Bans focused/skipped tests and console.* in library code.
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["dist/**", "node_modules/**", "tools/**"] },
  ...tseslint.configs.recommended,
  {
    rules: {
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "no-restricted-properties": [
        "error",
        { object: "it", property: "only", message: "no focused tests" },
        { object: "test", property: "only", message: "no focused tests" },
        { object: "describe", property: "only", message: "no focused tests" },
        { object: "it", property: "skip", message: "no skipped tests: a test that cannot run must fail and say why" },
        { object: "test", property: "skip", message: "no skipped tests" },
        { object: "describe", property: "skip", message: "no skipped tests" },
      ],
    },
  },
  {
    files: ["src/**/*.ts"],
    rules: { "no-console": "error" },
  },
);
