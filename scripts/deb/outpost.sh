#!/bin/sh
# Runs Outpost with the system's Node.js 20 (Debian package nodejs). exec keeps the process id,
# so systemd's main PID is the Node.js process.
exec /usr/bin/node /usr/lib/outpost/dist/cli/main.js "$@"
