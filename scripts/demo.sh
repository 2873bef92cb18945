#!/usr/bin/env bash
# Quick start 1: set up .venv and run the local mesh demo (real nodes on loopback QUIC).
# Extra arguments go to `macula demo`, e.g. scripts/demo.sh --nodes 8 --duration 20
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$root/scripts/setup-venv.sh")"
exec "$venv/bin/macula" demo "$@"
