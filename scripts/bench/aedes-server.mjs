#!/usr/bin/env node
// Runs Aedes (npm package `aedes`, default in-memory persistence) on 127.0.0.1 for the benchmark.
// Usage: node scripts/bench/aedes-server.mjs PORT. Stops on SIGTERM or SIGINT.

import { createServer } from 'node:net';
import { Aedes } from 'aedes';

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  process.stderr.write(`aedes-server: invalid port ${JSON.stringify(process.argv[2])}; pass a TCP port from 1 to 65535\n`);
  process.exit(2);
}

const aedes = await Aedes.createBroker();
const server = createServer(aedes.handle);
server.listen(port, '127.0.0.1', () => {
  process.stderr.write(`aedes listening on 127.0.0.1:${port}\n`);
});

function stop() {
  server.close();
  aedes.close(() => process.exit(0));
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
