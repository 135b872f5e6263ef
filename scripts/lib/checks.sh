# Helpers shared by the build and check scripts (scripts/test-deb.sh, image/build.sh,
# image/test-boot.sh), to be sourced.
# The sourcing script sets `check_name` (the prefix of its log lines), and `passed=0 failed=0`
# before it calls record.

log() {
  printf '%s: %s\n' "$check_name" "$*" >&2
}

die() {
  log "$*"
  exit 1
}

# Counts and prints one check in TAP style: record STATUS DESCRIPTION, where STATUS 0 passes.
record() {
  if (($1 == 0)); then
    passed=$((passed + 1))
    echo "ok - $2"
  else
    failed=$((failed + 1))
    echo "not ok - $2"
  fi
}
