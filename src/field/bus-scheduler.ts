/**
 * One Modbus bus: its connection and the loop that polls its devices and performs writes, one
 * request at a time.
 *
 * Isolation of devices: a poll stops at the first timeout, so a silent device costs at most one
 * timeout per poll. After `retries` + 1 failed polls in a row the device is marked offline and is
 * then polled after a wait that doubles from its poll interval up to `offline_poll_max_ms`,
 * while the other devices keep their rate. Queued writes go before polls (at most four in a row
 * while a poll is due), and never interrupt a request.
 */

import type { Logger } from '../service/logger.js';
import { isBitTable } from './address.js';
import { Backoff } from './backoff.js';
import type { FieldValue } from './codec.js';
import { groupPoints, splitBlock, type ReadBlock } from './grouping.js';
import { describeModbusError, ModbusBusClosedError, ModbusExceptionError, ModbusResponseError } from './modbus/errors.js';
import type { ModbusRequest, ModbusResponse } from './modbus/pdu.js';
import { RtuTransport } from './modbus/rtu-transport.js';
import { TcpTransport } from './modbus/tcp-transport.js';
import type { ModbusTransport } from './modbus/transport.js';
import type { BusSpec, DeviceSpec, PointSpec } from './model.js';
import type { FieldPublisher } from './publisher.js';
import { WakeTimer } from './wake-timer.js';
import { prepareWrite, type PreparedWrite } from './write-request.js';
import { decodePointRegisters } from './values.js';

/** Writes that may go before a poll that is due; then the poll gets its turn. */
const MAX_WRITES_BEFORE_POLL = 4;

export type WriteOutcome = { ok: true; value: FieldValue } | { ok: false; error: string };

/** Counters of one device, for tests and status output. */
export interface DeviceStats {
  polls: number;
  successfulPolls: number;
  failedPolls: number;
  /** Reason of the last failed poll or point read, or null. */
  lastError: string | null;
  /** Read requests sent in the last poll. */
  requestsInLastPoll: number;
}

interface DeviceState {
  spec: DeviceSpec;
  blocks: ReadBlock[];
  /** Undefined until the first poll has settled the state. */
  online: boolean | undefined;
  failures: number;
  nextPollAt: number;
  offlineBackoff: Backoff;
  stats: DeviceStats;
}

interface WriteJob {
  device: DeviceState;
  point: PointSpec;
  prepared: PreparedWrite;
  resolve(outcome: WriteOutcome): void;
}

export class BusScheduler {
  readonly transport: ModbusTransport;
  private readonly devices: DeviceState[];
  private readonly writes: WriteJob[] = [];
  /** Writes performed since the last poll, so a stream of writes cannot stop polling. */
  private writesInARow = 0;
  private readonly wakeTimer = new WakeTimer();
  private stopped = true;
  private loop: Promise<void> | null = null;
  private readonly logger: Logger;

  constructor(
    private readonly spec: BusSpec,
    private readonly publisher: FieldPublisher,
    logger: Logger,
  ) {
    this.logger = logger.child({ bus: spec.name });
    this.devices = spec.devices.map((device) => ({
      spec: device,
      blocks: groupPoints(device.points, device.maxReadGap, device.maxRegistersPerRead),
      online: undefined,
      failures: 0,
      nextPollAt: 0,
      offlineBackoff: new Backoff(device.pollIntervalMs, Math.max(device.pollIntervalMs, device.offlinePollMaxMs)),
      stats: { polls: 0, successfulPolls: 0, failedPolls: 0, lastError: null, requestsInLastPoll: 0 },
    }));
    const events = { open: () => this.onOpen(), close: (reason: string) => this.onClose(reason) };
    const config = spec.config;
    this.transport =
      config.protocol === 'rtu'
        ? new RtuTransport(spec.name, { ...config, path: config.path ?? '' }, events, this.logger)
        : new TcpTransport(
            spec.name,
            {
              host: config.host ?? '127.0.0.1',
              port: config.port,
              reconnect_min_ms: config.reconnect_min_ms,
              reconnect_max_ms: config.reconnect_max_ms,
              connect_timeout_ms: Math.max(config.timeout_ms, 3000),
            },
            events,
            this.logger,
          );
  }

