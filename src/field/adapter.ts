/**
 * The field adapter: an in-process client of the broker that publishes Modbus points and
 * serial-line values, and writes points on `<point topic>/set`. Results of writes go to
 * `<point topic>/set/result`.
 */

import type { InternalClient, InternalMessage } from '../broker/internal-client.js';
import type { Logger } from '../service/logger.js';
import { BusScheduler, type WriteOutcome } from './bus-scheduler.js';
import { lineValueDiscoveryMessage, pointDiscoveryMessages } from './discovery.js';
import type { FieldModel, PointSpec } from './model.js';
import { FieldPublisher } from './publisher.js';
import { SerialLineReader } from './serial-line.js';
import { jsonLiteral, parseSetPayload } from './values.js';

/** The broker side the adapter needs: a way to create an in-process client. */
export interface ClientFactory {
  createClient(clientId: string, handler: (message: InternalMessage) => void): InternalClient;
}

interface SetTarget {
  scheduler: BusScheduler;
  deviceName: string;
  point: PointSpec;
}

export const FIELD_CLIENT_ID = 'outpost-field-adapter';

export class FieldAdapter {
  readonly buses: BusScheduler[] = [];
  readonly lines: SerialLineReader[] = [];
  private client: InternalClient | null = null;
  private publisher: FieldPublisher | null = null;
  private readonly setTargets = new Map<string, SetTarget>();
  private readonly logger: Logger;

  constructor(
    private readonly model: FieldModel,
    logger: Logger,
  ) {
    this.logger = logger.child({ component: 'field' });
  }

  /** Creates the in-process client, subscribes to the set topics and starts every bus and serial line. */
  async start(broker: ClientFactory): Promise<void> {
    const client = broker.createClient(FIELD_CLIENT_ID, (message) => this.onMessage(message));
    this.client = client;
    const publisher = new FieldPublisher(client, this.model.payloadFormat, this.logger);
    this.publisher = publisher;

    for (const bus of this.model.buses) {
      const scheduler = new BusScheduler(bus, publisher, this.logger);
      this.buses.push(scheduler);
      for (const device of bus.devices) {
        for (const point of device.points) this.setTargets.set(`${point.topic}/set`, { scheduler, deviceName: device.name, point });
      }
    }
    for (const line of this.model.lines) {
      const reader = new SerialLineReader(line, this.model.topicPrefix, publisher, this.logger);
      if (this.model.discovery.enabled) {
        reader.onNewValue = (value) => {
          const message = lineValueDiscoveryMessage(this.model, line, value);
          publisher.send(message.topic, message.payload, 1, true);
        };
      }
      this.lines.push(reader);
    }

    for (const topic of this.setTargets.keys()) await client.subscribe(topic, { qos: 1 });
    if (this.model.discovery.enabled) {
      for (const message of pointDiscoveryMessages(this.model)) publisher.send(message.topic, message.payload, 1, true);
    }
    for (const bus of this.buses) bus.start();
    for (const line of this.lines) line.start();
    this.logger.info('field adapter started', {
      buses: this.buses.length,
      devices: this.model.buses.reduce((sum, bus) => sum + bus.devices.length, 0),
      serial_lines: this.lines.length,
    });
  }

  /** Stops polling and reading, publishes every device and line as offline and closes the client. */
  async stop(): Promise<void> {
    await Promise.all([...this.buses.map((bus) => bus.stop()), ...this.lines.map((line) => line.stop())]);
    const publisher = this.publisher;
    if (publisher !== null) {
      for (const bus of this.model.buses) for (const device of bus.devices) publisher.publishAvailability(device.availabilityTopic, false);
      for (const line of this.model.lines) publisher.publishAvailability(line.availabilityTopic, false);
    }
    // Lets the offline messages above reach the router before the client goes away.
    await new Promise((resolve) => setImmediate(resolve));
    this.client?.close();
    this.client = null;
    this.logger.info('field adapter stopped');
  }

  /**
   * Returns the availability of every Modbus device and serial line, in the shape of the
   * operations endpoint's device list (`OpsServer.setDeviceSource`).
   */
  deviceStatuses(): { name: string; online: boolean; pollErrors: number; lastError: string | null }[] {
    const lines = this.lines.map((line) => ({ name: line.name, online: line.isOpen, pollErrors: line.stats.invalid, lastError: line.isOpen ? null : line.closedReason }));
    return [...this.buses.flatMap((bus) => bus.deviceStatuses()), ...lines];
  }

  bus(name: string): BusScheduler | undefined {
    return this.buses.find((bus) => bus.name === name);
  }

  line(name: string): SerialLineReader | undefined {
    return this.lines.find((line) => line.name === name);
  }

  private onMessage(message: InternalMessage): void {
    const target = this.setTargets.get(message.topic);
    if (target === undefined) return;
    if (message.retain) {
      // A retained command would be written again at every start of the adapter.
      this.logger.limited('warn', `set-retained:${message.topic}`, 60_000, 'ignored a retained write command; publish /set messages without retain', {
        topic: message.topic,
      });
      return;
    }
    const value = parseSetPayload(target.point, message.payload);
    if (typeof value === 'object') {
      this.logger.limited('warn', `write-rejected:${message.topic}`, 10_000, 'write rejected', {
        device: target.deviceName,
        point: target.point.name,
        error: value.error,
      });
      this.publishResult(target.point, { ok: false, error: value.error });
      return;
    }
    target.scheduler.write(target.deviceName, target.point, value).then(
      (outcome) => this.publishResult(target.point, outcome),
      (error: unknown) => this.logger.error('write failed unexpectedly', { point: target.point.name, error: error instanceof Error ? error.message : String(error) }),
    );
  }

  private publishResult(point: PointSpec, outcome: WriteOutcome): void {
    const body = outcome.ok ? `"ok":true,"value":${jsonLiteral(outcome.value)}` : `"ok":false,"error":${JSON.stringify(outcome.error)}`;
    this.publisher?.send(`${point.topic}/set/result`, `{${body},"timestamp":${Date.now()}}`, 1, false);
  }
}
