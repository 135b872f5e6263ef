/**
 * The runtime model of the field section: buses, devices and points with every inherited value
 * resolved and every topic expanded, built once from the validated configuration.
 */

import { isBitTable, type ModbusTable } from './address.js';
import { registerCount, type DataType, type WordOrder } from './codec.js';
import type { BusConfig, FieldConfig, LineRuleConfig, SerialLineConfig } from './config-schema.js';
import { expandTemplate } from './topic-template.js';

export type QoS = 0 | 1 | 2;

export interface PointSpec {
  name: string;
  deviceName: string;
  table: ModbusTable;
  address: number;
  type: DataType;
  order: WordOrder;
  /** Registers of a string point. */
  stringRegisters: number;
  bit: number | undefined;
  /** Registers (register tables) or bits (coils, discrete inputs) the point reads. */
  count: number;
  scale: number;
  offset: number;
  precision: number | undefined;
  unit: string;
  onChange: boolean;
  deadband: number;
  writable: boolean;
  qos: QoS;
  retain: boolean;
  topic: string;
}

export interface DeviceSpec {
  name: string;
  busName: string;
  unitId: number;
  pollIntervalMs: number;
  timeoutMs: number;
  retries: number;
  maxReadGap: number;
  maxRegistersPerRead: number;
  offlinePollMaxMs: number;
  availabilityTopic: string;
  points: PointSpec[];
}

export interface BusSpec {
  name: string;
  config: BusConfig;
  devices: DeviceSpec[];
}

export interface LineSpec {
  name: string;
  config: SerialLineConfig;
  rules: LineRuleSpec[];
  qos: QoS;
  retain: boolean;
  availabilityTopic: string;
}

export interface LineRuleSpec {
  config: LineRuleConfig;
  pattern: RegExp | undefined;
}

export interface FieldModel {
  topicPrefix: string;
  payloadFormat: 'plain' | 'json';
  discovery: { enabled: boolean; prefix: string };
  buses: BusSpec[];
  lines: LineSpec[];
}

/** Returns the availability topic of a device or serial line. */
export function availabilityTopic(prefix: string, name: string): string {
  return expandTemplate('{prefix}/{name}/availability', { prefix, name });
}

export function buildFieldModel(field: FieldConfig): FieldModel {
  const buses = field.buses.map((bus): BusSpec => ({
    name: bus.name,
    config: bus,
    devices: bus.devices.map((device): DeviceSpec => {
      const deviceQos = device.qos ?? field.qos;
      const deviceRetain = device.retain ?? field.retain;
      return {
        name: device.name,
        busName: bus.name,
        unitId: device.unit_id,
        pollIntervalMs: device.poll_interval_ms ?? bus.poll_interval_ms,
        timeoutMs: device.timeout_ms ?? bus.timeout_ms,
        retries: device.retries ?? bus.retries,
        maxReadGap: device.max_read_gap ?? bus.max_read_gap,
        maxRegistersPerRead: device.max_registers_per_read ?? bus.max_registers_per_read,
        offlinePollMaxMs: bus.offline_poll_max_ms,
        availabilityTopic: availabilityTopic(field.topic_prefix, device.name),
        points: device.points.map((point): PointSpec => {
          // The schema has checked that a table is given or follows from the address.
          const table = point.table ?? point.address.table ?? 'holding_register';
          const type = point.type ?? (isBitTable(table) ? 'bool' : 'uint16');
          const stringRegisters = point.length ?? 1;
          const values = { prefix: field.topic_prefix, bus: bus.name, device: device.name, unit_id: device.unit_id, point: point.name };
          return {
            name: point.name,
            deviceName: device.name,
            table,
            address: point.address.address,
            type,
            order: point.order,
            stringRegisters,
            bit: point.bit,
            count: isBitTable(table) ? 1 : registerCount(type, stringRegisters),
            scale: point.scale,
            offset: point.offset,
            precision: point.precision,
            unit: point.unit,
            onChange: point.on_change,
            deadband: point.deadband,
            writable: point.writable,
            qos: (point.qos ?? deviceQos) as QoS,
            retain: point.retain ?? deviceRetain,
            topic: expandTemplate(point.topic ?? field.topic_template, values),
          };
        }),
      };
    }),
  }));

  const lines = field.serial_lines.map((line): LineSpec => ({
    name: line.name,
    config: line,
    rules: line.rules.map((rule) => ({ config: rule, pattern: rule.match === undefined ? undefined : new RegExp(rule.match) })),
    qos: (line.qos ?? field.qos) as QoS,
    retain: line.retain ?? field.retain,
    availabilityTopic: availabilityTopic(field.topic_prefix, line.name),
  }));

  return {
    topicPrefix: field.topic_prefix,
    payloadFormat: field.payload_format,
    discovery: { enabled: field.home_assistant_discovery, prefix: field.discovery_prefix },
    buses,
    lines,
  };
}
