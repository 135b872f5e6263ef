import type { Duplex } from 'node:stream';

/**
 * The stream a Connection reads MQTT bytes from and writes them to: a TCP socket, a TLS socket or
 * a WebSocket adapted to a stream. It has the Duplex methods the connection uses (write, cork,
 * uncork, pause, resume, end, destroy, writableLength) and the peer address of a socket.
 */
export interface ClientSocket extends Duplex {
  readonly remoteAddress?: string | undefined;
  readonly remotePort?: number | undefined;
  /** Present on TCP and TLS sockets; WebSocket streams set it on their underlying socket. */
  setNoDelay?(noDelay?: boolean): unknown;
}
