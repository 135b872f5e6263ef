#!/usr/bin/env bash
# Boots the Outpost SD-card image under qemu-system-aarch64 (machine "virt") and checks that
# Outpost runs and that the settings files of the boot partition were applied.
#
#  1. decompresses the image into a temporary copy, so the artifact stays untouched. It writes
#     test files onto the copy's boot partition with mcopy: hostname, authorized_keys with a new
#     SSH key, wifi.conf, a Mosquitto password file, and an outpost.yaml whose listener on every
#     address needs that password. Then it enlarges the copy to 4 GiB;
#  2. boots it with the kernel and initramfs from its boot partition (the files config.txt names)
#     and the root= of its cmdline.txt, with qemu's user-mode network restricted (restrict=on:
#     the guest reaches nothing) and host forwards bound to 127.0.0.1 only, for MQTT and SSH;
#  3. the image has no test code, so a report unit is given to the guest's systemd as a
#     credential on the kernel command line. It waits for `systemctl is-system-running --wait`
#     and writes the state of the system and its units to a virtio-serial port, which qemu
#     saves to a file;
#  4. checks the first boot. The system reaches "running" and outpost.service is active. A QoS 1
#     round trip with mosquitto_pub and mosquitto_sub works through the forwarded port with the
#     password, and a client without one is rejected. SSH works with the key, and password
#     logins are off. It also checks the host name, the grown root file system, the read-only
#     boot partition, an apt-get install that writes to it, the Wi-Fi unit on a simulated radio
#     (mac80211_hwsim), and a clean power-off;
#  5. boots a second time after changing hostname and writing an invalid outpost.yaml. The new
#     host name is applied. The invalid file is rejected and reported (the system is "degraded"
#     with outpost-boot-config.service failed), and Outpost runs on with the configuration from
#     before. The retained message of the first boot is still there, and unchanged files are
#     not applied again.
#
# usage: image/test-boot.sh [--image FILE] [--timeout SECONDS] [--keep]
#   --image FILE       the .img.xz to test (default: build/image/outpost-VERSION-arm64.img.xz)
#   --timeout SECONDS  limit on the waits for the guest, both boots together (default 1200).
#                      Every other step has its own limit of at most 300 s.
#   --keep             keep the work folder (disk copy, console log, report) in build/image
#
# Needs: qemu-system-aarch64 (Debian package qemu-system-arm), mtools, fdisk, xz-utils,
# mosquitto-clients and mosquitto (for mosquitto_passwd), openssh-client and node. No root.
# Without KVM qemu emulates every instruction: on a 2-core x86-64 machine a boot to "running" took
# 48 to 70 s and the whole test 327 to 343 s (docs/image.md has the measured times). The qemu process is ended by its PID when the test
# ends, also on failure or interrupt. The last line is "image checks: N passed, N failed", and
# the exit status is 0 when every check passed.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly repo_root
# The name of the virtio-serial port, as /dev/virtio-ports/NAME in the guest.
readonly report_port=org.outpost.test-report
readonly disk_size=4G
readonly mqtt_user=image-test
readonly test_hostname=outpost-test

image=""
timeout_seconds=1200
# Value of SECONDS at which the test gives up waiting, set from --timeout at the start.
deadline=0
keep=0
work=""
qemu_pid=""
# The report file of the boot being checked.
report=""
mqtt_port=""
ssh_port=""
mqtt_password=""
# The retained message of the first boot, read again in the second.
topic=outpost/image-test/retained
passed=0
failed=0

readonly check_name=test-image
# shellcheck source=scripts/lib/checks.sh
source "$repo_root/scripts/lib/checks.sh"

