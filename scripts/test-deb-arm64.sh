#!/usr/bin/env bash
# Proves the arm64 package on arm64 from an x86-64 Debian machine: enables qemu user emulation
# through binfmt_misc, then runs scripts/test-deb.sh --arch arm64, which builds the package,
# runs lintian, and installs and tests it in a Debian 13 (trixie) arm64 chroot where every
# program (Node.js, the broker, the mosquitto clients, dpkg) is an arm64 binary run by qemu.
#
# usage: scripts/test-deb-arm64.sh [--deb FILE]
#
# Needs root and the Debian packages qemu-user-static and binfmt-support (installed here with
# apt-get when missing). The first run creates the arm64 chroot with debootstrap, which took
# 146 s on a 2-core x86-64 machine; later runs reuse it. docs/packaging.md records the times.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly repo_root
readonly binfmt_dir=/proc/sys/fs/binfmt_misc

log() {
  printf 'test-deb-arm64: %s\n' "$*" >&2
}

(($(id -u) == 0)) || {
  log "must run as root: binfmt_misc, debootstrap and chroot need it"
  exit 1
}

if ! command -v update-binfmts >/dev/null || [[ ! -e /usr/libexec/qemu-binfmt/aarch64-binfmt-P && ! -x /usr/bin/qemu-aarch64-static ]]; then
  log "installing qemu-user-static and binfmt-support with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=120 \
    qemu-user-static binfmt-support >/dev/null
fi

# Machines without a running systemd do not mount binfmt_misc by themselves.
if [[ ! -e $binfmt_dir/register ]]; then
  mount -t binfmt_misc binfmt_misc "$binfmt_dir"
fi
if ! grep -qx enabled "$binfmt_dir/qemu-aarch64" 2>/dev/null; then
  update-binfmts --enable qemu-aarch64
fi
# The F flag makes the kernel open qemu when the entry is registered, so it works inside a chroot
# that has no qemu binary of its own.
if ! grep -q '^flags: .*F' "$binfmt_dir/qemu-aarch64"; then
  log "binfmt_misc entry qemu-aarch64 lacks the F (fix binary) flag, so arm64 programs cannot start inside the chroot"
  exit 1
fi

exec "$repo_root/scripts/test-deb.sh" --arch arm64 "$@"