  get name(): string {
    return this.spec.name;
  }

  /** Returns the number of read requests in one poll of `deviceName`, after grouping. */
  readRequestsPerPoll(deviceName: string): number | undefined {
    return this.devices.find((device) => device.spec.name === deviceName)?.blocks.length;
  }

  deviceStats(deviceName: string): DeviceStats | undefined {
    return this.devices.find((device) => device.spec.name === deviceName)?.stats;
  }

  /** Returns the state of every device, in the shape of the operations endpoint's device list. */
  deviceStatuses(): { name: string; online: boolean; pollErrors: number; lastError: string | null }[] {
    return this.devices.map((device) => ({
      name: device.spec.name,
      online: device.online === true,
      pollErrors: device.stats.failedPolls,
      lastError: device.stats.lastError,
    }));
  }

  isOnline(deviceName: string): boolean | undefined {
    return this.devices.find((device) => device.spec.name === deviceName)?.online;
  }

  start(): void {
    this.stopped = false;
    // Until a device responds to a poll it counts as offline, which also replaces an `online`
    // retained from an earlier run. The state stays unset, so the first failure is still logged.
    for (const device of this.devices) this.publisher.publishAvailability(device.spec.availabilityTopic, false);
    this.transport.start();
    this.loop = this.run().catch((error: unknown) => {
      // The loop catches request errors itself, so this is a bug; the bus stops instead of the process.
      this.logger.error('bus loop failed; polling of this bus stopped', { error: error instanceof Error ? error.stack : String(error) });
    });
  }

  /** Stops polling, rejects queued writes and closes the connection. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.failQueuedWrites('the field adapter is stopping');
    this.wakeTimer.wake();
    await this.transport.stop();
    await this.loop;
  }

  /**
   * Queues a write of `value` to a point of `deviceName` and resolves with the outcome once the
   * value was written and read back. Never rejects: every failure is an outcome with its reason.
   */
  write(deviceName: string, point: PointSpec, value: FieldValue): Promise<WriteOutcome> {
    const device = this.devices.find((candidate) => candidate.spec.name === deviceName);
    if (device === undefined) return this.reject(deviceName, point, `no device ${deviceName} on bus ${this.spec.name}`);
    let prepared: PreparedWrite;
    try {
      prepared = prepareWrite(point, value);
    } catch (error: unknown) {
      return this.reject(deviceName, point, error instanceof Error ? error.message : String(error));
    }
    if (!this.transport.isOpen) return this.reject(deviceName, point, `bus ${this.spec.name} is not open (${this.transport.closedReason})`);
    if (this.writes.length >= this.spec.config.max_pending_writes) {
      return this.reject(deviceName, point, `bus ${this.spec.name} has ${this.writes.length} writes waiting (max_pending_writes); try again later`);
    }
    return new Promise((resolve) => {
      this.writes.push({ device, point, prepared, resolve });
      this.wakeTimer.wake();
    });
  }

