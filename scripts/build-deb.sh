#!/usr/bin/env bash
# Builds the Debian packages build/deb/outpost_<version>_<arch>.deb for amd64, arm64 and armhf on
# an x86-64 Debian machine, from the TypeScript sources and package-lock.json of this repository.
#
# usage: scripts/build-deb.sh [--arch amd64|arm64|armhf|all]... [--output DIR]
#
# Each package holds the compiled JavaScript and a production node_modules pruned to what runs
# on that architecture. Packages whose native addon ships no prebuilt binary (better-sqlite3 12)
# are compiled for the target with Debian's cross compilers against the Node.js 20 headers in
# /usr/include/node; packages with prebuilds/ (serialport's @serialport/bindings-cpp) keep only
# the glibc prebuild of the target. Compiled addons are cached in build/native-cache, keyed by
# package version, architecture and Node.js header version.
#
# Needs: Node.js 20 with its headers in /usr/include/node, npm, `npm ci` done in this repository
# (for tsc), and the Debian packages dpkg-dev, help2man, binutils, g++ (amd64),
# crossbuild-essential-arm64 (arm64) and crossbuild-essential-armhf (armhf).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly repo_root
readonly deb_dir="$repo_root/scripts/deb"
readonly build_root="$repo_root/build"
readonly work_root="$build_root/deb-work"
readonly native_cache="$build_root/native-cache"
readonly node_headers=/usr/include/node

output_dir="$build_root/deb"
architectures=()

# Node.js architecture names and GNU triplets of the Debian architectures.
declare -A node_arch=([amd64]=x64 [arm64]=arm64 [armhf]=arm)
declare -A gnu_triplet=([amd64]=x86_64-linux-gnu [arm64]=aarch64-linux-gnu [armhf]=arm-linux-gnueabihf)
declare -A compiler_package=([amd64]=g++ [arm64]=crossbuild-essential-arm64 [armhf]=crossbuild-essential-armhf)

log() {
  printf 'build-deb: %s\n' "$*" >&2
}

die() {
  printf 'build-deb: %s\n' "$*" >&2
  exit 1
}

usage() {
  sed -n '5p' "${BASH_SOURCE[0]}" | sed 's/^# //' >&2
  exit 2
}

