/** Runs in every e2e test file: fails the file if a service it started logged a secret. */
import { secretsFoundInLogs } from "../support/service";

afterAll(() => {
  expect(secretsFoundInLogs()).toEqual([]);
});
