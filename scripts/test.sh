#!/usr/bin/env bash
# Quick start 2: set up .venv with the test tools, install the system packages the system
# tests need (when root or sudo is available), and run the whole test suite.
# Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
pkgs="$(grep -v '^#' scripts/apt-test-packages.txt | tr '\n' ' ')"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] || command -v sudo >/dev/null 2>&1; then
    sudo_="$([ "$(id -u)" = 0 ] || echo sudo)"
    echo "test: installing system packages:$missing" >&2
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "test: missing system packages ($missing); system tests will be skipped" >&2
  fi
fi
venv="$(bash scripts/setup-venv.sh test)"
exec "$venv/bin/python" -m pytest "$@"
