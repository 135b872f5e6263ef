/**
 * Grouping of the points of one device into as few read requests as the protocol allows. Points
 * of one table share a request when their addresses are contiguous or apart by at most `maxGap`
 * unused registers or bits. A request reads at most 125 registers or 2000 bits.
 */

import { isBitTable, readFunctionCode, type ModbusTable } from './address.js';
import { MAX_READ_BITS } from './modbus/pdu.js';
import type { PointSpec } from './model.js';

export interface ReadBlock {
  table: ModbusTable;
  functionCode: 1 | 2 | 3 | 4;
  address: number;
  /** Registers or bits read. */
  count: number;
  points: PointSpec[];
}

/** Builds the read requests for `points`, ordered by table and address. */
export function groupPoints(points: readonly PointSpec[], maxGap: number, maxRegistersPerRead: number): ReadBlock[] {
  const blocks: ReadBlock[] = [];
  const byTable = new Map<ModbusTable, PointSpec[]>();
  for (const point of points) {
    const list = byTable.get(point.table) ?? [];
    list.push(point);
    byTable.set(point.table, list);
  }

  for (const [table, tablePoints] of byTable) {
    const limit = isBitTable(table) ? MAX_READ_BITS : maxRegistersPerRead;
    const sorted = [...tablePoints].sort((a, b) => a.address - b.address || a.count - b.count);
    let current: ReadBlock | null = null;
    for (const point of sorted) {
      const pointEnd = point.address + point.count;
      if (current !== null) {
        const blockEnd = current.address + current.count;
        const gap = point.address - blockEnd;
        const mergedCount = Math.max(blockEnd, pointEnd) - current.address;
        if (gap <= maxGap && mergedCount <= limit) {
          current.count = mergedCount;
          current.points.push(point);
          continue;
        }
      }
      current = { table, functionCode: readFunctionCode(table), address: point.address, count: point.count, points: [point] };
      blocks.push(current);
    }
  }
  return blocks;
}

/** Returns one block per point of `block`, for a device that rejects the grouped read. */
export function splitBlock(block: ReadBlock): ReadBlock[] {
  return block.points.map((point) => ({ ...block, address: point.address, count: point.count, points: [point] }));
}
