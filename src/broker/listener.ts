import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import type { ListenerConfig } from '../config/schema.js';
import type { Logger } from '../service/logger.js';

/** A listener could not bind its address. */
export class ListenError extends Error {
  readonly code = 'ERR_LISTEN';
}

/** One TCP listener: binds its address and hands every accepted socket to the broker. */
export class Listener {
  readonly settings: ListenerConfig;
  private readonly server: Server;
  private readonly logger: Logger;

  constructor(settings: ListenerConfig, onConnection: (socket: Socket) => void, logger: Logger) {
    this.settings = settings;
    this.logger = logger;
    this.server = createServer({ noDelay: true }, onConnection);
  }

  listen(): Promise<void> {
    const { name, host, port } = this.settings;
    return new Promise((resolve, reject) => {
      const onError = (error: NodeJS.ErrnoException): void => {
        const hint = error.code === 'EADDRINUSE'
          ? 'stop the program using it or choose another port'
          : error.code === 'EACCES'
            ? 'ports below 1024 need privileges; choose a port above 1023'
            : 'check the listener host and port';
        reject(new ListenError(`listener ${name}: cannot listen on ${host}:${port}: ${error.code ?? error.message}; ${hint}`));
      };
      this.server.once('error', onError);
      this.server.listen(port, host, () => {
        this.server.off('error', onError);
        this.server.on('error', (error: Error) => {
          this.logger.error('listener error', { listener: name, error: error.message });
        });
        const address = this.address();
        this.logger.info('listening', { listener: name, protocol: this.settings.protocol, address: address.address, port: address.port });
        resolve();
      });
    });
  }

  address(): AddressInfo {
    return this.server.address() as AddressInfo;
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      if (!this.server.listening) {
        resolve();
        return;
      }
      this.server.close(() => resolve());
    });
  }
}
