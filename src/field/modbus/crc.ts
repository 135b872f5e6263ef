/** CRC-16/MODBUS (polynomial 0xA001 reflected, initial value 0xFFFF), as used by Modbus RTU frames. */

const TABLE = buildTable();

function buildTable(): Uint16Array {
  const table = new Uint16Array(256);
  for (let byte = 0; byte < 256; byte++) {
    let crc = byte;
    for (let bit = 0; bit < 8; bit++) crc = crc & 1 ? (crc >>> 1) ^ 0xa001 : crc >>> 1;
    table[byte] = crc;
  }
  return table;
}

/** Computes the CRC of `data[start, end)`. An RTU frame carries it low byte first. */
export function crc16(data: Uint8Array, start = 0, end = data.length): number {
  let crc = 0xffff;
  for (let i = start; i < end; i++) crc = (crc >>> 8) ^ (TABLE[(crc ^ (data[i] ?? 0)) & 0xff] ?? 0);
  return crc;
}
