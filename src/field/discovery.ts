/**
 * Home Assistant MQTT discovery: one retained config message per point and serial-line value, on
 * `<discovery_prefix>/<component>/outpost_<device>/<object>/config`, as described at
 * https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery.
 */

import { INTEGER_RANGES } from './codec.js';
import type { LineValue } from './line-parser.js';
import type { DeviceSpec, FieldModel, LineSpec, PointSpec } from './model.js';
import { expandTemplate } from './topic-template.js';

export interface DiscoveryMessage {
  topic: string;
  payload: string;
}

type Component = 'sensor' | 'binary_sensor' | 'switch' | 'number' | 'text';

function componentOf(point: PointSpec): Component {
  if (point.type === 'bool') return point.writable ? 'switch' : 'binary_sensor';
  if (point.type === 'string') return point.writable ? 'text' : 'sensor';
  return point.writable ? 'number' : 'sensor';
}

function objectId(...parts: string[]): string {
  return parts.join('_').replace(/[^A-Za-z0-9_-]/g, '_');
}

/** Builds the discovery messages of every Modbus point of `model`. */
export function pointDiscoveryMessages(model: FieldModel): DiscoveryMessage[] {
  const messages: DiscoveryMessage[] = [];
  for (const bus of model.buses) {
    for (const device of bus.devices) {
      for (const point of device.points) messages.push(pointMessage(model, device, point));
    }
  }
  return messages;
}

function pointMessage(model: FieldModel, device: DeviceSpec, point: PointSpec): DiscoveryMessage {
  const component = componentOf(point);
  const json = model.payloadFormat === 'json';
  const config: Record<string, unknown> = {
    name: point.name,
    unique_id: objectId('outpost', device.name, point.name),
    object_id: objectId(device.name, point.name),
    state_topic: point.topic,
    availability_topic: device.availabilityTopic,
    payload_available: 'online',
    payload_not_available: 'offline',
    device: { identifiers: [objectId('outpost', device.name)], name: device.name },
    origin: { name: 'Outpost' },
  };
  if (point.type === 'bool') {
    // State payloads are `true`/`false` in plain format; the template maps JSON values to them.
    if (json) config.value_template = "{{ 'true' if value_json.value else 'false' }}";
    config.payload_on = 'true';
    config.payload_off = 'false';
    if (component === 'switch') {
      config.state_on = 'true';
      config.state_off = 'false';
    }
  } else if (json) {
    config.value_template = '{{ value_json.value }}';
  }
  if (point.unit !== '') config.unit_of_measurement = point.unit;
  if (point.writable) config.command_topic = `${point.topic}/set`;
  if (component === 'number') Object.assign(config, numberLimits(point));
  if (component === 'text') config.max = 2 * point.stringRegisters;
  return {
    topic: expandTemplate('{prefix}/{component}/{node}/{object}/config', {
      prefix: model.discovery.prefix,
      component,
      node: objectId('outpost', device.name),
      object: objectId(point.name),
    }),
    payload: JSON.stringify(config),
  };
}

/** Range of a Home Assistant number entity: the type's range after scaling, or a wide range for floats. */
function numberLimits(point: PointSpec): { min: number; max: number; step: number; mode: string } {
  const range = INTEGER_RANGES[point.type];
  let low = -1e15;
  let high = 1e15;
  if (range !== undefined) {
    const a = Number(range[0]) * point.scale + point.offset;
    const b = Number(range[1]) * point.scale + point.offset;
    low = Math.max(-1e15, Math.min(a, b));
    high = Math.min(1e15, Math.max(a, b));
  }
  let step = point.precision === undefined ? 0.001 : 10 ** -point.precision;
  if (range !== undefined) step = Math.abs(point.scale);
  return { min: low, max: high, step, mode: 'box' };
}

/** Builds the discovery message of one serial-line value, sent the first time the value is seen. */
export function lineValueDiscoveryMessage(model: FieldModel, line: LineSpec, value: LineValue): DiscoveryMessage {
  const config: Record<string, unknown> = {
    name: value.name,
    unique_id: objectId('outpost', line.name, value.name),
    object_id: objectId(line.name, value.name),
    state_topic: value.topic,
    availability_topic: line.availabilityTopic,
    payload_available: 'online',
    payload_not_available: 'offline',
    device: { identifiers: [objectId('outpost', line.name)], name: line.name },
    origin: { name: 'Outpost' },
  };
  if (model.payloadFormat === 'json') config.value_template = '{{ value_json.value }}';
  if (value.unit !== '') config.unit_of_measurement = value.unit;
  const component = typeof value.value === 'boolean' ? 'binary_sensor' : 'sensor';
  if (component === 'binary_sensor') {
    if (model.payloadFormat === 'json') config.value_template = "{{ 'true' if value_json.value else 'false' }}";
    config.payload_on = 'true';
    config.payload_off = 'false';
  }
  return {
    topic: expandTemplate('{prefix}/{component}/{node}/{object}/config', {
      prefix: model.discovery.prefix,
      component,
      node: objectId('outpost', line.name),
      object: objectId(value.name),
    }),
    payload: JSON.stringify(config),
  };
}
