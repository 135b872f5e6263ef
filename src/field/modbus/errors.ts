/**
 * Errors of Modbus requests. Each class has a stable string `code`. A Modbus exception code
 * (the byte the device sends back) is a separate field, `exceptionCode`.
 */

/** Names of the Modbus exception codes, as the Modbus Application Protocol v1.1b3 section 7 lists them. */
export const EXCEPTION_NAMES: Readonly<Record<number, string>> = {
  1: 'ILLEGAL FUNCTION',
  2: 'ILLEGAL DATA ADDRESS',
  3: 'ILLEGAL DATA VALUE',
  4: 'SERVER DEVICE FAILURE',
  5: 'ACKNOWLEDGE',
  6: 'SERVER DEVICE BUSY',
  8: 'MEMORY PARITY ERROR',
  10: 'GATEWAY PATH UNAVAILABLE',
  11: 'GATEWAY TARGET DEVICE FAILED TO RESPOND',
};

export function exceptionName(code: number): string {
  return EXCEPTION_NAMES[code] ?? `UNKNOWN EXCEPTION ${code}`;
}

/** The device sent a Modbus exception response. */
export class ModbusExceptionError extends Error {
  readonly code = 'ERR_MODBUS_EXCEPTION';
  readonly exceptionName: string;

  constructor(
    readonly exceptionCode: number,
    readonly functionCode: number,
  ) {
    super(`Modbus exception ${exceptionCode} (${exceptionName(exceptionCode)}) for function code ${functionCode}`);
    this.name = 'ModbusExceptionError';
    this.exceptionName = exceptionName(exceptionCode);
  }
}

/** No valid response arrived within the response timeout. */
export class ModbusTimeoutError extends Error {
  readonly code = 'ERR_MODBUS_TIMEOUT';

  constructor(unitId: number, timeoutMs: number) {
    super(`timed out after ${timeoutMs} ms waiting for a response from unit ${unitId}`);
    this.name = 'ModbusTimeoutError';
  }
}

/** The bus connection is closed (port missing, unplugged, TCP connection lost); the request was not sent. */
export class ModbusBusClosedError extends Error {
  readonly code = 'ERR_MODBUS_BUS_CLOSED';

  constructor(bus: string, reason: string) {
    super(`bus ${bus} is not open (${reason})`);
    this.name = 'ModbusBusClosedError';
  }
}

/** The response had the right unit id, function code and checksum but its content does not fit the request. */
export class ModbusResponseError extends Error {
  readonly code = 'ERR_MODBUS_RESPONSE';

  constructor(message: string) {
    super(message);
    this.name = 'ModbusResponseError';
  }
}

/** Describes any error of a Modbus request in a few words, for logs and result topics. */
export function describeModbusError(error: unknown): string {
  if (error instanceof ModbusExceptionError) return error.exceptionName;
  if (error instanceof Error) return error.message;
  return String(error);
}
