#!/usr/bin/env bash
# A long fuzzing run of the frame decoder, the CONNECT / CONNECTED handshake and the
# control socket's request parser.
#
#   scripts/fuzz.sh [SECONDS] [EXAMPLES]
#
# 1. tests/unit/test_fuzz.py at volume: EXAMPLES (default 20000) per hypothesis property,
#    fresh randomness (HYPOTHESIS_PROFILE=explore; FUZZ_SEED=N to replay a run).
# 2. The coverage-guided atheris targets of scripts/fuzz_targets.py (decoder, connect,
#    control), SECONDS each (default 300). Corpora are kept between runs in
#    $MACULA_FUZZ_DIR (default /tmp/macula-fuzz); a crashing input is saved there as
#    <target>-crash-<sha1>. atheris is installed into the venv if missing; the stage is
#    skipped (with a note) when no wheel installs for this Python.
# FUZZ_TARGETS="decoder control" limits stage 2; SECONDS=0 skips it, EXAMPLES=0 skips 1.
# A failure prints the falsifying input: add it to the end of tests/unit/test_fuzz.py as
# a named example test. Exit status: non-zero if any stage found a failure.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
seconds="${1:-300}"
examples="${2:-20000}"
dir="${MACULA_FUZZ_DIR:-${TMPDIR:-/tmp}/macula-fuzz}"
venv="$(bash scripts/setup-venv.sh test)" || exit 1
py="$venv/bin/python"
status=0

if [ "$examples" -gt 0 ]; then
  seed="${FUZZ_SEED:-$RANDOM$RANDOM}"
  echo "== hypothesis: $examples examples per property, seed $seed"
  HYPOTHESIS_PROFILE=explore MACULA_FUZZ_EXAMPLES="$examples" "$py" -m pytest \
    tests/unit/test_fuzz.py -q -p no:cacheprovider --hypothesis-seed="$seed" \
    --hypothesis-show-statistics || status=1
fi

if [ "$seconds" -gt 0 ]; then
  if ! "$py" -c 'import atheris' 2>/dev/null; then
    "$py" -m pip install --quiet --disable-pip-version-check atheris >/dev/null 2>&1 || true
  fi
  if "$py" -c 'import atheris' 2>/dev/null; then
    for target in ${FUZZ_TARGETS:-decoder connect control}; do
      mkdir -p "$dir/$target"
      echo "== atheris: $target for ${seconds}s (corpus $dir/$target)"
      if "$py" scripts/fuzz_targets.py "$target" -max_total_time="$seconds" -rss_limit_mb=2048 \
          -max_len=16384 -print_final_stats=1 -artifact_prefix="$dir/$target-" \
          "$dir/$target" >"$dir/$target.log" 2>&1; then
        grep -E '^Done|stat::number_of_executed_units' "$dir/$target.log"
      else
        status=1
        echo "!! $target failed (full log: $dir/$target.log):"
        grep -vE '^#[0-9]+|^INFO|^WARNING|Uses:' "$dir/$target.log" | tail -n 40
      fi
    done
  else
    echo "== atheris: no wheel installs for $("$py" -V); coverage-guided stage skipped" >&2
  fi
fi
exit "$status"
