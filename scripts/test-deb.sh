#!/usr/bin/env bash
# Builds and tests the Outpost Debian package for one architecture (default amd64):
#
#  1. builds it with scripts/build-deb.sh (skipped with --deb FILE),
#  2. runs lintian, which must report no error and no warning (overrides are in the package),
#  3. rates systemd/outpost.service with this machine's `systemd-analyze security --offline=yes`,
#  4. installs it with apt-get into a Debian 13 (trixie) chroot that has Debian's nodejs 20, and
#     runs scripts/deb/chroot-test.sh there. That script checks the installed files and user,
#     runs systemd-analyze verify and security with trixie's systemd, and runs a
#     publish/subscribe round trip with Debian's mosquitto clients against the installed
#     program. Then it upgrades (keeping a changed conffile), removes and purges the package.
#  5. installs it in a second copy of the chroot and boots systemd there, as PID 1 of new PID,
#     mount and network namespaces (scripts/deb/boot-systemd.sh). It then checks the service as
#     systemd runs it: READY=1 and STATUS=, the user, groups and sandbox of the process, a round
#     trip, reload, a restart by the watchdog after SIGSTOP, and a clean stop. --no-systemd
#     skips this step, and it runs only for this machine's own architecture.
#
# usage: scripts/test-deb.sh [--arch amd64|arm64|armhf] [--deb FILE] [--no-systemd]
#
# Why a chroot: the package depends on nodejs (>= 20), which Debian 12 cannot satisfy (it ships
# nodejs 18), so it cannot be installed on a Debian 12 machine without forcing dependencies.
# The chroot has the Node.js and systemd of the distribution the package is made for.
#
# The base chroot is made once with debootstrap (about 30 s for amd64 on a 2-core machine, about
# 2.5 min for arm64 under qemu; estimates from single runs) and kept in
# $OUTPOST_CHROOT_DIR (default /var/tmp/outpost-chroots). Each run works on a copy of it, which
# is deleted at the end, so the base stays clean. A foreign architecture needs qemu-user
# through binfmt_misc: scripts/test-deb-arm64.sh sets that up. Must run as root (debootstrap,
# chroot, mount). Exit status 0 when every check passed. The last line is
# "deb checks: N passed, N failed".
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly repo_root
readonly chroot_dir=${OUTPOST_CHROOT_DIR:-/var/tmp/outpost-chroots}
readonly suite=trixie
# Packages of the base chroot: the package's dependencies that minbase lacks, and the clients
# for the round trip.
readonly base_packages=nodejs,systemd,procps,mosquitto-clients
readonly max_exposure=2.0

arch=amd64
deb=""
with_systemd=1
passed=0
failed=0
run_root=""
systemd_pid=""
unshare_pid=""
# Seconds to wait for the service to become active; qemu needs more than native code.
boot_timeout=60

readonly check_name=test-deb
# shellcheck source=scripts/lib/checks.sh
source "$repo_root/scripts/lib/checks.sh"

parse_arguments() {
  while (($# > 0)); do
    case "$1" in
      --arch)
        (($# >= 2)) || die "--arch needs a value: amd64, arm64 or armhf"
        arch=$2
        shift 2
        ;;
      --deb)
        (($# >= 2)) || die "--deb needs a file"
        deb=$(realpath "$2")
        shift 2
        ;;
      --no-systemd)
        with_systemd=0
        shift
        ;;
      *) die "unknown argument '$1'; usage: scripts/test-deb.sh [--arch amd64|arm64|armhf] [--deb FILE] [--no-systemd]" ;;
    esac
  done
  if [[ $arch != "$(dpkg --print-architecture)" ]]; then boot_timeout=240; fi
  case "$arch" in
    amd64 | arm64 | armhf) ;;
    *) die "unknown architecture '$arch'; use amd64, arm64 or armhf" ;;
  esac
}

