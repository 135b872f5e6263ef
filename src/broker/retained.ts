import { isExpired, type Message } from './message.js';
import { topicMatchesFilter } from '../mqtt/topic.js';

/** Retained messages by topic: the last message published with RETAIN set on each topic. */
export class RetainedStore {
  private readonly messages = new Map<string, Message>();

  get size(): number {
    return this.messages.size;
  }

  /** Stores the message, or removes the topic's retained message when the payload is empty [MQTT-3.3.1-10]. */
  set(message: Message): void {
    if (message.payload.length === 0) {
      this.messages.delete(message.topic);
    } else {
      this.messages.set(message.topic, message);
    }
  }

  /** Returns the unexpired retained messages whose topic matches `filter`, dropping expired ones. */
  match(filter: string): Message[] {
    const now = Date.now();
    const found: Message[] = [];
    // TODO(perf): a scan of every retained topic; an index by level pays off with many thousands.
    for (const [topic, message] of this.messages) {
      if (isExpired(message, now)) {
        this.messages.delete(topic);
        continue;
      }
      if (topicMatchesFilter(filter, topic)) found.push(message);
    }
    return found;
  }
}
