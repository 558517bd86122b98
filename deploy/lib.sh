# Shared helpers for deploy/ scripts. Sourced, not run.
# shellcheck shell=bash
set -euo pipefail

ENSEMBLE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ENSEMBLE_BUILD_DIR=${ENSEMBLE_BUILD_DIR:-$ENSEMBLE_ROOT/build}
# Private engine prefixes and launchers live here; ignored by git.
ENSEMBLE_ENGINES_DIR=${ENSEMBLE_ENGINES_DIR:-$ENSEMBLE_ROOT/.engines}

log() { printf '[ensemble] %s\n' "$*" >&2; }
die() { printf '[ensemble] error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "'$*' needs root and sudo is not installed; run this script as root"; fi
}