parse_arguments() {
  while (($# > 0)); do
    case "$1" in
      --arch)
        (($# >= 2)) || usage
        case "$2" in
          all) architectures+=(amd64 arm64 armhf) ;;
          amd64 | arm64 | armhf) architectures+=("$2") ;;
          *) die "unknown architecture '$2'; use amd64, arm64, armhf or all" ;;
        esac
        shift 2
        ;;
      --output)
        (($# >= 2)) || usage
        output_dir=$(realpath -m "$2")
        shift 2
        ;;
      -h | --help) usage ;;
      *) die "unknown argument '$1'; usage: scripts/build-deb.sh [--arch amd64|arm64|armhf|all]... [--output DIR]" ;;
    esac
  done
  if ((${#architectures[@]} == 0)); then
    architectures=(amd64 arm64 armhf)
  fi
}

# Compiler and linker prefix for an architecture: empty for the native build on x86-64.
tool_prefix() {
  if [[ $1 == amd64 ]]; then
    printf ''
  else
    printf '%s-' "${gnu_triplet[$1]}"
  fi
}

check_tools() {
  local missing=() tool arch
  for tool in dpkg-deb help2man readelf gzip node npm; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  ((${#missing[@]} == 0)) || die "missing programs: ${missing[*]}; on Debian: apt-get install dpkg-dev help2man binutils nodejs npm"

  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  [[ $major == 20 ]] || die "Node.js $(node --version) found; the packages need Node.js 20, whose ABI the native addons are built for"
  [[ -f $node_headers/node_version.h ]] || die "Node.js headers not found in $node_headers; they are needed to compile native addons"
  [[ -x $repo_root/node_modules/.bin/tsc ]] || die "TypeScript compiler not found in node_modules; run npm ci first"

  for arch in "${architectures[@]}"; do
    local prefix
    prefix=$(tool_prefix "$arch")
    command -v "${prefix}g++" >/dev/null || die "${prefix}g++ not found; it builds native addons for $arch: apt-get install ${compiler_package[$arch]}"
  done
}

# Prints the Node.js version of the headers the addons are compiled against, e.g. 20.20.2.
header_version() {
  awk '/#define NODE_(MAJOR|MINOR|PATCH)_VERSION/ { v = v (v == "" ? "" : ".") $3 } END { print v }' "$node_headers/node_version.h"
}

# Builds the architecture-independent part once: compiled JavaScript, a production node_modules
# without install scripts run, the man page, and a check of the packaged configuration.
stage_common() {
  local app=$work_root/app
  rm -rf "$work_root"
  mkdir -p "$app"

  log "compiling TypeScript"
  "$repo_root/node_modules/.bin/tsc" -p "$repo_root/tsconfig.json" --outDir "$app/dist" --sourceMap false

  log "installing production dependencies (npm ci --omit=dev --ignore-scripts)"
  cp "$repo_root/package.json" "$repo_root/package-lock.json" "$app/"
  if [[ -f $repo_root/.npmrc ]]; then cp "$repo_root/.npmrc" "$app/"; fi
  (cd "$app" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
  rm -f "$app/package-lock.json" "$app/.npmrc"
  # The installed package.json keeps what Node.js reads at run time: the version (outpost
  # --version), "type": "module", and the list of dependencies.
  node -e '
    const fs = require("node:fs");
    const path = process.argv[1];
    const manifest = JSON.parse(fs.readFileSync(path, "utf8"));
    const kept = { name: manifest.name, version: manifest.version, description: manifest.description,
      license: manifest.license, type: manifest.type, engines: manifest.engines, dependencies: manifest.dependencies };
    fs.writeFileSync(path, JSON.stringify(kept, null, 2) + "\n");
  ' "$app/package.json"

  log "checking the packaged configuration"
  node "$app/dist/cli/main.js" check-config -c "$deb_dir/outpost.yaml" >/dev/null ||
    die "scripts/deb/outpost.yaml is not a valid configuration (see above)"

  log "writing the man page"
  local wrapper=$work_root/bin/outpost
  mkdir -p "$work_root/bin"
  printf '#!/bin/sh\nexec node %q "$@"\n' "$app/dist/cli/main.js" >"$wrapper"
  chmod 755 "$wrapper"
  help2man --no-info --section=1 --name='MQTT broker and field gateway' --version-string="$version" \
    --output="$work_root/outpost.1" "$wrapper"
}

# Compiles one native package from source for an architecture, or copies it from the cache.
# usage: build_native ARCH APP_DIR NAME PACKAGE_DIR
build_native() {
  local arch=$1 app=$2 name=$3 package_dir=$4
  local package_version key
  package_version=$(node -p 'require(process.argv[1]).version' "$package_dir/package.json")
  key="${name//\//+}-$package_version-$arch-node$(header_version)"

  if [[ -d $native_cache/$key ]]; then
    log "$arch: $name $package_version from the cache ($native_cache/$key)"
  else
    local prefix started
    prefix=$(tool_prefix "$arch")
    started=$SECONDS
    log "$arch: compiling $name $package_version with ${prefix}g++ (about a minute)"
    # npm rebuild runs the package's install script. --build-from-source makes prebuild-install
    # give up at once, so node-gyp compiles; --arch and the CC/CXX variables pick the target.
    # The hardening flags are those of Debian's dpkg-buildflags: _FORTIFY_SOURCE, full RELRO.
    if ! (cd "$app" && env CC="${prefix}gcc" CXX="${prefix}g++" LINK="${prefix}g++" AR="${prefix}ar" \
      CPPFLAGS="-D_FORTIFY_SOURCE=2" LDFLAGS="-Wl,-z,relro -Wl,-z,now" npm_config_nodedir=/usr npm rebuild "$name" --build-from-source --arch="${node_arch[$arch]}" \
      --foreground-scripts --no-audit --no-fund >"$work_root/native-$arch.log" 2>&1); then
      tail -n 40 "$work_root/native-$arch.log" >&2
      die "$arch: compiling $name failed; the full output is in $work_root/native-$arch.log"
    fi
    local addon
    mkdir -p "$native_cache/$key.tmp"
    for addon in "$package_dir"/build/Release/*.node; do
      [[ -f $addon ]] || die "$arch: $name built no .node file in $package_dir/build/Release"
      # better-sqlite3 also builds test_extension.node for its own test suite.
      [[ $(basename "$addon") != test* ]] || continue
      "${prefix}strip" --strip-unneeded --remove-section=.comment --remove-section=.note \
        -o "$native_cache/$key.tmp/$(basename "$addon")" "$addon"
    done
    rm -rf "$native_cache/$key"
    mv "$native_cache/$key.tmp" "$native_cache/$key"
    log "$arch: compiled $name in $((SECONDS - started)) s"
  fi

  rm -rf "$package_dir/build"
  mkdir -p "$package_dir/build/Release"
  cp "$native_cache/$key"/*.node "$package_dir/build/Release/"
}

# Writes the files outside /usr/lib/outpost: program, unit, sysusers, configuration, docs.
install_files() {
  local root=$1
  install -D -m 755 "$deb_dir/outpost.sh" "$root/usr/bin/outpost"
  install -D -m 644 "$repo_root/systemd/outpost.service" "$root/usr/lib/systemd/system/outpost.service"
  install -D -m 644 "$repo_root/systemd/outpost.sysusers" "$root/usr/lib/sysusers.d/outpost.conf"
  install -D -m 644 "$deb_dir/outpost.yaml" "$root/etc/outpost/outpost.yaml"
  install -D -m 644 "$deb_dir/lintian-overrides" "$root/usr/share/lintian/overrides/outpost"

  local doc=$root/usr/share/doc/outpost
  install -D -m 644 "$repo_root/README.md" "$doc/README.md"
  local page
  for page in "$repo_root"/docs/*.md; do
    install -m 644 "$page" "$doc/$(basename "$page")"
  done
  install -D -m 644 "$repo_root/outpost.example.yaml" "$doc/examples/outpost.example.yaml"
  node "$deb_dir/stage.mjs" copyright "$root/usr/lib/outpost" "$(node -p 'require(process.argv[1]).license' "$repo_root/package.json")" \
    >"$doc/copyright"
  write_changelog | gzip -9n >"$doc/changelog.gz"
  # Debian policy: documentation above 4 KiB is compressed (copyright never).
  find "$doc" -maxdepth 1 -type f -size +4k ! -name copyright ! -name '*.gz' -exec gzip -9n {} +

  install -d "$root/usr/share/man/man1"
  gzip -9n <"$work_root/outpost.1" >"$root/usr/share/man/man1/outpost.1.gz"
}

write_changelog() {
  printf 'outpost (%s) unstable; urgency=medium\n\n  * Outpost %s, built from %s.\n\n -- %s  %s\n' \
    "$version" "$version" "$source_revision" "$maintainer" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
}

write_control() {
  local root=$1 arch=$2 library_depends installed_size
  library_depends=$(node "$deb_dir/stage.mjs" depends "$root/usr/lib/outpost")
  installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
  install -d "$root/DEBIAN"
  cat >"$root/DEBIAN/control" <<EOF
Package: outpost
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: nodejs (>= 20), nodejs (<< 21), $library_depends, systemd | systemd-standalone-sysusers | systemd-sysusers, init-system-helpers (>= 1.54~), procps
Section: net
Priority: optional
Description: MQTT broker and field gateway for Raspberry Pi and other boards
 Outpost is an MQTT broker for MQTT 3.1, 3.1.1 and 5.0 clients, written in
 TypeScript and run by Node.js 20 as one process.
 .
 This package runs it as the systemd service outpost.service under the
 system user outpost, with its configuration in /etc/outpost/outpost.yaml
 and its data in /var/lib/outpost.
EOF
  echo /etc/outpost/outpost.yaml >"$root/DEBIAN/conffiles"
  install -m 755 "$deb_dir/postinst" "$deb_dir/prerm" "$deb_dir/postrm" "$root/DEBIAN/"
  (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
}

build_architecture() {
  local arch=$1 started=$SECONDS
  local root=$work_root/$arch
  local app=$root/usr/lib/outpost
  rm -rf "$root"
  mkdir -p "$(dirname "$app")"
  cp -a "$work_root/app" "$app"

  local name package_dir kind
  while IFS=$'\t' read -r name package_dir kind; do
    if [[ $kind == source ]]; then
      build_native "$arch" "$app" "$name" "$package_dir"
    fi
  done < <(node "$deb_dir/stage.mjs" native-packages "$app")

  node "$deb_dir/stage.mjs" prune "$app" "$arch"
  # Prebuilt addons come with symbols and notes that Debian packages leave out.
  find "$app/node_modules" -path '*/prebuilds/*' -name '*.node' -exec \
    "$(tool_prefix "$arch")strip" --strip-unneeded --remove-section=.comment --remove-section=.note {} +
  log "$arch: native addons in the package:"
  node "$deb_dir/stage.mjs" check-elf "$app" "$arch" >&2

  install_files "$root"
  # Files are root-owned (dpkg-deb --root-owner-group), directories 0755, files 0644 unless
  # executable, and every time stamp is the source date, so two builds of one commit are equal.
  find "$root" -type d -exec chmod 755 {} +
  find "$root" -type f ! -perm -u+x -exec chmod 644 {} +
  find "$root/usr/lib/outpost" -type f -name '*.node' -exec chmod 644 {} +
  write_control "$root" "$arch"
  find "$root" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +

  local deb=$output_dir/outpost_${version}_$arch.deb
  mkdir -p "$output_dir"
  dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
  log "$arch: wrote $deb ($(du -h "$deb" | cut -f1), $(du -sh --exclude=DEBIAN "$root" | cut -f1) installed) in $((SECONDS - started)) s"
}

main() {
  parse_arguments "$@"
  check_tools

  version=$(node -p 'require(process.argv[1]).version' "$repo_root/package.json")
  maintainer=${DEB_MAINTAINER:-Outpost maintainers <maintainers@outpost.invalid>}
  source_revision=$(git -C "$repo_root" rev-parse --short HEAD 2>/dev/null || echo 'an unversioned tree')
  if [[ -z ${SOURCE_DATE_EPOCH:-} ]]; then
    SOURCE_DATE_EPOCH=$(git -C "$repo_root" log -1 --format=%ct 2>/dev/null || date +%s)
  fi
  export SOURCE_DATE_EPOCH

  mkdir -p "$build_root"
  # Nothing under build/ belongs in git.
  [[ -f $build_root/.gitignore ]] || printf '*\n' >"$build_root/.gitignore"

  local started=$SECONDS
  stage_common
  local arch
  for arch in "${architectures[@]}"; do
    build_architecture "$arch"
  done
  log "done in $((SECONDS - started)) s"
}

main "$@"
