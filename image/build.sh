#!/usr/bin/env bash
# Builds the Outpost SD-card image for the Raspberry Pi 3, 4, 400 and Zero 2 W:
# build/image/outpost-VERSION-arm64.img.xz and its .sha256 file. VERSION comes from package.json.
#
#  1. debootstrap makes a minimal Debian 13 (trixie) arm64 tree (main, contrib and
#     non-free-firmware), kept in build/image/cache and reused by later builds;
#  2. a copy of it gets the files of image/overlay, then image/customise.sh runs in it under chroot
#     and qemu user emulation. It installs Debian's kernel, raspi-firmware, systemd-networkd,
#     OpenSSH, wpa_supplicant, Node.js 20 and the Outpost arm64 .deb, and builds the initramfs
#     once at the end;
#  3. without loop mounts: mkfs.vfat and mcopy make the boot partition from /boot/firmware,
#     mke2fs -d the ext4 root file system, sfdisk writes an MBR partition table into the image
#     file, dd copies both partitions into it, and xz compresses it.
#
# usage: image/build.sh [--deb FILE] [--keep-work]
#   --deb FILE   the Outpost arm64 package (default: build/deb/outpost_VERSION_arm64.deb, built
#                with scripts/build-deb.sh --arch arm64 when missing)
#   --keep-work  keep the root file system tree and the partition files in build/image/work
#
# Needs: root (debootstrap, chroot, mount), network access to the Debian archive, and the Debian
# packages debootstrap, qemu-user-static and binfmt-support (arm64 programs through binfmt_misc),
# dosfstools, mtools, fdisk, e2fsprogs (1.43 or later, for mke2fs -d) and xz-utils. About 5 GB
# of free space in build/image while it runs.
#
# Measured in single runs on a 2-core x86-64 machine running Debian 12, shared with other jobs.
# The whole build took 772 s with an empty cache and 582 to 617 s with a filled one, most of it
# for the package install under emulation. docs/image.md has the times of each step and sizes.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly repo_root
readonly image_source=$repo_root/image
readonly output_dir=$repo_root/build/image
readonly cache_dir=$output_dir/cache
readonly work_dir=$output_dir/work
readonly suite=trixie
readonly components=main,contrib,non-free-firmware

# The labels join the partitions to /etc/fstab and to root= on the kernel command line.
# A FAT label has at most 11 characters, an ext4 label at most 16.
readonly boot_label=OUTPOSTBOOT
readonly root_label=outpost-root
# The boot partition contains the Raspberry Pi firmware (about 25 MB), the kernel and the
# initramfs (about 37 MB each for Debian 13's 6.12 kernel), and during a kernel upgrade two of
# each, hence 512 MiB. It starts at 4 MiB, a common erase-block boundary of SD cards.
readonly boot_start_mib=4
readonly boot_size_mib=512
# Free space left in the root file system of the image; the first boot grows it to the card.
readonly root_free_mib=384

# Debian packages of the image, with their dependencies but without recommended packages.
readonly packages=(
  # boot: init, device manager, kernel, initramfs and its zstd compressor, Raspberry Pi firmware
  systemd-sysv udev linux-image-arm64 zstd raspi-firmware
  # Wi-Fi chip firmware of the Pi 3, 4, 400 and Zero 2 W, and the regulatory database
  firmware-brcm80211 wireless-regdb
  # growing the root file system at the first boot; fsck of the boot partition
  e2fsprogs fdisk dosfstools
  # network: systemd-networkd (part of systemd), DNS, time, Wi-Fi
  netbase systemd-resolved systemd-timesyncd wpasupplicant iproute2 iputils-ping
  # administration over SSH
  openssh-server sudo less nano ca-certificates
)

deb=""
keep_work=0
version=""
# Sizes in MiB, set by assemble_image for the closing summary.
boot_used_mib=0
root_used_mib=0
disk_size_mib=0

readonly check_name=build-image
# shellcheck source=scripts/lib/checks.sh
source "$repo_root/scripts/lib/checks.sh"

