import type { ForwardedProperties } from '../broker/message.js';

/** Stored form of the forwarded v5 properties: JSON, with correlation data in base64. */
interface StoredProperties {
  pfi?: boolean;
  ct?: string;
  rt?: string;
  cd?: string;
  up?: Array<[string, string]>;
}

export function encodeProperties(properties: ForwardedProperties | null): string | null {
  if (properties === null) return null;
  const stored: StoredProperties = {};
  if (properties.payloadFormatIndicator !== undefined) stored.pfi = properties.payloadFormatIndicator;
  if (properties.contentType !== undefined) stored.ct = properties.contentType;
  if (properties.responseTopic !== undefined) stored.rt = properties.responseTopic;
  if (properties.correlationData !== undefined) stored.cd = properties.correlationData.toString('base64');
  if (properties.userProperties !== undefined) stored.up = properties.userProperties.map(([name, value]) => [name, value]);
  return JSON.stringify(stored);
}

export function decodeProperties(text: string | null): ForwardedProperties | null {
  if (text === null) return null;
  const stored = JSON.parse(text) as StoredProperties;
  const properties: ForwardedProperties = {};
  if (stored.pfi !== undefined) properties.payloadFormatIndicator = stored.pfi;
  if (stored.ct !== undefined) properties.contentType = stored.ct;
  if (stored.rt !== undefined) properties.responseTopic = stored.rt;
  if (stored.cd !== undefined) properties.correlationData = Buffer.from(stored.cd, 'base64');
  if (stored.up !== undefined) properties.userProperties = stored.up;
  return properties;
}

export function encodeIds(ids: readonly number[]): string | null {
  return ids.length === 0 ? null : ids.join(',');
}

export function decodeIds(text: string | null): number[] {
  return text === null || text === '' ? [] : text.split(',').map(Number);
}
