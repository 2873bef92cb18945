#!/bin/sh
# The service checks of tests/system/test_service.py, for a real board: run it as root on a
# Raspberry Pi (or any Debian 12 machine) booted with systemd, after
# `apt install ./macula-agent_<version>_<arch>.deb`.
#
#   sudo sh check-on-board.sh [--watchdog]
#
# CI cannot do this for arm64/armhf: under qemu-user, systemd cannot set up the unit's
# namespaces (status 226/NAMESPACE), so the packages are only installed and run there.
# --watchdog also freezes the agent (SIGSTOP) under a temporary WatchdogSec=4s drop-in in
# /run and checks that systemd restarts it; the drop-in is removed afterwards.
# Prints one line per check; exits 1 if any failed.
set -u

UNIT=macula-agent
FAILED=0
pass() { echo "PASS  $*"; }
fail() { echo "FAIL  $*"; FAILED=1; }
prop() { systemctl show -p "$1" --value "$UNIT"; }
json() {  # json EXPR: evaluate EXPR on `macula status --json` (as `st`)
    macula status --json | python3 -c "import json, sys; st = json.load(sys.stdin); print($1)"
}
wait_until() {  # wait_until SECONDS COMMAND...: poll every 0.5 s
    limit=$(( $1 * 2 )); shift
    while ! "$@" >/dev/null 2>&1; do
        limit=$((limit - 1))
        [ "$limit" -gt 0 ] || return 1
        sleep 0.5
    done
}
active() { [ "$(prop ActiveState)/$(prop SubState)" = active/running ]; }

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
[ -d /run/systemd/system ] || { echo "systemd is not running here" >&2; exit 2; }

echo "macula $(macula --version 2>&1 | cut -d' ' -f2) on $(uname -m); profile $(macula hw --json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["profile"])')"

if wait_until 100 active; then pass "service active (READY=1 received): $(prop StatusText)"
else fail "service not active: $(prop ActiveState)/$(prop SubState), see journalctl -u $UNIT"; fi

if macula status >/dev/null 2>&1; then
    pass "macula status: node $(json 'st["node_id"][:16]'), realm $(json 'st["realm"]'), $(json 'len(st["peers"])') peer(s), RSS $(json 'st["memory"]["rss_mib"]') of $(json 'st["memory"]["budget_mib"]') MiB"
    [ "$(json 'st["memory"]["rss_mib"] < st["memory"]["budget_mib"]')" = True ] \
        && pass "memory within the agent's budget" || fail "memory over the agent's budget"
    seeds=$(json 'len(st["seeds"])')
    if [ "$seeds" -gt 0 ]; then
        connected=$(json 'sum(1 for e in st["seeds"].values() if e == "connected")')
        [ "$connected" -gt 0 ] && pass "$connected of $seeds seed(s) connected" \
            || fail "no seed connected: $(json 'st["seeds"]')"
    fi
else
    fail "macula status: $(macula status 2>&1 | tail -1)"
fi

url=$(json 'st["metrics"] or ""' 2>/dev/null)
if [ -n "$url" ]; then
    if python3 -c "import urllib.request, sys; body = urllib.request.urlopen('$url', timeout=5).read().decode(); sys.exit('macula_node_info{' not in body)"; then
        pass "metrics at $url"
    else fail "metrics at $url do not answer"; fi
fi

MEMORY_MAX=$(prop MemoryMax)
[ "$MEMORY_MAX" != infinity ] && pass "MemoryMax=$MEMORY_MAX from the hardware profile" \
    || fail "no MemoryMax= (generator drop-in missing?)"

if [ "${1:-}" = --watchdog ]; then
    dropin=/run/systemd/system/$UNIT.service.d/99-check-watchdog.conf
    mkdir -p "$(dirname "$dropin")"
    printf '[Service]\nWatchdogSec=4s\nRestartSec=1s\n' > "$dropin"
    systemctl daemon-reload && systemctl restart "$UNIT" && wait_until 100 active
    restarts=$(prop NRestarts); pid=$(prop MainPID)
    systemctl kill --kill-who=main --signal=SIGSTOP "$UNIT"
    restarted() { [ "$(prop NRestarts)" -gt "$restarts" ] && active && [ "$(prop MainPID)" != "$pid" ]; }
    if wait_until 30 restarted && ! kill -0 "$pid" 2>/dev/null; then
        pass "frozen agent restarted by the watchdog (NRestarts $restarts -> $(prop NRestarts))"
    else fail "watchdog did not restart the frozen agent (pid $pid)"; fi
    rm -f "$dropin"
    systemctl daemon-reload && systemctl restart "$UNIT"
fi

if wait_until 100 active && systemctl stop "$UNIT" && [ "$(prop Result)" = success ] \
        && [ "$(prop ExecMainStatus)" = 0 ]; then
    pass "clean stop"
else fail "stop: Result=$(prop Result) ExecMainStatus=$(prop ExecMainStatus)"; fi
systemctl start "$UNIT" && wait_until 100 active && pass "started again" || fail "restart after stop"

exit "$FAILED"
