/**
 * `npm run demo`: runs the field scenario (field-scenario.ts) and prints what happened:
 * the steps, the gateway's own log lines, and per topic how many readings were taken and how many
 * reached the cloud. Exits with status 1 when a reading was lost or a check failed.
 */

import { runFieldScenario, scenarioFailures, type ScenarioReport } from './field-scenario.js';

const startedAt = Date.now();

function say(line: string): void {
  const seconds = ((Date.now() - startedAt) / 1000).toFixed(1).padStart(5);
  console.log(`[${seconds} s] ${line}`);
}

function printReport(report: ScenarioReport): void {
  console.log('\nThe gateway configuration of this run:\n');
  console.log(report.config.replace(/^/gm, '    '));
  console.log('What the gateway logged, from both runs:\n');
  for (const line of report.story) console.log(`    ${line}`);

  console.log('\nAt the cloud broker:\n');
  const width = Math.max(...report.topics.map((topic) => topic.topic.length));
  console.log(`    ${'topic'.padEnd(width)}  taken  arrived  missing  out of order`);
  for (const topic of report.topics) {
    const columns = [topic.taken, topic.arrived, topic.missing.length, topic.outOfOrder].map((value, index) => String(value).padStart([5, 7, 7, 12][index] ?? 0));
    console.log(`    ${topic.topic.padEnd(width)}  ${columns.join('  ')}`);
  }
  console.log('');
  for (const [device, states] of Object.entries(report.availability)) console.log(`    availability of ${device}: ${states.join(' > ')}`);
  const { backlog } = report;
  console.log(`    outbox backlog: ${backlog.beforeKill} before the kill -9, ${backlog.afterRestart} after the restart, ${backlog.peak} at the peak, ${backlog.final} at the end`);
  console.log(
    `    copies: ${report.cloudMessages} messages in all, ${report.duplicatesById} of them copies of an earlier message id ` +
      '(the bridge resends a message whose acknowledgement it did not get; the cloud side drops a copy by its outpost-message-id)',
  );
  console.log(
    `    sensor lines sent while outpost was down: ${report.sensorWhileDown.sent}, of which ${report.sensorWhileDown.arrived} arrived ` +
      '(a serial port that no process has open drops what it receives, so these were never taken)',
  );
}

async function main(): Promise<void> {
  console.log('Outpost field scenario: two Modbus units and a serial sensor, bridged to a cloud broker through an outage.\n');
  const report = await runFieldScenario({ say });
  printReport(report);
  const failures = scenarioFailures(report);
  console.log('');
  if (failures.length === 0) {
    console.log(`PASS: every reading the adapter took reached the cloud, in order (${report.seconds} s).`);
    return;
  }
  for (const failure of failures) console.log(`FAIL: ${failure}`);
  process.exitCode = 1;
}

main().catch((error: unknown) => {
  console.error(`demo failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  process.exitCode = 1;
});
