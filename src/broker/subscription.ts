import type { QoS } from 'mqtt-packet';

/** One client's subscription to one filter, with its v5 subscription options. */
export interface Subscription {
  clientId: string;
  /** The filter as the client sent it, including any `$share/group/` prefix. */
  rawFilter: string;
  /** The filter matched against topic names. */
  filter: string;
  shareGroup: string | null;
  qos: QoS;
  noLocal: boolean;
  retainAsPublished: boolean;
  retainHandling: number;
  /** v5 subscription identifier, 0 when none was given. */
  subscriptionId: number;
}
