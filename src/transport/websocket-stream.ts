/**
 * MQTT over WebSocket (MQTT 5.0 section 6): a WebSocket connection adapted to a Duplex stream, so
 * that a Connection reads and writes it like a TCP socket.
 */

import { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import type { RawData, WebSocket } from 'ws';

/** WebSocket close code 1003 (RFC 6455 section 7.4.1): the endpoint cannot accept this data type. */
const CLOSE_UNSUPPORTED_DATA = 1003;
const CLOSE_NORMAL = 1000;

/**
 * One WebSocket connection as a byte stream. Binary messages become readable bytes, with no
 * assumption that MQTT packets align with messages [MQTT-6.0.0-2]. A text message closes the
 * connection [MQTT-6.0.0-1]. Every write leaves as one binary message, and writes batched by
 * cork/uncork leave as one message together.
 */
export class WebSocketStream extends Duplex {
  readonly remoteAddress: string | undefined;
  readonly remotePort: number | undefined;
  /** The TLS socket under a `wss` connection, for the client certificate; null for `ws`. */
  readonly tlsSocket: TLSSocket | null;
  private readonly ws: WebSocket;

  constructor(ws: WebSocket, socket: Socket) {
    super({ allowHalfOpen: false });
    this.ws = ws;
    this.remoteAddress = socket.remoteAddress;
    this.remotePort = socket.remotePort;
    this.tlsSocket = socket instanceof TLSSocket ? socket : null;
    ws.binaryType = 'nodebuffer';
    ws.on('message', (data: RawData, isBinary: boolean) => this.onMessage(data, isBinary));
    ws.on('close', () => this.onClose());
    ws.on('error', (error: Error) => this.destroy(error));
  }

  override _read(): void {
    this.ws.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.send(chunk, callback);
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, callback: (error?: Error | null) => void): void {
    const data = chunks.length === 1 ? chunks[0].chunk : Buffer.concat(chunks.map((entry) => entry.chunk));
    this.send(data, callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    if (this.ws.readyState === this.ws.OPEN) this.ws.close(CLOSE_NORMAL);
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (this.ws.readyState !== this.ws.CLOSED) this.ws.terminate();
    callback(error);
  }

  private send(data: Buffer, callback: (error?: Error | null) => void): void {
    if (this.ws.readyState !== this.ws.OPEN) {
      callback(new Error('WebSocket is not open'));
      return;
    }
    this.ws.send(data, { binary: true }, (error?: Error) => callback(error ?? null));
  }

  private onMessage(data: RawData, isBinary: boolean): void {
    if (!isBinary) {
      this.ws.close(CLOSE_UNSUPPORTED_DATA, 'MQTT needs binary frames');
      this.destroy();
      return;
    }
    const bytes = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
    // When the reader is not keeping up, stop reading from the socket until _read is called.
    if (!this.push(bytes)) this.ws.pause();
  }

  private onClose(): void {
    this.push(null);
    this.destroy();
  }
}