parse_arguments() {
  while (($# > 0)); do
    case "$1" in
      --deb)
        (($# >= 2)) || die "--deb needs a file"
        deb=$(realpath "$2")
        shift 2
        ;;
      --keep-work)
        keep_work=1
        shift
        ;;
      *) die "unknown argument '$1'; usage: image/build.sh [--deb FILE] [--keep-work]" ;;
    esac
  done
}

check_host() {
  (($(id -u) == 0)) || die "must run as root: debootstrap, chroot and mount need it"
  local missing=() tool
  for tool in debootstrap mkfs.vfat mcopy sfdisk mke2fs xz unshare node; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  ((${#missing[@]} == 0)) ||
    die "missing programs: ${missing[*]}; on Debian: apt-get install debootstrap dosfstools mtools fdisk e2fsprogs xz-utils util-linux nodejs"

  # Machines without a running systemd do not mount binfmt_misc by themselves.
  local binfmt_dir=/proc/sys/fs/binfmt_misc
  [[ -e $binfmt_dir/register ]] || mount -t binfmt_misc binfmt_misc "$binfmt_dir"
  if ! grep -qx enabled "$binfmt_dir/qemu-aarch64" 2>/dev/null; then
    command -v update-binfmts >/dev/null ||
      die "arm64 programs cannot run here; on Debian: apt-get install qemu-user-static binfmt-support"
    update-binfmts --enable qemu-aarch64
  fi
  # The F flag makes the kernel open qemu when the entry is registered, so it also works inside
  # the chroot, which has no qemu binary of its own.
  grep -q '^flags: .*F' "$binfmt_dir/qemu-aarch64" ||
    die "binfmt_misc entry qemu-aarch64 lacks the F (fix binary) flag, so arm64 programs cannot start inside the chroot; install qemu-user-static from Debian"
}

find_package() {
  version=$(node -p 'require(process.argv[1]).version' "$repo_root/package.json")
  if [[ -z $deb ]]; then
    deb=$repo_root/build/deb/outpost_${version}_arm64.deb
    if [[ ! -f $deb ]]; then
      log "building $deb with scripts/build-deb.sh"
      "$repo_root/scripts/build-deb.sh" --arch arm64
    fi
  fi
  [[ -f $deb ]] || die "package file not found: $deb"
  [[ $(dpkg-deb --field "$deb" Architecture) == arm64 ]] || die "$deb is not an arm64 package"
}

# Makes the debootstrap tree unless the cache has one for the same suite and components, and
# prints its path.
ensure_base() {
  local base=$cache_dir/$suite-arm64-minbase
  local marker=$base/.outpost-image-base
  local key="$suite $components minbase"
  if [[ -f $marker && $(cat "$marker") == "$key" ]]; then
    printf '%s\n' "$base"
    return
  fi
  local started=$SECONDS
  log "creating the $suite arm64 tree with debootstrap in $base"
  rm -rf --one-file-system "$base" "$base.tmp"
  mkdir -p "$cache_dir"
  if ! debootstrap --arch=arm64 --variant=minbase --components="$components" "$suite" "$base.tmp" \
    >"$cache_dir/debootstrap.log" 2>&1; then
    tail -n 30 "$cache_dir/debootstrap.log" >&2
    die "debootstrap failed; its log is $cache_dir/debootstrap.log"
  fi
  printf '%s' "$key" >"$base.tmp/.outpost-image-base"
  mv "$base.tmp" "$base"
  log "debootstrap took $((SECONDS - started)) s"
  printf '%s\n' "$base"
}

prepare_tree() {
  local base=$1 rootfs=$work_dir/rootfs
  rm -rf --one-file-system "$work_dir"
  mkdir -p "$work_dir"
  cp -a "$base" "$rootfs"
  rm -f "$rootfs/.outpost-image-base"

  cp -r --preserve=mode "$image_source/overlay/." "$rootfs/"
  chmod 0440 "$rootfs/etc/sudoers.d/outpost-admin"
  install -D -m 0644 "$repo_root/docs/image.md" "$rootfs/usr/share/doc/outpost-image/image.md"
  install -m 0755 "$image_source/customise.sh" "$rootfs/root/customise.sh"
  cp "$deb" "$rootfs/root/"
  # No service may start inside the chroot: it would run on this machine (invoke-rc.d reads this).
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
  chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
  # Name resolution for apt-get inside the chroot; systemd-resolved replaces it by its symlink.
  cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf"
}

# Runs customise.sh in the tree, in private mount and PID namespaces: /proc, /dev/pts and the
# package cache are mounted for the chroot only and unmounted when it ends, and no process
# started in it outlives it.
run_customise() {
  local rootfs=$work_dir/rootfs started=$SECONDS status=0
  mkdir -p "$cache_dir/apt-archives/partial"
  log "installing packages in the tree under qemu; the log is $output_dir/customise.log"
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    unshare --mount --pid --fork --propagation private -- bash -euc '
      rootfs=$1 archives=$2
      shift 2
      mount -t proc proc "$rootfs/proc"
      mount -t devpts -o newinstance,ptmxmode=0666 devpts "$rootfs/dev/pts"
      mount --bind "$archives" "$rootfs/var/cache/apt/archives"
      status=0
      chroot "$rootfs" /root/customise.sh "$@" || status=$?
      umount "$rootfs/var/cache/apt/archives"
      umount "$rootfs/dev/pts"
      umount "$rootfs/proc"
      exit "$status"' \
    customise "$rootfs" "$cache_dir/apt-archives" "/root/$(basename "$deb")" "$root_label" "${packages[@]}" \
    >"$output_dir/customise.log" 2>&1 || status=$?
  if ((status != 0)); then
    tail -n 40 "$output_dir/customise.log" >&2
    die "customise.sh failed with exit status $status; its log is $output_dir/customise.log"
  fi
  grep '^customise: ' "$output_dir/customise.log" | sed 's/^customise: /  /' >&2 || true
  log "customising took $((SECONDS - started)) s"
}

# Writes the files that name the partitions, and removes what must not be shared by every card
# made from the image (SSH host keys, machine ID) or is not needed on it.
finish_tree() {
  local rootfs=$work_dir/rootfs
  cat >"$rootfs/etc/fstab" <<EOF
# The root file system and the Raspberry Pi boot partition, found by their labels. The boot
# partition is mounted read-only and readable by root only, because wifi.conf and outpost.yaml
# on it may contain secrets. An apt hook makes it writable while dpkg runs
# (/etc/apt/apt.conf.d/80outpost-boot-partition).
LABEL=$root_label	/	ext4	defaults,noatime	0	1
LABEL=$boot_label	/boot/firmware	vfat	ro,noatime,umask=0077	0	2
EOF
  printf 'outpost\n' >"$rootfs/etc/hostname"
  cat >"$rootfs/etc/hosts" <<'EOF'
127.0.0.1	localhost
127.0.1.1	outpost
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
EOF
  printf 'Outpost SD-card image %s, Debian 13 (trixie) arm64, built %s\n' "$version" "$(date -u +%Y-%m-%d)" \
    >"$rootfs/etc/outpost-image-release"

  rm -f "$rootfs/usr/sbin/policy-rc.d" "$rootfs/root/customise.sh" "$rootfs/root/$(basename "$deb")"
  rm -f "$rootfs"/etc/ssh/ssh_host_*
  # An empty machine ID makes systemd create a new one at the first boot and write it to the card.
  : >"$rootfs/etc/machine-id"
  rm -f "$rootfs/var/lib/dbus/machine-id" "$rootfs/var/lib/systemd/random-seed"
  if [[ ! -L $rootfs/etc/resolv.conf ]]; then
    ln -sf ../run/systemd/resolve/stub-resolv.conf "$rootfs/etc/resolv.conf"
  fi
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/tmp/* "$rootfs"/var/tmp/*
  rm -f "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old
  find "$rootfs/var/log" -type f \( -name '*.log' -o -name lastlog -o -name wtmp -o -name btmp \) \
    -exec truncate -s 0 {} +
}

# Prints the size in MiB that the tree takes, counted in 4 KiB blocks as on ext4.
tree_size_mib() {
  du --summarize --block-size=1M --one-file-system "$1" | cut -f 1
}

assemble_image() {
  local rootfs=$work_dir/rootfs started=$SECONDS
  local boot_image=$work_dir/boot.vfat root_image=$work_dir/root.ext4 disk=$work_dir/disk.img

  local mounts
  mounts=$(findmnt --list --noheadings --output TARGET | grep -F "$rootfs" || true)
  [[ -z $mounts ]] || die "still mounted in the tree, unmount before packing: $mounts"
  [[ -f $rootfs/boot/firmware/config.txt && -f $rootfs/boot/firmware/cmdline.txt ]] ||
    die "$rootfs/boot/firmware has no config.txt or cmdline.txt: the raspi-firmware hook did not run"

  # The boot partition: FAT32, filled from /boot/firmware, which becomes its empty mount point.
  mkfs.vfat -F 32 -n "$boot_label" -C "$boot_image" $((boot_size_mib * 1024)) >/dev/null
  MTOOLS_SKIP_CHECK=1 mcopy -s -i "$boot_image" "$rootfs"/boot/firmware/* ::/
  boot_used_mib=$(tree_size_mib "$rootfs/boot/firmware")
  find "$rootfs/boot/firmware" -mindepth 1 -delete

  # The root file system: ext4 made from the tree, with some free space.
  root_used_mib=$(tree_size_mib "$rootfs")
  local root_size_mib=$(((root_used_mib * 11 / 10 + root_free_mib + 3) / 4 * 4))
  mke2fs -q -t ext4 -L "$root_label" -d "$rootfs" "$root_image" "${root_size_mib}M" >/dev/null

  # The disk: an MBR partition table (the Raspberry Pi 3 boot ROM reads no GPT), the FAT32 boot
  # partition (type 0c, FAT32 with LBA) and the Linux root partition.
  local boot_start=$((boot_start_mib * 2048)) boot_sectors=$((boot_size_mib * 2048))
  local root_start=$((boot_start + boot_sectors)) root_sectors=$((root_size_mib * 2048))
  rm -f "$disk"
  truncate -s $(((root_start + root_sectors) * 512)) "$disk"
  sfdisk --quiet "$disk" <<EOF
label: dos
unit: sectors
start=$boot_start, size=$boot_sectors, type=c, bootable
start=$root_start, size=$root_sectors, type=83
EOF
  dd if="$boot_image" of="$disk" bs=1M seek="$boot_start_mib" conv=notrunc,sparse status=none
  dd if="$root_image" of="$disk" bs=1M seek=$((boot_start_mib + boot_size_mib)) conv=notrunc,sparse status=none
  disk_size_mib=$(((root_start + root_sectors) / 2048))
  log "assembled $disk ($disk_size_mib MiB: boot partition $boot_size_mib MiB with $boot_used_mib MiB used, root file system $root_size_mib MiB with $root_used_mib MiB used) in $((SECONDS - started)) s"
}

compress_image() {
  local disk=$work_dir/disk.img started=$SECONDS
  local name=outpost-$version-arm64.img.xz
  rm -f "$output_dir/$name" "$output_dir/$name.sha256"
  nice -n 10 xz -T0 -c "$disk" >"$output_dir/$name.tmp"
  mv "$output_dir/$name.tmp" "$output_dir/$name"
  (cd "$output_dir" && sha256sum "$name" >"$name.sha256")
  log "compressed with xz in $((SECONDS - started)) s"
  log "image: $output_dir/$name ($(($(stat -c %s "$output_dir/$name") / 1048576)) MiB compressed, $disk_size_mib MiB uncompressed; installed: root file system $root_used_mib MiB, boot partition $boot_used_mib MiB)"
}

main() {
  parse_arguments "$@"
  check_host
  find_package
  local started=$SECONDS base
  mkdir -p "$output_dir"
  base=$(ensure_base)
  prepare_tree "$base"
  run_customise
  finish_tree
  assemble_image
  compress_image
  if ((keep_work == 0)); then
    rm -rf --one-file-system "$work_dir"
  fi
  log "build took $((SECONDS - started)) s in all"
}

main "$@"
