/**
 * Modbus tables and addresses. Outpost addresses are the 0-based protocol addresses that go on
 * the wire. The Modicon reference notation (5 or 6 digits, or with an `x`, 1-based, the first
 * digit naming the table) is accepted only as a string, because a plain number such as 40001 is
 * also a valid protocol address.
 */

export const MODBUS_TABLES = ['coil', 'discrete_input', 'input_register', 'holding_register'] as const;
export type ModbusTable = (typeof MODBUS_TABLES)[number];

export function isBitTable(table: ModbusTable): boolean {
  return table === 'coil' || table === 'discrete_input';
}

export function isWritableTable(table: ModbusTable): boolean {
  return table === 'coil' || table === 'holding_register';
}

export function readFunctionCode(table: ModbusTable): 1 | 2 | 3 | 4 {
  switch (table) {
    case 'coil':
      return 1;
    case 'discrete_input':
      return 2;
    case 'holding_register':
      return 3;
    case 'input_register':
      return 4;
  }
}

const TABLE_BY_DIGIT: Record<string, ModbusTable> = {
  '0': 'coil',
  '1': 'discrete_input',
  '3': 'input_register',
  '4': 'holding_register',
};

const MODICON_FORMS = 'a 5-digit reference such as "40001" (addresses 0..9998), a 6-digit one such as "400001", or "4x0001"';

/**
 * Parses a Modicon reference such as "40001", "400001" or "4x0001" into its table and 0-based
 * address. Returns an error message when the string is no such reference.
 */
export function parseModiconAddress(text: string): { table: ModbusTable; address: number } | string {
  const trimmed = text.trim();
  const match = /^([0134])(?:[xX](\d{1,5})|(\d{4,5}))$/.exec(trimmed);
  const table = match === null ? undefined : TABLE_BY_DIGIT[match[1] ?? ''];
  const digits = match?.[2] ?? match?.[3];
  if (table === undefined || digits === undefined) {
    return `${JSON.stringify(text)} is not a Modbus address; write a 0-based integer without quotes, or a Modicon reference: ${MODICON_FORMS}`;
  }
  const reference = Number(digits);
  if (reference < 1 || reference > 65536) {
    return `${JSON.stringify(text)} is out of range: the number after the table digit must be 1..65536 (the references are 1-based)`;
  }
  return { table, address: reference - 1 };
}

/** Formats a 0-based address of `table` as a 6-digit Modicon reference, for messages. */
export function formatModiconAddress(table: ModbusTable, address: number): string {
  const digit = { coil: '0', discrete_input: '1', input_register: '3', holding_register: '4' }[table];
  return `${digit}${String(address + 1).padStart(5, '0')}`;
}
