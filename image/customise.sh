#!/bin/bash
# Installs and sets up the packages of the Outpost SD-card image inside its root file system.
# image/build.sh copies this script into the Debian 13 arm64 tree and runs it there with chroot,
# under qemu user emulation, with /proc and /dev/pts mounted. It is not meant to be run by hand.
#
# usage: customise.sh OUTPOST_DEB ROOT_LABEL PACKAGE...
#   OUTPOST_DEB  path of the Outpost arm64 .deb inside the tree
#   ROOT_LABEL   file system label of the root partition, for the Raspberry Pi kernel command line
#   PACKAGE      Debian packages to install with their dependencies (no recommended packages)
#
# It needs network access to the Debian archive (apt-get). In one run under emulation on a
# 2-core x86-64 machine, the install took 362 s and the initramfs 130 s. docs/image.md has the
# times of the whole build.
set -euo pipefail

readonly outpost_deb=$1
readonly root_label=$2
shift 2
readonly packages=("$@")
readonly admin_user=admin
readonly initramfs_conf=/etc/initramfs-tools/update-initramfs.conf

export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C.UTF-8

log() {
  printf 'customise: %s\n' "$*" >&2
}

apt_install() {
  apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=120 "$@"
}

install_packages() {
  apt-get update -q

  # Building an initramfs takes minutes under emulation, so it is built once, at the end.
  # update_initramfs=no stops the runs that package triggers start (update-initramfs -u).
  # INITRD=No stops the kernel package's hook, whose update-initramfs -c ignores that setting
  # (initramfs-tools 0.148).
  apt_install initramfs-tools
  sed -i 's/^update_initramfs=.*/update_initramfs=no/' "$initramfs_conf"
  # The debootstrap tree comes from build/image/cache and may be older than the archive.
  INITRD=No apt-get upgrade -y -q -o DPkg::Lock::Timeout=120
  INITRD=No apt_install "${packages[@]}" "$outpost_deb"
}

# Removes documentation, manual pages and translations that debootstrap installed before
# /etc/dpkg/dpkg.cfg.d/outpost-image-excludes was in place, with the same exceptions.
remove_excluded_files() {
  find /usr/share/doc -mindepth 1 \( -path /usr/share/doc/outpost -o -path /usr/share/doc/outpost-image \) -prune \
    -o ! -type d ! -name copyright -exec rm -f {} +
  find /usr/share/doc -mindepth 1 -type d -empty -delete
  rm -rf /usr/share/man/* /usr/share/info/*
  find /usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
}

create_accounts() {
  # The administrator logs in with an SSH key only, so the account has no usable password.
  useradd --create-home --shell /bin/bash --comment 'Outpost administrator' \
    --groups sudo,adm,systemd-journal "$admin_user"
  passwd --lock "$admin_user" >/dev/null
  passwd --lock root >/dev/null
  visudo --check --quiet --file=/etc/sudoers.d/outpost-admin
}

configure_raspi_firmware() {
  # Read by the raspi-firmware hook when it writes cmdline.txt. The mini UART (ttyS1) is the
  # serial console on GPIO 14 and 15 of the Pi 3, 4 and Zero 2 W; tty0 is the screen, and the
  # last console listed gets the boot messages.
  cat >>/etc/default/raspi-firmware <<EOF

# Outpost image
ROOTPART=LABEL=$root_label
CONSOLES="ttyS1,115200 tty0"
EOF
}

enable_units() {
  systemctl enable outpost-boot-config.service systemd-networkd.service systemd-resolved.service \
    systemd-timesyncd.service
  # The package enables outpost.service and ssh.service; this fails loudly if it did not.
  systemctl is-enabled outpost.service ssh.service
  # wpa_supplicant.service is the D-Bus controlled instance for network managers; the image uses
  # outpost-wifi@.service instead. The apt timers do nothing without unattended-upgrades.
  systemctl disable wpa_supplicant.service apt-daily.timer apt-daily-upgrade.timer
}

build_initramfs() {
  local versions
  versions=$(linux-version list)
  if [[ -z $versions || $versions == *$'\n'* ]]; then
    log "expected exactly one installed kernel, found: ${versions:-none}"
    return 1
  fi
  sed -i 's/^update_initramfs=.*/update_initramfs=yes/' "$initramfs_conf"
  # The raspi-firmware hook that update-initramfs runs afterwards copies the kernel, this
  # initramfs and the device trees to /boot/firmware, and writes config.txt and cmdline.txt.
  update-initramfs -c -k "$versions"
}

main() {
  local started=$SECONDS
  install_packages
  log "packages installed in $((SECONDS - started)) s"
  remove_excluded_files
  create_accounts
  configure_raspi_firmware
  enable_units
  started=$SECONDS
  build_initramfs
  log "initramfs built in $((SECONDS - started)) s"
}

main
