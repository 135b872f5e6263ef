import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Test files run in child processes rather than worker threads, so process-wide state
    // (process.env, signal handlers, the working directory) stays separate between files.
    pool: 'forks',
    // The CI machine has two cores, and end-to-end tests also start broker and client
    // processes, so more parallel test files would only compete for the same cores.
    maxWorkers: 2,
    testTimeout: 20_000,
    hookTimeout: 20_000,
    // The JSON report is what .ci/run reads to print its closing pass/fail line.
    reporters: ['default', ['json', { outputFile: 'test-results.json' }]],
  },
});
