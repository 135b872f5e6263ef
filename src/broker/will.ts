import type { ForwardedProperties } from './message.js';
import type { QoS } from 'mqtt-packet';

/** A will message from CONNECT, published when its connection ends without a normal DISCONNECT. */
export interface Will {
  readonly topic: string;
  readonly payload: Buffer;
  readonly qos: QoS;
  readonly retain: boolean;
  readonly properties: ForwardedProperties | null;
  /** Message Expiry Interval in seconds, 0 when none. */
  readonly messageExpiryInterval: number;
  /** v5 Will Delay Interval in seconds. */
  readonly delaySeconds: number;
}