check_host() {
  (($(id -u) == 0)) || die "must run as root: debootstrap, chroot and mount need it"
  local missing=() tool
  for tool in lintian debootstrap systemd-analyze unshare nsenter ip; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  ((${#missing[@]} == 0)) || die "missing programs: ${missing[*]}; on Debian: apt-get install lintian debootstrap systemd util-linux iproute2"

  if [[ $arch != "$(dpkg --print-architecture)" ]]; then
    local binfmt=qemu-aarch64
    [[ $arch == armhf ]] && binfmt=qemu-arm
    grep -qx enabled "/proc/sys/fs/binfmt_misc/$binfmt" 2>/dev/null ||
      die "$arch programs cannot run here: binfmt_misc entry $binfmt is not enabled. Run scripts/test-deb-arm64.sh, which enables it, or: apt-get install qemu-user-static binfmt-support; mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; update-binfmts --enable $binfmt"
  fi
}

build_package() {
  if [[ -n $deb ]]; then
    [[ -f $deb ]] || die "package file not found: $deb"
    return
  fi
  local started=$SECONDS
  "$repo_root/scripts/build-deb.sh" --arch "$arch"
  deb="$repo_root/build/deb/outpost_$(node -p 'require(process.argv[1]).version' "$repo_root/package.json")_$arch.deb"
  log "build took $((SECONDS - started)) s"
}

run_lintian() {
  local output status=0
  # lintian warns on stderr that it runs as root, which this script must.
  output=$(lintian --fail-on error,warning "$deb" 2>&1 | grep -v 'running with root privileges') || true
  lintian --fail-on error,warning "$deb" >/dev/null 2>&1 || status=$?
  [[ -z $output ]] || printf '%s\n' "$output" | sed 's/^/    /'
  record "$status" "lintian reports no error and no warning"
}

check_unit_on_host() {
  local unit=$repo_root/systemd/outpost.service security exposure status=1
  security=$(systemd-analyze security --offline=yes "$unit" 2>&1) || true
  exposure=$(printf '%s\n' "$security" | sed -n 's/.*Overall exposure level for outpost.service: \([0-9.]*\).*/\1/p')
  echo "    systemd-analyze security: exposure ${exposure:-unknown} ($(systemd-analyze --version | head -n 1))"
  if [[ -n $exposure ]] && awk -v value="$exposure" -v limit="$max_exposure" 'BEGIN { exit !(value <= limit) }'; then
    status=0
  else
    printf '%s\n' "$security" | sed 's/^/    /'
  fi
  record "$status" "systemd-analyze security rates the unit at most $max_exposure on this machine"
}

# Makes the base chroot for the architecture unless it exists, and prints its path.
ensure_base_chroot() {
  local base=$chroot_dir/$suite-$arch
  local marker=$base/.outpost-base
  if [[ -f $marker && $(cat "$marker") == "$base_packages" ]]; then
    printf '%s\n' "$base"
    return
  fi
  local started=$SECONDS
  log "creating the $suite $arch chroot in $base with debootstrap (packages $base_packages)"
  rm -rf --one-file-system "$base" "$base.tmp"
  mkdir -p "$chroot_dir"
  if ! debootstrap --arch="$arch" --variant=minbase --include="$base_packages" "$suite" "$base.tmp" \
    >"$chroot_dir/debootstrap-$arch.log" 2>&1; then
    tail -n 30 "$chroot_dir/debootstrap-$arch.log" >&2
    die "debootstrap failed; its log is $chroot_dir/debootstrap-$arch.log"
  fi
  printf '%s' "$base_packages" >"$base.tmp/.outpost-base"
  mv "$base.tmp" "$base"
  log "debootstrap took $((SECONDS - started)) s"
  printf '%s\n' "$base"
}

remove_run_root() {
  if [[ -n $run_root && -d $run_root ]]; then
    # The mounts were made in a private mount namespace and are gone with it; --one-file-system
    # keeps rm on this file system even so.
    rm -rf --one-file-system "$run_root"
  fi
  if [[ -n $run_root ]]; then
    rm -f "$run_root.log" "$run_root.console.log" "$run_root.install.log"
  fi
}

run_in_chroot() {
  local base started=$SECONDS status=0
  base=$(ensure_base_chroot)
  run_root=$(mktemp -d "$chroot_dir/run-$arch.XXXXXX")
  trap remove_run_root EXIT
  cp -a "$base/." "$run_root/"
  cp "$deb" "$run_root/root/"
  install -m 755 "$repo_root/scripts/deb/chroot-test.sh" "$run_root/root/chroot-test.sh"

  local version
  version=$(dpkg-deb --field "$deb" Version)
  # A new mount and PID namespace: /proc is mounted for the chroot only, and every process
  # started in it (the broker included) ends when the test script ends.
  # The environment is reset so that nothing of this machine's (NODE_OPTIONS, extra CA files)
  # reaches the programs in the chroot.
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    unshare --mount --pid --fork --propagation private -- \
    bash -c 'mount -t proc proc "$1/proc" && exec chroot "$1" /root/chroot-test.sh "/root/$2" "$3"' \
    chroot-test "$run_root" "$(basename "$deb")" "$version" | tee "$run_root.log" || status=$?

  local line
  line=$(grep -E '^checks: [0-9]+ passed, [0-9]+ failed$' "$run_root.log" | tail -n 1 || true)
  rm -f "$run_root.log"
  if [[ $line =~ ^checks:\ ([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
    passed=$((passed + BASH_REMATCH[1]))
    failed=$((failed + BASH_REMATCH[2]))
  fi
  if [[ $status -ne 0 && ( -z $line || ${BASH_REMATCH[2]:-0} -eq 0 ) ]]; then
    record 1 "chroot test script ran to its end (exit status $status)"
  fi
  remove_run_root
  trap - EXIT
  log "chroot test took $((SECONDS - started)) s"
}

# Runs a command inside the namespaces and the chroot of the booted systemd.
in_system() {
  nsenter --target "$systemd_pid" --mount --pid --net --uts --ipc --root --wd \
    env -i PATH=/usr/sbin:/usr/bin LANG=C.UTF-8 "$@"
}

# usage: check_in_system NAME COMMAND... (records a check that passes when the command exits 0)
check_in_system() {
  local name=$1 output status=0
  shift
  output=$(in_system "$@" 2>&1) || status=$?
  if ((status != 0)); then printf '%s\n' "$output" | sed 's/^/    /'; fi
  record "$status" "$name"
}

# Prints the value of one property of outpost.service, e.g. MainPID.
service_property() {
  in_system systemctl show --property="$1" --value outpost.service
}

# Waits until outpost.service is active with a main PID other than $1, and prints that PID.
wait_until_active() {
  local previous_pid=$1 attempt state pid
  for ((attempt = 0; attempt < boot_timeout * 2; attempt++)); do
    state=$(in_system systemctl is-active outpost.service 2>/dev/null || true)
    pid=$(service_property MainPID 2>/dev/null || echo 0)
    if [[ $state == active && $pid != 0 && $pid != "$previous_pid" ]]; then
      printf '%s\n' "$pid"
      return 0
    fi
    sleep 0.5
  done
  return 1
}

stop_systemd() {
  if [[ -z $systemd_pid && -n $unshare_pid ]]; then
    systemd_pid=$(ps -o pid= --ppid "$unshare_pid" | tr -d ' ' || true)
  fi
  if [[ -n $systemd_pid ]]; then
    # SIGKILL to PID 1 of a PID namespace ends every process in it.
    kill -KILL "$systemd_pid" 2>/dev/null || true
    systemd_pid=""
  fi
  if [[ -n $unshare_pid ]]; then
    wait "$unshare_pid" 2>/dev/null || true
    unshare_pid=""
  fi
  remove_run_root
}

# Installs the package in a fresh copy of the chroot, boots systemd there as PID 1 of new
# namespaces, and checks the service as systemd runs it: READY=1 and STATUS=, the user, groups
# and sandbox of the main process, a round trip on the packaged listener (127.0.0.1:1883 of
# the namespace's own loopback), reload, a restart by the watchdog when the process is stopped
# with SIGSTOP, and a clean stop.
run_under_systemd() {
  local base started=$SECONDS
  base=$(ensure_base_chroot)
  run_root=$(mktemp -d "$chroot_dir/run-$arch.XXXXXX")
  trap stop_systemd EXIT
  cp -a "$base/." "$run_root/"
  cp "$deb" "$run_root/root/"
  if ! env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    unshare --mount --pid --fork --propagation private -- \
    bash -c 'mount -t proc proc "$1/proc" && DEBIAN_FRONTEND=noninteractive exec chroot "$1" apt-get install -y -q "/root/$2"' \
    install "$run_root" "$(basename "$deb")" >"$run_root.install.log" 2>&1; then
    tail -n 20 "$run_root.install.log" | sed 's/^/    /'
    rm -f "$run_root.install.log"
    record 1 "package installs in the chroot for the systemd test"
    stop_systemd
    trap - EXIT
    return
  fi
  rm -f "$run_root.install.log"
  # Watchdog pings every 2 s, so that a stopped process is caught within seconds.
  install -d "$run_root/etc/systemd/system/outpost.service.d"
  printf '[Service]\nWatchdogSec=4s\n' >"$run_root/etc/systemd/system/outpost.service.d/test-watchdog.conf"

  local console_log=$run_root.console.log
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    unshare --pid --fork --mount --net --uts --ipc --propagation private -- \
    "$repo_root/scripts/deb/boot-systemd.sh" "$run_root" "$console_log" >/dev/null 2>&1 &
  unshare_pid=$!
  local attempt=0
  while [[ -z $systemd_pid ]] && ((attempt++ < 100)); do
    sleep 0.1
    systemd_pid=$(ps -o pid= --ppid "$unshare_pid" | tr -d ' ' || true)
  done
  if [[ -z $systemd_pid ]]; then
    record 1 "systemd boots in the chroot"
    stop_systemd
    trap - EXIT
    return
  fi

  local main_pid
  if main_pid=$(wait_until_active 0); then
    record 0 "outpost.service becomes active under systemd (READY=1)"
  else
    in_system systemctl status --no-pager outpost.service 2>&1 | sed 's/^/    /'
    tail -n 20 "$console_log" | sed 's/^/    /'
    record 1 "outpost.service becomes active under systemd (READY=1)"
    stop_systemd
    trap - EXIT
    return
  fi
  echo "    active $((SECONDS - started)) s after the copy of the chroot started; status: $(service_property StatusText)"

  check_in_system "service status text says it is running" sh -c 'systemctl show -p StatusText --value outpost.service | grep -q "^running"'
  check_in_system "main process runs as user outpost" sh -c "test \"\$(stat -c %U /proc/$main_pid)\" = outpost"
  check_in_system "main process has group dialout" sh -c "grep '^Groups:' /proc/$main_pid/status | tr -s ' \t' '\n' | grep -qx \"\$(getent group dialout | cut -d: -f3)\""
  check_in_system "main process has no capabilities" grep -Eq '^CapBnd:[[:space:]]+0+$' "/proc/$main_pid/status"
  check_in_system "main process has no_new_privs and a seccomp filter" \
    sh -c "grep -Eq '^NoNewPrivs:[[:space:]]+1$' /proc/$main_pid/status && grep -Eq '^Seccomp:[[:space:]]+2$' /proc/$main_pid/status"
  check_in_system "round trip on the packaged listener" sh -c '
    mosquitto_pub -h 127.0.0.1 -p 1883 -q 1 -r -t outpost/test/service -m from-systemd &&
    test "$(mosquitto_sub -h 127.0.0.1 -p 1883 -t outpost/test/service -C 1 -W 20)" = from-systemd'

  check_in_system "reload keeps the service running" sh -c "systemctl reload outpost.service && sleep 1 && systemctl is-active --quiet outpost.service && test \"\$(systemctl show -p MainPID --value outpost.service)\" = $main_pid"

  # A stopped process sends no watchdog pings; systemd must kill it and start a new one.
  in_system kill -STOP "$main_pid"
  local new_pid
  if new_pid=$(wait_until_active "$main_pid"); then
    record 0 "watchdog restarts a stopped process"
    echo "    the watchdog replaced PID $main_pid by PID $new_pid"
  else
    in_system systemctl status --no-pager outpost.service 2>&1 | sed 's/^/    /'
    record 1 "watchdog restarts a stopped process"
  fi
  check_in_system "journal records the watchdog timeout" sh -c 'journalctl -u outpost.service --no-pager | grep -q "Watchdog timeout"'
  check_in_system "systemd counts one restart" test "$(service_property NRestarts)" = 1

  check_in_system "stop ends the service cleanly" sh -c '
    systemctl stop outpost.service && ! systemctl is-active --quiet outpost.service &&
    test "$(systemctl show -p Result --value outpost.service)" = success'
  check_in_system "journal records the stop" sh -c 'journalctl -u outpost.service --no-pager | grep -q "stopping"'

  stop_systemd
  trap - EXIT
  log "systemd test took $((SECONDS - started)) s"
}

main() {
  parse_arguments "$@"
  check_host
  local started=$SECONDS
  build_package
  log "package: $deb ($(du -h "$deb" | cut -f1))"
  run_lintian
  check_unit_on_host
  run_in_chroot
  if ((with_systemd)) && [[ $arch == "$(dpkg --print-architecture)" ]]; then
    run_under_systemd
  elif ((with_systemd)); then
    # Seen with systemd 257 under qemu-aarch64 7.2 (Debian 12): the unit never starts, with result
    # "resources", because qemu user emulation cannot set up the unit's sandbox.
    echo "    skipped the systemd step: it needs the machine's own architecture, not qemu user emulation"
  fi
  log "all steps took $((SECONDS - started)) s"
  echo "deb checks: $passed passed, $failed failed"
  ((failed == 0))
}

main "$@"
