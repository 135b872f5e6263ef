/**
 * Splits a byte stream into whole MQTT control packets and enforces the maximum packet size from
 * the fixed header alone, before the body of an oversized packet is buffered.
 */

export type FrameError = 'malformed-length' | 'too-large';

export interface FrameHandler {
  /** Handles one whole packet; returns false to stop reading the rest of the chunk. */
  onFrame(frame: Buffer): boolean;
}

const MAX_VARINT_BYTES = 4;

export class FrameReader {
  maxPacketSize: number;
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Size of the packet at the head of the buffer once its fixed header is known, else 0. */
  private expected = 0;

  constructor(maxPacketSize: number) {
    this.maxPacketSize = maxPacketSize;
  }

  get bufferedBytes(): number {
    return this.buffered;
  }

  /** Feeds a chunk; calls the handler for each whole packet; returns an error or null. */
  push(chunk: Buffer, handler: FrameHandler): FrameError | null {
    if (this.buffered > 0) {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
      if (this.expected > 0 && this.buffered < this.expected) return null;
      chunk = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks, this.buffered);
      this.chunks = [];
      this.buffered = 0;
      this.expected = 0;
    }
    let offset = 0;
    while (offset < chunk.length) {
      const size = packetSize(chunk, offset);
      if (size === 'malformed-length') return size;
      if (size > this.maxPacketSize) return 'too-large';
      if (size === 0 || chunk.length - offset < size) {
        this.expected = size;
        break;
      }
      const frame = chunk.subarray(offset, offset + size);
      offset += size;
      if (!handler.onFrame(frame)) return null;
    }
    if (offset < chunk.length) {
      const rest = chunk.subarray(offset);
      this.chunks.push(rest);
      this.buffered = rest.length;
    }
    return null;
  }
}

/**
 * Returns the total size of the packet starting at `offset` (fixed header included), 0 when the
 * fixed header is not complete yet, or an error when the Remaining Length is not a valid Variable
 * Byte Integer (more than four bytes, MQTT 5.0 section 1.5.5).
 */
function packetSize(buffer: Buffer, offset: number): number | 'malformed-length' {
  let remaining = 0;
  let multiplier = 1;
  for (let i = 0; i < MAX_VARINT_BYTES; i++) {
    const position = offset + 1 + i;
    if (position >= buffer.length) return 0;
    const byte = buffer[position];
    remaining += (byte & 0x7f) * multiplier;
    if ((byte & 0x80) === 0) return 1 + i + 1 + remaining;
    multiplier *= 128;
  }
  return 'malformed-length';
}
