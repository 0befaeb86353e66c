// Two projects: `unit` needs nothing but Node; `e2e` shares one Synapse per run (global setup).
const transform = { "^.+\\.ts$": "ts-jest" };
module.exports = {
  // e2e tests talk to a real Synapse; unit tests finish far below this.
  testTimeout: 120000,
  projects: [
    {
      displayName: "unit",
      testEnvironment: "node",
      transform,
      testMatch: ["<rootDir>/test/unit/**/*.test.ts"],
    },
    {
      displayName: "e2e",
      testEnvironment: "node",
      transform,
      testMatch: ["<rootDir>/test/e2e/**/*.test.ts"],
      globalSetup: "<rootDir>/test/harness/global-setup.ts",
      globalTeardown: "<rootDir>/test/harness/global-teardown.ts",
      // Every e2e file fails if a service it started logged an as_token, hs_token or agent token.
      setupFilesAfterEnv: ["<rootDir>/test/harness/after-each-file.ts"],
    },
  ],
};