  /** Logs a write rejected before it reached the queue (rate-limited per point) and returns the outcome. */
  private reject(deviceName: string, point: PointSpec, error: string): Promise<WriteOutcome> {
    this.logger.limited('warn', `write-rejected:${this.spec.name}:${deviceName}:${point.name}`, 10_000, 'write rejected', {
      device: deviceName,
      point: point.name,
      error,
    });
    return Promise.resolve({ ok: false, error });
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      if (!this.transport.isOpen) {
        await this.wakeTimer.wait(Infinity);
        continue;
      }
      const device = this.nextDevice();
      const pollDue = device !== undefined && device.nextPollAt <= Date.now();
      if (this.writes.length > 0 && !(pollDue && this.writesInARow >= MAX_WRITES_BEFORE_POLL)) {
        const job = this.writes.shift();
        if (job !== undefined) {
          this.writesInARow++;
          await this.performWrite(job);
          continue;
        }
      }
      if (device === undefined) {
        await this.wakeTimer.wait(Infinity);
        continue;
      }
      const wait = device.nextPollAt - Date.now();
      if (wait > 0) {
        await this.wakeTimer.wait(wait);
        continue;
      }
      this.writesInARow = 0;
      await this.poll(device);
    }
  }

  private nextDevice(): DeviceState | undefined {
    let next: DeviceState | undefined;
    for (const device of this.devices) {
      if (next === undefined || device.nextPollAt < next.nextPollAt) next = device;
    }
    return next;
  }

  /** Sends one request and then keeps the bus quiet for `delay_ms`. */
  private async transact(device: DeviceSpec, request: ModbusRequest): Promise<ModbusResponse> {
    try {
      return await this.transport.transact(device.unitId, request, device.timeoutMs);
    } finally {
      const delayMs = this.spec.config.delay_ms;
      if (delayMs > 0 && !this.stopped) await new Promise((resolve) => setTimeout(resolve, delayMs));
    }
  }

  private async poll(device: DeviceState): Promise<void> {
    const plannedAt = device.nextPollAt;
    device.stats.polls++;
    device.stats.requestsInLastPoll = 0;
    let failure: unknown;

    for (let index = 0; index < device.blocks.length && !this.stopped; index++) {
      const block = device.blocks[index];
      if (block === undefined) break;
      try {
        device.stats.requestsInLastPoll++;
        const response = await this.transact(device.spec, { kind: 'read', functionCode: block.functionCode, address: block.address, count: block.count });
        this.publishBlock(block, response, Date.now());
      } catch (error: unknown) {
        if (error instanceof ModbusBusClosedError) return;
        if (error instanceof ModbusExceptionError && block.points.length > 1 && (error.exceptionCode === 2 || error.exceptionCode === 3)) {
          // One point of the group may be at an address the device lacks. Reading the points one
          // by one shows which, and keeps the others working.
          this.logger.info('device rejected a grouped read; reading these points one by one', {
            device: device.spec.name,
            address: block.address,
            count: block.count,
            exception: error.exceptionName,
          });
          device.blocks.splice(index, 1, ...splitBlock(block));
          index--;
          continue;
        }
        if (error instanceof ModbusExceptionError || error instanceof ModbusResponseError) {
          device.stats.lastError = describeModbusError(error);
          this.reportPointErrors(device.spec, block, error);
          continue;
        }
        failure = error;
        break;
      }
    }
    if (this.stopped) return;

    if (failure === undefined) {
      device.failures = 0;
      device.stats.successfulPolls++;
      this.setOnline(device, true, 'responded');
      this.scheduleNextPoll(device, plannedAt);
      return;
    }

    device.failures++;
    const reason = describeModbusError(failure);
    device.stats.failedPolls++;
    device.stats.lastError = reason;
    if (device.failures > device.spec.retries) {
      this.setOnline(device, false, reason);
      device.nextPollAt = Date.now() + device.offlineBackoff.next();
    } else {
      this.logger.limited('debug', `poll-failed:${this.spec.name}:${device.spec.name}`, 10_000, 'poll failed', {
        device: device.spec.name,
        failures: device.failures,
        reason,
      });
      this.scheduleNextPoll(device, plannedAt);
    }
  }

  /**
   * Plans the next poll one interval after the planned time of this one, not after its actual
   * start, so a poll that waited behind another device's timeout does not shift the schedule.
   * A device more than one interval behind starts a new schedule now instead of catching up.
   */
  private scheduleNextPoll(device: DeviceState, plannedAt: number): void {
    const now = Date.now();
    const next = plannedAt + device.spec.pollIntervalMs;
    device.nextPollAt = next < now - device.spec.pollIntervalMs ? now : next;
  }

  private publishBlock(block: ReadBlock, response: ModbusResponse, timestamp: number): void {
    for (const point of block.points) {
      const offset = point.address - block.address;
      const value = isBitTable(block.table)
        ? (response.bits[offset] ?? false)
        : decodePointRegisters(point, response.registers.slice(offset, offset + point.count));
      this.publisher.publishValue(point, value, timestamp);
    }
  }

  private reportPointErrors(device: DeviceSpec, block: ReadBlock, error: ModbusExceptionError | ModbusResponseError): void {
    const details: Record<string, string | number> =
      error instanceof ModbusExceptionError ? { exception_code: error.exceptionCode, function_code: error.functionCode } : {};
    const message = describeModbusError(error);
    for (const point of block.points) {
      this.publisher.publishError(point.topic, message, { ...details, address: point.address });
      this.logger.limited('warn', `point-error:${this.spec.name}:${device.name}:${point.name}`, 60_000, 'point read failed', {
        device: device.name,
        unit_id: device.unitId,
        point: point.name,
        address: point.address,
        error: message,
      });
    }
  }

  private setOnline(device: DeviceState, online: boolean, reason: string): void {
    if (device.online === online) return;
    device.online = online;
    const fields = { device: device.spec.name, unit_id: device.spec.unitId, reason };
    if (online) {
      device.offlineBackoff.reset();
      this.logger.info('device online', fields);
    } else {
      device.failures = 0;
      // Subscribers get every value again after the outage, including on_change points.
      for (const point of device.spec.points) this.publisher.forgetValue(point.topic);
      this.logger.warn('device offline', fields);
    }
    this.publisher.publishAvailability(device.spec.availabilityTopic, online);
  }

  private async performWrite(job: WriteJob): Promise<void> {
    const { device, point } = job;
    const fields = { device: device.spec.name, unit_id: device.spec.unitId, point: point.name };
    try {
      await this.sendWrite(device.spec, job.prepared);
      const value = await this.readBack(device.spec, point);
      this.publisher.forgetValue(point.topic);
      this.publisher.publishValue(point, value);
      this.logger.info('write done', { ...fields, value: String(value) });
      job.resolve({ ok: true, value });
    } catch (error: unknown) {
      const message = describeModbusError(error);
      this.logger.warn('write failed', { ...fields, error: message });
      job.resolve({ ok: false, error: message });
    }
  }

  private async sendWrite(device: DeviceSpec, prepared: PreparedWrite): Promise<void> {
    if (prepared.kind === 'request') {
      await this.transact(device, prepared.request);
      return;
    }
    // A bit in a holding register: read the register, change the bit, write the register back.
    // NOTE: another master writing the same register between the read and the write loses its change.
    const response = await this.transact(device, { kind: 'read', functionCode: 3, address: prepared.address, count: 1 });
    const current = response.registers[0] ?? 0;
    const mask = 1 << prepared.bit;
    const next = prepared.value ? current | mask : current & ~mask & 0xffff;
    await this.transact(device, { kind: 'write-register', address: prepared.address, value: next });
  }

  private async readBack(device: DeviceSpec, point: PointSpec): Promise<FieldValue> {
    const functionCode = point.table === 'coil' ? 1 : 3;
    const response = await this.transact(device, { kind: 'read', functionCode, address: point.address, count: point.count });
    if (point.table === 'coil') return response.bits[0] ?? false;
    return decodePointRegisters(point, response.registers);
  }

  private onOpen(): void {
    const now = Date.now();
    for (const device of this.devices) device.nextPollAt = now;
    this.wakeTimer.wake();
  }

  private onClose(reason: string): void {
    this.failQueuedWrites(`bus ${this.spec.name} closed (${reason})`);
    for (const device of this.devices) this.setOnline(device, false, `bus closed: ${reason}`);
    this.wakeTimer.wake();
  }

  private failQueuedWrites(reason: string): void {
    for (const job of this.writes.splice(0, this.writes.length)) job.resolve({ ok: false, error: reason });
  }
}
