import type { EventEmitter } from 'node:events';
import type { MqttClient } from 'mqtt';

/** Emitters `onceWithTimeout` accepts: Node's EventEmitter (sockets, servers) and MQTT.js clients. */
export type EventSource = EventEmitter | MqttClient;

/** Resolves after `ms` milliseconds. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Polls `predicate` every `intervalMs` until it returns true, and rejects with `message` when it is
 * still false after `timeoutMs`.
 */
export async function waitFor(
  predicate: () => boolean | Promise<boolean>,
  timeoutMs = 2000,
  message = 'condition',
  intervalMs = 10,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await predicate()) {
      return;
    }
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${message}`);
    }
    await delay(intervalMs);
  }
}

/**
 * Resolves with the arguments of the next `event` from `emitter`, and rejects when `timeoutMs`
 * passes first or the emitter emits 'error' (unless 'error' is the awaited event).
 */
export function onceWithTimeout(
  source: EventSource,
  event: string,
  timeoutMs = 2000,
): Promise<unknown[]> {
  // MQTT.js types its events per name, but at run time its client is a Node EventEmitter.
  const emitter = source as EventEmitter;
  return new Promise((resolve, reject) => {
    const onEvent = (...args: unknown[]): void => {
      cleanup();
      resolve(args);
    };
    const onError = (error: unknown): void => {
      cleanup();
      reject(error instanceof Error ? error : new Error(String(error)));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`timed out after ${timeoutMs} ms waiting for event '${event}'`));
    }, timeoutMs);
    const cleanup = (): void => {
      clearTimeout(timer);
      emitter.removeListener(event, onEvent);
      if (event !== 'error') {
        emitter.removeListener('error', onError);
      }
    };

    emitter.on(event, onEvent);
    if (event !== 'error') {
      emitter.on('error', onError);
    }
  });
}

/** Rejects with a timeout error when `promise` does not settle within `timeoutMs`. */
export function withTimeout<T>(promise: Promise<T>, timeoutMs: number, description: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${description}`));
    }, timeoutMs);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error instanceof Error ? error : new Error(String(error)));
      },
    );
  });
}