parse_arguments() {
  while (($# > 0)); do
    case "$1" in
      --image)
        (($# >= 2)) || die "--image needs a file"
        image=$(realpath "$2")
        shift 2
        ;;
      --timeout)
        (($# >= 2)) && [[ $2 =~ ^[0-9]+$ ]] || die "--timeout needs a number of seconds"
        timeout_seconds=$2
        shift 2
        ;;
      --keep)
        keep=1
        shift
        ;;
      *) die "unknown argument '$1'; usage: image/test-boot.sh [--image FILE] [--timeout SECONDS] [--keep]" ;;
    esac
  done
  if [[ -z $image ]]; then
    local version
    version=$(node -p 'require(process.argv[1]).version' "$repo_root/package.json")
    image=$repo_root/build/image/outpost-$version-arm64.img.xz
  fi
  [[ -f $image ]] || die "image not found: $image; build it with image/build.sh"
}

check_host() {
  local missing=() tool
  for tool in qemu-system-aarch64 mcopy mtype sfdisk xz mosquitto_pub mosquitto_sub mosquitto_passwd ssh ssh-keygen node base64 timeout; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  ((${#missing[@]} == 0)) ||
    die "missing programs: ${missing[*]}; on Debian: apt-get install qemu-system-arm mtools fdisk xz-utils mosquitto mosquitto-clients openssh-client nodejs"
}

cleanup() {
  if [[ -n $qemu_pid ]]; then
    kill -TERM "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
    qemu_pid=""
  fi
  if [[ -n $work && -d $work ]]; then
    if ((keep)); then
      log "kept the work folder $work"
    else
      rm -rf "$work"
    fi
  fi
}

# Prints a TCP port on 127.0.0.1 that is free now.
free_port() {
  node -e 'const s = require("node:net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}

# Prints "START SIZE" in sectors of partition N of the disk image.
partition_extent() {
  sfdisk --dump "$1" | sed -n "s|^$1$2 : start= *\([0-9]*\), size= *\([0-9]*\),.*|\1 \2|p"
}

# Writes the test's settings files onto the boot partition of the disk copy.
write_boot_files() {
  local disk=$1 boot_offset=$2 files=$work/boot-files
  mkdir -p "$files"
  printf '%s\r\n' "$test_hostname" >"$files/hostname"
  ssh-keygen -q -t ed25519 -N '' -C image-test -f "$work/ssh-key"
  cp "$work/ssh-key.pub" "$files/authorized_keys"
  # No access point exists under qemu; the check is that the unit starts with these settings.
  printf 'ssid=Outpost "test" network\npsk=correct horse battery\ncountry=DE\n' >"$files/wifi.conf"
  mosquitto_passwd -c -b "$files/passwd" "$mqtt_user" "$mqtt_password" 2>/dev/null
  cat >"$files/outpost.yaml" <<'EOF'
listeners:
  - name: network
    host: 0.0.0.0
    port: 1883
    password_file: /etc/outpost/passwd
data_dir: /var/lib/outpost
EOF
  MTOOLS_SKIP_CHECK=1 mcopy -o -i "$disk@@$boot_offset" "$files"/* ::/
}

# Prints the systemd unit that reports the guest's state over virtio-serial, and the shell script
# it runs, each as base64, separated by a space.
report_credentials() {
  local unit script
  unit="[Unit]
Description=Image test report over virtio-serial
[Service]
Type=exec
ImportCredential=outpost-test.report
ExecStart=/bin/sh \${CREDENTIALS_DIRECTORY}/outpost-test.report
"
  # Type=exec: the unit is started once the script runs, so it does not hold up the boot it
  # waits for.
  script='p=/dev/virtio-ports/'"$report_port"'
while [ ! -e $p ]; do sleep 1; done
exec >$p 2>&1
echo "state $(systemctl is-system-running --wait)"
echo "uptime $(cut -d " " -f 1 /proc/uptime)"
echo "analyze $(systemd-analyze time | head -n 1)"
for u in outpost outpost-boot-config ssh; do echo "unit $u $(systemctl is-active $u.service)"; done
echo "hostname $(cat /proc/sys/kernel/hostname)"
echo "root-size $(df -B1 --output=size / | tail -n 1)"
echo "failed $(systemctl list-units --failed --plain --no-legend | cut -d " " -f 1 | tr "\n" " ")"
echo "running $(systemctl list-units --type=service --state=running --plain --no-legend | cut -d " " -f 1 | tr "\n" " ")"
echo "memory-used-kib $(awk "/^MemTotal/ {t=\$2} /^MemAvailable/ {a=\$2} END {print t-a}" /proc/meminfo)"
journalctl -b -o cat -u outpost-boot-config.service | sed "s/^/boot-config-log /"
echo "summary-end"
modprobe mac80211_hwsim radios=1 && sleep 15
echo "wifi $(systemctl is-active outpost-wifi@wlan0.service)"
echo "end"'
  printf '%s %s\n' "$(printf '%s' "$unit" | base64 -w 0)" "$(printf '%s' "$script" | base64 -w 0)"
}

# Prints the value after KEY in the report, or nothing.
report_value() {
  sed -n "s/^$1 //p" "$report" | head -n 1
}

# Succeeds when a line that outpost-boot-config.service logged in this boot contains TEXT.
boot_config_logged() {
  grep -q "^boot-config-log .*$1" "$report"
}

# Starts qemu in the background and sets qemu_pid; the report goes to the file REPORT.
boot_guest() {
  local disk=$1 kernel=$2 initrd=$3 cmdline=$4
  report=$5
  mqtt_port=$(free_port)
  ssh_port=$(free_port)
  log "booting under qemu (MQTT on 127.0.0.1:$mqtt_port, SSH on 127.0.0.1:$ssh_port)"
  # The guest has one virtio-net device on a restricted user-mode network: it can reach neither
  # this machine nor anything else, and only the two forwards on 127.0.0.1 lead into it.
  nice -n 10 qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 1024 \
    -display none -monitor none -serial "file:$report.console" -no-reboot \
    -kernel "$kernel" -initrd "$initrd" -append "$cmdline" \
    -drive "file=$disk,format=raw,if=none,id=disk0" -device virtio-blk-pci,drive=disk0 \
    -netdev "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:$mqtt_port-:1883,hostfwd=tcp:127.0.0.1:$ssh_port-:22" \
    -device virtio-net-pci,netdev=net0,romfile= \
    -device virtio-serial-pci -chardev "file,id=report,path=$report" \
    -device "virtserialport,chardev=report,name=$report_port" &
  qemu_pid=$!
}

# Waits until the report has a line starting with KEY, qemu has ended, or the time LIMIT (a
# value of SECONDS) or the test's deadline has passed.
wait_for_report() {
  local key=$1 limit=$2
  ((limit <= deadline)) || limit=$deadline
  while ((SECONDS < limit)); do
    if grep -q "^$key" "$report" 2>/dev/null; then return 0; fi
    if ! kill -0 "$qemu_pid" 2>/dev/null; then
      log "qemu ended before the report had '$key'"
      return 1
    fi
    sleep 2
  done
  log "timed out waiting for '$key' in the report"
  return 1
}

run_ssh() {
  timeout 300 ssh -i "$work/ssh-key" -p "$ssh_port" -o BatchMode=yes -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=30 admin@127.0.0.1 "$@"
}

# Prints the report's summary of the boot: state, times, memory and the log of the boot
# settings service.
print_boot_summary() {
  echo "    system state: $(report_value state) at $(report_value uptime) s of guest uptime; $(report_value analyze)"
  local memory_kib
  memory_kib=$(report_value memory-used-kib)
  echo "    memory in use: $((${memory_kib:-0} / 1024)) MiB of 1024 MiB"
  echo "    running services: $(report_value running)"
  sed -n 's/^boot-config-log /    boot-config: /p' "$report"
}

# Succeeds when the round trip through the forwarded port works with the password: a retained
# QoS 1 message, so the order of the two clients does not matter.
mqtt_round_trip() {
  local received
  timeout 60 mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -u "$mqtt_user" -P "$mqtt_password" -q 1 -r -t "$topic" -m from-host ||
    return 1
  received=$(timeout 60 mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -u "$mqtt_user" -P "$mqtt_password" -q 1 -t "$topic" -C 1 -W 30) ||
    return 1
  [[ $received == from-host ]]
}

check_first_boot() {
  local root_sectors_before=$1 state root_size output status
  print_boot_summary
  state=$(report_value state)
  record "$([[ $state == running ]] && echo 0 || echo 1)" "systemd reports the system running (state $state, failed units: $(report_value failed))"
  record "$([[ $(report_value 'unit outpost') == active ]] && echo 0 || echo 1)" "systemctl is-active outpost is active (over virtio-serial)"
  record "$([[ $(report_value 'unit outpost-boot-config') == active ]] && echo 0 || echo 1)" "outpost-boot-config.service succeeded"
  record "$([[ $(report_value hostname) == "$test_hostname" ]] && echo 0 || echo 1)" "host name from the boot partition is set ($(report_value hostname))"
  root_size=$(report_value root-size)
  record "$([[ -n $root_size ]] && ((root_size > root_sectors_before * 512 + 1073741824)) && echo 0 || echo 1)" \
    "root file system grew to the disk ($((root_sectors_before / 2048)) MiB partition, now $((${root_size:-0} / 1048576)) MiB)"

  status=0
  mqtt_round_trip || status=1
  record "$status" "MQTT round trip through 127.0.0.1:$mqtt_port with the password from the boot partition"
  status=0
  timeout 60 mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -q 1 -t outpost/image-test/anonymous -m anonymous 2>/dev/null || status=$?
  record "$([[ $status != 0 ]] && echo 0 || echo 1)" "client without a password is rejected on the network listener"

  output=$(run_ssh 'sudo -n systemctl is-active outpost.service' 2>&1) || true
  record "$([[ $output == active ]] && echo 0 || echo 1)" "SSH with the key from the boot partition, then sudo systemctl is-active outpost ($output)"
  output=$(run_ssh 'sudo -n sshd -T' 2>&1 | grep -E '^(passwordauthentication|kbdinteractiveauthentication|permitrootlogin) ' | sort | tr '\n' ' ') || true
  record "$([[ $output == 'kbdinteractiveauthentication no passwordauthentication no permitrootlogin no ' ]] && echo 0 || echo 1)" "sshd allows neither passwords nor root logins ($output)"
  output=$(timeout 60 ssh -p "$ssh_port" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
    -o PubkeyAuthentication=no -o PreferredAuthentications=password,keyboard-interactive admin@127.0.0.1 true 2>&1) || true
  record "$([[ $output == *'Permission denied (publickey)'* ]] && echo 0 || echo 1)" "SSH server offers public-key authentication only ($output)"
  output=$(run_ssh 'findmnt --noheadings --output OPTIONS /boot/firmware' 2>&1) || true
  record "$([[ $output == ro,* ]] && echo 0 || echo 1)" "boot partition is mounted read-only ($output)"
  output=$(run_ssh 'stat -c "%U:%G %a" /etc/outpost/outpost.yaml /etc/outpost/passwd' 2>&1 | tr '\n' ' ') || true
  record "$([[ $output == 'root:outpost 640 root:outpost 640 ' ]] && echo 0 || echo 1)" "outpost.yaml and passwd installed for the service only ($output)"

  if wait_for_report end $((SECONDS + 120)); then
    record "$([[ $(report_value wifi) == active ]] && echo 0 || echo 1)" "Wi-Fi unit runs on a simulated radio with the settings of wifi.conf ($(report_value wifi))"
  else
    record 1 "Wi-Fi unit runs on a simulated radio with the settings of wifi.conf (no report)"
  fi
}

# Reinstalls raspi-firmware with apt-get in the guest. Its maintainer script copies the firmware,
# kernel and initramfs to /boot/firmware, which works only while the apt hook has made the
# read-only boot partition writable. The package comes from the build's package cache.
check_package_install() {
  local firmware_deb output
  firmware_deb=$(find "$repo_root/build/image/cache/apt-archives" -name 'raspi-firmware_*_all.deb' 2>/dev/null | sort | tail -n 1)
  if [[ -z $firmware_deb ]]; then
    echo "    skipped the package install: no raspi-firmware package in build/image/cache/apt-archives"
    return
  fi
  run_ssh 'cat >/tmp/raspi-firmware.deb' <"$firmware_deb" || true
  # The boot partition is readable by root only, hence sudo for stat.
  output=$(run_ssh 'before=$(sudo -n stat -c %Y /boot/firmware/config.txt)
    sudo -n apt-get install -y -q --reinstall /tmp/raspi-firmware.deb >/tmp/apt.log 2>&1; status=$?
    echo "exit $status, config.txt rewritten $([ "$(sudo -n stat -c %Y /boot/firmware/config.txt)" != "$before" ] && echo yes || echo no), mount $(findmnt -n -o OPTIONS /boot/firmware | cut -d , -f 1)"
    [ $status = 0 ] || tail -n 5 /tmp/apt.log' 2>&1) || true
  record "$([[ $output == 'exit 0, config.txt rewritten yes, mount ro' ]] && echo 0 || echo 1)" "apt-get reinstalls raspi-firmware, which writes to the boot partition ($output)"
}

# Powers the guest off over SSH and waits for qemu to end (-no-reboot makes it exit).
power_off_guest() {
  local started=$SECONDS
  run_ssh 'sudo -n systemctl poweroff' >/dev/null 2>&1 || true
  while kill -0 "$qemu_pid" 2>/dev/null && ((SECONDS - started < 180)); do sleep 1; done
  if kill -0 "$qemu_pid" 2>/dev/null; then
    record 1 "guest powers off within 180 s"
    kill -TERM "$qemu_pid"
  else
    record 0 "guest powers off within 180 s ($((SECONDS - started)) s)"
  fi
  wait "$qemu_pid" 2>/dev/null || true
  qemu_pid=""
}

check_second_boot() {
  local state status
  print_boot_summary
  state=$(report_value state)
  record "$([[ $state == degraded && $(report_value failed) == 'outpost-boot-config.service ' ]] && echo 0 || echo 1)" \
    "invalid outpost.yaml marks outpost-boot-config.service failed (state $state, failed units: $(report_value failed))"
  record "$(boot_config_logged 'outpost.yaml on the boot partition is invalid' && echo 0 || echo 1)" "boot-config logs why outpost.yaml was rejected"
  record "$([[ $(report_value 'unit outpost') == active ]] && echo 0 || echo 1)" "outpost runs on with the configuration from before"
  record "$([[ $(report_value hostname) == "$test_hostname-2" ]] && echo 0 || echo 1)" "changed hostname file is applied at the next boot ($(report_value hostname))"
  local line repeated=""
  for line in 'SSH public key' 'Wi-Fi settings' 'installed /etc/outpost/passwd' 'growing' 'generating new host keys'; do
    if boot_config_logged "$line"; then repeated+="'$line' "; fi
  done
  record "$([[ -z $repeated ]] && echo 0 || echo 1)" \
    "unchanged files, root file system and host keys are left alone (repeated: ${repeated:-none})"
  local received
  status=0
  received=$(timeout 60 mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -u "$mqtt_user" -P "$mqtt_password" -q 1 -t "$topic" -C 1 -W 30 2>&1) || status=$?
  record "$([[ $status == 0 && $received == from-host ]] && echo 0 || echo 1)" "retained message of the first boot is still there ($received)"
}

main() {
  parse_arguments "$@"
  check_host
  local started=$SECONDS
  deadline=$((SECONDS + timeout_seconds))
  mkdir -p "$repo_root/build/image"
  work=$(mktemp -d "$repo_root/build/image/test.XXXXXX")
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  mqtt_password=$(node -p 'require("node:crypto").randomBytes(12).toString("hex")')

  local disk=$work/disk.img
  xz -dc "$image" | cp --sparse=always /dev/stdin "$disk"
  local boot_extent root_extent
  read -r -a boot_extent <<<"$(partition_extent "$disk" 1)"
  read -r -a root_extent <<<"$(partition_extent "$disk" 2)"
  ((${#boot_extent[@]} == 2 && ${#root_extent[@]} == 2)) || die "cannot read the partition table of $image"
  local boot_offset=$((boot_extent[0] * 512))
  log "decompressed in $((SECONDS - started)) s"

  # The kernel and initramfs that the Raspberry Pi firmware would load, as config.txt names them.
  local config kernel_name initrd_name cmdline
  config=$(MTOOLS_SKIP_CHECK=1 mtype -i "$disk@@$boot_offset" ::/config.txt)
  kernel_name=$(printf '%s\n' "$config" | sed -n 's/^kernel=//p')
  initrd_name=$(printf '%s\n' "$config" | sed -n 's/^initramfs \([^ ]*\).*/\1/p')
  [[ -n $kernel_name && -n $initrd_name ]] || die "config.txt on the boot partition names no kernel or initramfs"
  MTOOLS_SKIP_CHECK=1 mcopy -i "$disk@@$boot_offset" "::/$kernel_name" "$work/kernel"
  MTOOLS_SKIP_CHECK=1 mcopy -i "$disk@@$boot_offset" "::/$initrd_name" "$work/initrd"
  # cmdline.txt without its Raspberry Pi consoles: the virt machine's serial port is ttyAMA0.
  cmdline=$(MTOOLS_SKIP_CHECK=1 mtype -i "$disk@@$boot_offset" ::/cmdline.txt | tr -d '\r\n' | sed 's/console=[^ ]*//g')
  local credentials
  read -r -a credentials <<<"$(report_credentials)"
  cmdline="$cmdline console=ttyAMA0 systemd.set_credential_binary=systemd.extra-unit.outpost-test-report.service:${credentials[0]}"
  cmdline+=" systemd.set_credential_binary=outpost-test.report:${credentials[1]} systemd.wants=outpost-test-report.service"

  # arm64 kernels keep at most 2047 characters of the command line (COMMAND_LINE_SIZE) and drop
  # the rest without an error.
  ((${#cmdline} <= 2047)) || die "kernel command line has ${#cmdline} characters, more than the 2047 an arm64 kernel keeps"

  write_boot_files "$disk" "$boot_offset"
  truncate -s "$disk_size" "$disk"

  log "first boot"
  local boot_started=$SECONDS
  boot_guest "$disk" "$work/kernel" "$work/initrd" "$cmdline" "$work/report-1.log"
  if ! wait_for_report state "$deadline"; then
    record 1 "systemd reports the system running"
    echo "    last lines of the console:"
    tail -n 30 "$report.console" | sed 's/^/    /'
  else
    log "the guest reported its state $((SECONDS - boot_started)) s after qemu started"
    wait_for_report summary-end $((SECONDS + 120)) || true
    check_first_boot "${root_extent[1]}"
    check_package_install
    power_off_guest

    # Changed and invalid files for the second boot: a new host name, and a listener port out of
    # range. The other files stay as they were.
    printf '%s-2\n' "$test_hostname" >"$work/boot-files/hostname"
    printf 'listeners:\n  - host: 0.0.0.0\n    port: 70000\n' >"$work/boot-files/outpost.yaml"
    MTOOLS_SKIP_CHECK=1 mcopy -o -i "$disk@@$boot_offset" "$work/boot-files/hostname" "$work/boot-files/outpost.yaml" ::/

    log "second boot"
    boot_started=$SECONDS
    boot_guest "$disk" "$work/kernel" "$work/initrd" "$cmdline" "$work/report-2.log"
    if wait_for_report state "$deadline"; then
      log "the guest reported its state $((SECONDS - boot_started)) s after qemu started"
      wait_for_report summary-end $((SECONDS + 120)) || true
      check_second_boot
    else
      record 1 "second boot reaches a state"
      tail -n 30 "$report.console" | sed 's/^/    /'
    fi
  fi
  cleanup
  trap - EXIT
  log "all steps took $((SECONDS - started)) s"
  echo "image checks: $passed passed, $failed failed"
  ((failed == 0))
}

main "$@"
