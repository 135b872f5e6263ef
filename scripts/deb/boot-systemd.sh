#!/bin/bash
# Boots systemd in a chroot, as PID 1 of the new namespaces that scripts/test-deb.sh starts it in
# (unshare --pid --mount --net --uts --ipc), so that the package's unit runs under a real
# service manager with its sandbox, notifications and watchdog.
#
# usage: boot-systemd.sh ROOT CONSOLE_LOG
#
# The mounts are made in the private mount namespace and vanish with it. The network namespace
# has only its own loopback interface, so the broker's port 1883 does not meet this machine's.
set -euo pipefail

readonly root=$1
readonly console_log=$2

ip link set lo up

# systemd sets up mount propagation on /, which must therefore be a mount point.
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
# A cgroup2 file system of its own: systemd 257 runs only on the unified hierarchy.
mount -t cgroup2 cgroup2 "$root/sys/fs/cgroup"
mount -t tmpfs tmpfs "$root/run"
mount -t tmpfs tmpfs "$root/tmp"
mkdir -p "$root/dev/pts"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"
# Output of services that write to the console lands in this file.
: >"$console_log"
mount --bind "$console_log" "$root/dev/console"

cd "$root"
# systemd's own messages go to the journal, so `journalctl -u outpost` shows what it did to the
# unit (a watchdog timeout, for one).
exec chroot "$root" /usr/bin/env -i container=outpost-test PATH=/usr/sbin:/usr/bin \
  /usr/lib/systemd/systemd --system --log-target=journal
