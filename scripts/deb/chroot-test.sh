#!/bin/bash
# Tests the Outpost package inside a Debian chroot, as root; scripts/test-deb.sh starts it. It
# installs the package and checks what was installed. It runs a publish/subscribe round trip
# against the installed program as user outpost, upgrades with a changed conffile, and then
# removes and purges the package.
#
# usage: chroot-test.sh DEB_FILE VERSION
#
# Each check prints "ok - NAME" or "not ok - NAME"; the script ends with "checks: N passed,
# N failed" and exits 1 when a check failed. No systemd runs here, so the service is not
# started: the broker is started by hand as the user and with the files the unit uses.
set -uo pipefail

readonly deb=$1
readonly version=$2
readonly config=/etc/outpost/outpost.yaml
readonly state_dir=/var/lib/outpost
readonly unit_file=/usr/lib/systemd/system/outpost.service
readonly wants_link=/etc/systemd/system/multi-user.target.wants/outpost.service
readonly max_exposure=2.0

passed=0
failed=0
broker_pid=""
broker_log=/tmp/outpost-broker.log
broker_port=""

pass() {
  passed=$((passed + 1))
  echo "ok - $1"
}

failure() {
  failed=$((failed + 1))
  echo "not ok - $1"
  if (($# > 1)); then printf '%s\n' "$2" | sed 's/^/    /'; fi
}

# usage: check NAME COMMAND... (the check passes when the command exits 0)
check() {
  local name=$1 output
  shift
  if output=$("$@" 2>&1); then
    pass "$name"
  else
    failure "$name" "$output"
  fi
}

run_as_outpost() {
  setpriv --reuid=outpost --regid=outpost --init-groups "$@"
}

# Starts the installed program as the unit does (user outpost, the packaged configuration), with
# -p 0 so that the system picks a free port. Waits for the "ready" log line and reads the port
# from the "listening" line.
start_broker() {
  # systemd creates the state directory for the unit (StateDirectory=outpost); here it is made by hand.
  install -d -o outpost -g outpost -m 0750 "$state_dir"
  : >"$broker_log"
  (cd "$state_dir" && umask 0077 && exec setpriv --reuid=outpost --regid=outpost --init-groups \
    /usr/bin/outpost -c "$config" -p 0) 2>>"$broker_log" &
  broker_pid=$!

  local attempt
  broker_port=""
  # Under qemu user emulation Node.js starts in a few seconds; 60 s is a generous bound.
  # "ready" is the last line of a start: the listeners, the bridges and the field adapter are up.
  for ((attempt = 0; attempt < 600; attempt++)); do
    if grep -q ' ready ' "$broker_log"; then
      broker_port=$(sed -n 's/.*listening .*port=\([0-9][0-9]*\).*/\1/p' "$broker_log" | head -n 1)
      return 0
    fi
    kill -0 "$broker_pid" 2>/dev/null || break
    sleep 0.1
  done
  failure "broker starts and listens" "$(tail -n 20 "$broker_log")"
  return 1
}

stop_broker() {
  local status=0
  kill -TERM "$broker_pid" 2>/dev/null
  wait "$broker_pid" || status=$?
  broker_pid=""
  if ((status == 0)); then
    pass "broker stops with status 0 on SIGTERM"
  else
    failure "broker stops with status 0 on SIGTERM (status $status)" "$(tail -n 20 "$broker_log")"
  fi
}

# Loads each .node file of the package into the system's Node.js (process.dlopen), which fails
# for a wrong architecture, ABI or glibc. Then requires each npm package that contains one, so a
# package that picks its prebuilt binary at run time (node-gyp-build) picks it here.
check_native_addons() {
  local addons packages
  addons=$(dpkg -L outpost | grep '\.node$')
  [[ -n $addons ]] || return 1
  packages=$(printf '%s\n' "$addons" | sed -E 's#^(.*/node_modules/(@[^/]+/)?[^/]+)/.*#\1#' | sort -u)
  # shellcheck disable=SC2086 # one argument per file or folder
  node -e '
    for (const path of process.argv.slice(1)) {
      if (path.endsWith(".node")) process.dlopen({ exports: {} }, path);
      else require(path);
      console.log(`loaded ${path}`);
    }
  ' $addons $packages
}

check_installed_files() {
  check "outpost --version prints $version" test "$(outpost --version)" = "$version"
  check "packaged configuration is valid" outpost check-config -c "$config"
  check "user outpost exists" getent passwd outpost
  check "user outpost has no login shell" sh -c 'getent passwd outpost | cut -d: -f7 | grep -Eq "(nologin|false)$"'
  check "user outpost is in group dialout" sh -c 'id -nG outpost | tr " " "\n" | grep -qx dialout'
  check "unit is enabled" test -L "$wants_link"
  check "man page is installed" test -f /usr/share/man/man1/outpost.1.gz
  check "copyright file is installed" test -f /usr/share/doc/outpost/copyright
  check "configuration is a conffile" sh -c "dpkg-query -W -f='\${Conffiles}' outpost | grep -q '$config'"
  check "no file in the package belongs to another architecture" \
    sh -c "! dpkg -L outpost | grep -E 'prebuilds/(darwin|win32|android)|\\.musl\\.node'"
  check "every native addon loads with the system's Node.js" check_native_addons
  check "systemd-analyze verify passes" systemd-analyze verify --man=no "$unit_file"

  local security exposure
  security=$(systemd-analyze security --offline=yes "$unit_file" 2>&1)
  exposure=$(printf '%s\n' "$security" | sed -n 's/.*Overall exposure level for outpost.service: \([0-9.]*\).*/\1/p')
  echo "    systemd-analyze security: exposure ${exposure:-unknown} ($(systemd-analyze --version | head -n 1))"
  if [[ -n $exposure ]] && awk -v value="$exposure" -v limit="$max_exposure" 'BEGIN { exit !(value <= limit) }'; then
    pass "systemd-analyze security rates the unit at most $max_exposure"
  else
    failure "systemd-analyze security rates the unit at most $max_exposure (got ${exposure:-no rating})" "$security"
  fi
}

# Publishes to a live subscriber, and checks that a retained message outlives a restart (it is
# kept in SQLite in /var/lib/outpost, which loads better-sqlite3's native addon).
check_round_trip() {
  local started=$SECONDS token received sub_pid attempt
  token="round-trip-$$-$RANDOM"
  start_broker || return

  received=/tmp/outpost-received.txt
  : >"$received"
  mosquitto_sub -h 127.0.0.1 -p "$broker_port" -q 1 -t 'outpost/test/live' -C 1 -W 60 >"$received" 2>&1 &
  sub_pid=$!
  # The subscription is in place at some point after mosquitto_sub starts; publish until it
  # receives the message or gives up after its 60 s.
  for ((attempt = 0; attempt < 120; attempt++)); do
    mosquitto_pub -h 127.0.0.1 -p "$broker_port" -q 1 -t 'outpost/test/live' -m "$token" || break
    kill -0 "$sub_pid" 2>/dev/null || break
    sleep 0.5
  done
  wait "$sub_pid"
  if [[ $(cat "$received") == "$token" ]]; then
    pass "subscriber receives a QoS 1 publish"
  else
    failure "subscriber receives a QoS 1 publish" "received: $(cat "$received")"
  fi

  check "retained publish is accepted" mosquitto_pub -h 127.0.0.1 -p "$broker_port" -q 1 -r -t 'outpost/test/retained' -m "$token"
  stop_broker
  check "state directory is owned by outpost" test "$(stat -c %U "$state_dir")" = outpost
  start_broker || return
  check "retained message survives a restart" \
    test "$(mosquitto_sub -h 127.0.0.1 -p "$broker_port" -t 'outpost/test/retained' -C 1 -W 30 2>&1)" = "$token"
  stop_broker
  echo "    round trip with two broker starts took $((SECONDS - started)) s"
}

check_upgrade_keeps_configuration() {
  echo '# changed by the package test' >>"$config"
  # Installing the same version again runs the maintainer scripts as for an upgrade.
  check "reinstall over an installed version succeeds" env DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold "$deb"
  check "changed configuration is kept on upgrade" grep -q '^# changed by the package test' "$config"
  check "unit stays enabled after upgrade" test -L "$wants_link"
}

check_remove_and_purge() {
  check "remove succeeds" env DEBIAN_FRONTEND=noninteractive apt-get remove -y -q outpost
  check "remove keeps the configuration" test -f "$config"
  check "remove keeps the data" test -d "$state_dir"
  check "remove deletes the unit file" test ! -e "$unit_file"
  check "purge succeeds" env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q outpost
  check "purge removes the configuration" test ! -e /etc/outpost
  check "purge removes the data" test ! -e "$state_dir"
  check "purge removes the enablement symlinks" test ! -e "$wants_link" -a ! -L /etc/systemd/system/outpost.service
}

main() {
  local started=$SECONDS
  echo "chroot: $(. /etc/os-release && echo "$PRETTY_NAME"), $(dpkg --print-architecture), Node.js $(node --version)"
  if env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$deb" >/tmp/outpost-install.log 2>&1; then
    pass "apt-get install of the package succeeds"
    check_installed_files
    check_round_trip
    check_upgrade_keeps_configuration
    check_remove_and_purge
  else
    failure "apt-get install of the package succeeds" "$(tail -n 30 /tmp/outpost-install.log)"
  fi
  if [[ -n $broker_pid ]]; then kill -KILL "$broker_pid" 2>/dev/null; fi
  echo "    chroot checks took $((SECONDS - started)) s"
  echo "checks: $passed passed, $failed failed"
  ((failed == 0))
}

main
