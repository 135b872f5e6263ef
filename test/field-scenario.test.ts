/**
 * The field scenario end to end (test/scenario/field-scenario.ts): readings from a Modbus device
 * and a serial sensor reach a cloud broker through an outage, a SIGKILL of Outpost and an
 * unplugged adapter, none lost and in order. `npm run demo` runs the same scenario and prints
 * what happened.
 */

import { describe, expect, it } from 'vitest';

import { runFieldScenario, scenarioFailures } from './scenario/field-scenario.js';

describe('field scenario: sensors to cloud through an outage', () => {
  it('loses no reading through outage, kill and unplug', async () => {
    const report = await runFieldScenario();
    console.log(JSON.stringify({ ...report, config: undefined }, null, 2));
    expect(scenarioFailures(report)).toEqual([]);
    // The checks above count readings; these make sure the counting saw the events at all.
    expect(report.availability['meter-1']?.filter((state) => state === 'offline').length).toBeGreaterThanOrEqual(2);
    expect(report.sensorWhileDown.sent).toBeGreaterThan(0);
    expect(report.cloudMessages).toBeGreaterThan(100);
  }, 180_000);
});
