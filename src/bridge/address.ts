/** A remote broker address: host name or IP address, and TCP port. */
export interface RemoteAddress {
  host: string;
  port: number;
}

/**
 * Parses `host:port`, `host` or `[IPv6 address]:port`; returns a problem description for an
 * invalid address. `defaultPort` applies when the port is left out.
 */
export function parseAddress(text: string, defaultPort: number): RemoteAddress | string {
  const bracketed = /^\[([0-9A-Fa-f:.]+)\](?::(\d+))?$/.exec(text);
  let host: string;
  let portText: string | undefined;
  if (bracketed !== null) {
    host = bracketed[1] ?? '';
    portText = bracketed[2];
  } else {
    const parts = text.split(':');
    if (parts.length > 2) return `${JSON.stringify(text)} has more than one colon; write an IPv6 address in brackets, e.g. [::1]:1883`;
    host = parts[0] ?? '';
    portText = parts[1];
  }
  if (host === '' || /\s/.test(host)) return `${JSON.stringify(text)} has no valid host`;
  if (portText === undefined) return { host, port: defaultPort };
  const port = Number(portText);
  if (!/^\d+$/.test(portText) || port < 1 || port > 65_535) return `port ${JSON.stringify(portText)} is not in 1..65535`;
  return { host, port };
}
