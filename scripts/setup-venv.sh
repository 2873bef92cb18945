#!/usr/bin/env bash
# Create (or update) the project's virtualenv in .venv with the given extras.
# Works on a fresh Debian 12: installs python3-venv with apt-get when it is missing.
# Usage: scripts/setup-venv.sh [extras]   e.g. scripts/setup-venv.sh test,bench
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MACULA_VENV:-$root/.venv}"
extras="${1:-}"
py="${PYTHON:-python3}"

die() { echo "setup: $*" >&2; exit 1; }
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root to run: $* (install it, or run as root)"; fi
}

command -v "$py" >/dev/null 2>&1 || die "$py not found; install it: apt-get install -y python3"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python >= 3.11 is needed, $py is $("$py" -V 2>&1)"

if [ ! -x "$venv/bin/python" ]; then
  probe="$(mktemp -d)"
  if ! "$py" -m venv "$probe/v" >/dev/null 2>&1; then
    echo "setup: python3-venv is missing; installing it with apt-get" >&2
    ver="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    as_root apt-get update -qq
    as_root apt-get install -y -qq "python3-venv" "python${ver}-venv" >/dev/null \
      || as_root apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "$probe"
  "$py" -m venv "$venv" || die "could not create a virtualenv in $venv"
fi

# Reinstall only when the project's requirements changed (pyproject.toml or the extras).
stamp="$venv/.macula-install"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1) $extras"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -e "$root${extras:+[$extras]}" || die "pip install failed"
  echo "$want" > "$stamp"
fi
echo "$venv"
