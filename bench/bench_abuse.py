"""Abuse: does one node keep serving honest clients while it is attacked?

One real `macula run` node (its own process, generic-profile limits with a few lowered:
see NODE_LIMITS), loopback only, a temporary state directory. Honest clients live in
this process (the SDK, from 127.0.0.1): an echo provider and a caller. For the baseline
and then during each attack (attackers in other processes, from 127.0.B.x so that they
are other hosts to the node) we measure:

  - the honest caller's RPC latency: CALLS sequential 64 B calls, 1 s timeout each (a
    failed call counts as its timeout), p50/p99;
  - new sessions: CONNECTS fresh SDK connects (fresh identities), 2.5 s timeout each,
    the share that succeeded;
  - after the attack: `macula status` over the control socket within 2 s, else the
    node counts as frozen;
  - the node's RSS, sampled every 0.1 s all along (peak per attack and overall).

Attacks (abuse_attacks.py): oversized relayed frames, partial frames from many sessions,
valid frames of unserved types, an Initial flood, a client-table flood, a pin flood
(role node, TOFU), a slow (SIGSTOPped) subscriber of a flooded topic.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import child_env, percentile, read_json_line, stop

REALM = "abuse"
NODE_LIMITS = {              # lowered from the generic profile so each attack is cheap
    "max_frame_bytes": 262144,   # oversized case: 200 KiB frames > 64 KiB send buffer
    "send_buffer_bytes": 65536,
    "max_clients": 64,           # client-table flood goes past it with a few hundred
    "max_peers": 256,
    # pinned_peers stays the profile's (65536 here): the pin flood shows what a growing
    # store costs (it is rewritten on every new pin)
}
OVERSIZED = 200_000


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Sampler(threading.Thread):
    """RSS of one process every 0.1 s; peak overall and per labelled phase."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.phase = "start"
        self.peaks: dict[str, float] = {}
        self.peak = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            r = rss_mib(self.pid)
            self.peak = max(self.peak, r)
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), r)


class NodeProc:
    """`python -m macula run` with its own config, state and runtime directories."""

    def __init__(self, tmp: Path, log_level: str = "error") -> None:
        from bench_memory import precreate_state

        self.state, self.run_dir = tmp / "node-state", tmp / "node-run"
        precreate_state(self.state)
        limits = "".join(f"{k} = {v}\n" for k, v in NODE_LIMITS.items())
        config = tmp / "node.toml"
        config.write_text(
            f'[node]\nname = "abuse-node"\nrealm = "{REALM}"\nstate_dir = "{self.state}"\n'
            f'runtime_dir = "{self.run_dir}"\nlog_level = "{log_level}"\n\n'
            f'[network]\nlisten_host = "127.0.0.1"\nlisten_port = 0\n\n[limits]\n{limits}')
        self.log_path = tmp / "node.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "macula", "run", "--config",
                                      str(config)], stdout=self.log, stderr=subprocess.STDOUT,
                                     env=child_env(), stdin=subprocess.DEVNULL,
                                     cwd=Path(__file__).parent)
        deadline = time.monotonic() + 30
        while True:
            try:
                st = self.status(5.0)
                break
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the node did not start; see {self.log_path}")
                time.sleep(0.1)
        self.port = int(st["listen"].rsplit(":", 1)[1])
        self.first_status = st

    def status(self, timeout: float = 2.0) -> dict:
        from macula.control.client import request

        return request(self.run_dir, "status", timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Honest:
    """The honest side: an echo provider and a caller (SDK, in this process)."""

    def __init__(self, addr: str, calls: int, connects: int) -> None:
        from macula.identity import ephemeral_dev_material, ephemeral_identity

        self.addr = addr
        self.n_calls, self.n_connects = calls, connects
        self.tls = ephemeral_dev_material(ephemeral_identity().node_id)  # made once: 20 ms
        self.provider = self.caller = None
        self.reconnects = 0
        self.seq = 0

    async def _connect(self, name: str, timeout: float = 3.0):
        from macula.client import connect

        return await connect(self.addr, realm=REALM, name=name, tls=self.tls, timeout=timeout)

    async def setup(self) -> None:
        self.seq += 1
        self.provider = await self._connect(f"honest-echo-{self.seq}")
        self.provider.register("honest.echo", lambda args: args)
        await self.provider.flush()
        self.caller = await self._connect(f"honest-caller-{self.seq}")
        await self.caller.call("honest.echo", b"warm", timeout=3.0)

    def alive(self) -> bool:
        from macula.transport import State

        return all(c is not None and c.session.state is State.ESTABLISHED
                   for c in (self.provider, self.caller))

    async def ensure(self) -> bool:
        """Reconnect the honest pair if the node dropped either; True if it had to."""
        if self.alive():
            return False
        await self.close()
        self.reconnects += 1
        for _ in range(5):   # bounded
            try:
                await self.setup()
                return True
            except Exception:
                await self.close()
                await asyncio.sleep(0.5)
        raise RuntimeError("the honest clients cannot attach to the node any more")

    async def close(self) -> None:
        for c in (self.provider, self.caller):
            if c is not None:
                try:
                    await asyncio.wait_for(c.close(), 3.0)
                except Exception:
                    pass
        self.provider = self.caller = None

    async def measure(self, window: float) -> dict:
        """Calls paced over the first half of the window, then fresh connects paced over
        the second half (so the attack runs for the whole window)."""
        from macula.client import CallError

        t0 = time.monotonic()
        lat, failed = [], 0
        errors: dict[str, int] = {}
        call_deadline = t0 + window * 0.5
        payload = b"x" * 64
        pace = window * 0.5 / self.n_calls   # calls spread over the first half
        for i in range(self.n_calls):
            if time.monotonic() > call_deadline:
                break
            await asyncio.sleep(max(0.0, t0 + i * pace - time.monotonic()))
            s = time.perf_counter()
            try:
                await self.caller.call("honest.echo", payload, timeout=1.0)
                lat.append((time.perf_counter() - s) * 1000)
            except (CallError, asyncio.TimeoutError, Exception) as exc:
                failed += 1
                lat.append(1000.0)
                key = getattr(getattr(exc, "code", None), "name", type(exc).__name__)
                errors[key] = errors.get(key, 0) + 1
        deadline = t0 + window
        ok = attempted = 0
        conn_ms = []
        closing = []
        pace = window * 0.5 / self.n_connects   # connects spread over the second half
        for i in range(self.n_connects):
            if attempted and time.monotonic() > deadline:
                break
            await asyncio.sleep(max(0.0, t0 + window * 0.5 + i * pace - time.monotonic()))
            attempted += 1
            s = time.perf_counter()
            try:
                c = await self._connect(f"honest-new-{i}", timeout=2.5)
                ok += 1
                conn_ms.append((time.perf_counter() - s) * 1000)
                closing.append(asyncio.ensure_future(c.close()))
            except Exception as exc:
                key = getattr(getattr(exc, "code", None), "name", type(exc).__name__)
                errors["connect:" + key] = errors.get("connect:" + key, 0) + 1
        if closing:
            await asyncio.wait(closing, timeout=3.0)
        return {"calls": len(lat), "calls_failed": failed,
                "p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(percentile(lat, 99), 2),
                "connects": attempted, "connects_ok": ok,
                "new_sessions_ok": round(ok / max(1, attempted), 3),
                "connect_p50_ms": round(percentile(conn_ms, 50), 1), "errors": errors}


def spawn_attack(kind: str, port: int, seconds: float, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "abuse_attacks", kind, "127.0.0.1",
                             str(port), REALM, str(seconds), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=child_env(), cwd=str(Path(__file__).parent))


def attacks(quick: bool) -> list[tuple[str, str, list]]:
    """(name, description, [(kind, args...), ...]); the first process signals ready."""
    partial_n = 150 if quick else 200   # x 128 KiB: past the 16 MiB partial-frame budget
    return [
        ("oversized", f"{OVERSIZED // 1000} kB publishes and calls relayed (send buffer "
                      f"{NODE_LIMITS['send_buffer_bytes'] // 1024} KiB, max_frame "
                      f"{NODE_LIMITS['max_frame_bytes'] // 1024} KiB)",
         [("oversized", OVERSIZED)]),
        ("partial", f"{partial_n} sessions (role node) each hold a 128 KiB part of a 256 KiB frame",
         [("partial", 11, partial_n, 128 << 10, NODE_LIMITS["max_frame_bytes"], 10)]),
        ("unserved", "gossip/SWIM/bridge/DHT/route frames from clients and non-members",
         [("unserved", 12, 4)]),
        ("initials", "250 QUIC Initials/s from one source, never continued",
         [("initials", 13, 250)]),
        ("clients", f"{3 * NODE_LIMITS['max_clients']} idle throw-away clients "
                    f"(max_clients {NODE_LIMITS['max_clients']})",
         [("clients", 14, 3 * NODE_LIMITS["max_clients"], 10)]),
        ("pins", "throw-away identities as role node (TOFU pins), as many as time allows",
         [("pins", 15, 20_000, 32)]),
        ("slowsub", "SIGSTOPped subscriber of a topic flooded with 1 KiB publishes",
         [("slowsub",), ("floodpub", 1024)]),
    ]


async def run_attack(node: NodeProc, honest: Honest, sampler: Sampler, name: str,
                     desc: str, procs_spec: list, window: float, cap: float) -> dict:
    procs: list[subprocess.Popen] = []
    stopped: list[subprocess.Popen] = []
    summary: dict = {}
    ready: dict = {}
    sampler.phase = name
    t0 = time.monotonic()
    try:
        for spec in procs_spec:
            p = spawn_attack(spec[0], node.port, cap, *spec[1:])
            procs.append(p)
            info = await asyncio.to_thread(read_json_line, p, 25)
            ready = ready or info
            if spec[0] == "slowsub":
                p.send_signal(signal.SIGSTOP)   # it reads nothing, ACKs nothing from now on
                stopped.append(p)
        setup = time.monotonic() - t0
        m = await honest.measure(window)
        for p in stopped:
            p.send_signal(signal.SIGCONT)
        stopped.clear()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        try:
            summary = await asyncio.to_thread(read_json_line, procs[-1], 8)
        except Exception as exc:
            summary = {"error": str(exc)}
    finally:
        for p in stopped:
            p.send_signal(signal.SIGCONT)
        for p in procs:
            await asyncio.to_thread(stop, p)
    frozen, status_ms, st = False, None, None
    s = time.perf_counter()
    try:
        st = await asyncio.to_thread(node.status, 2.0)
        status_ms = round((time.perf_counter() - s) * 1000, 1)
    except Exception:
        frozen = True
    crashed = node.proc.poll() is not None
    reconnected = False
    if not crashed:
        try:
            reconnected = await honest.ensure()
        except RuntimeError:
            frozen = True
    out = {"name": name, **m, "frozen": frozen or crashed, "crashed": crashed,
           "status_ms": status_ms, "honest_reconnected": reconnected,
           "peak_rss_mib": round(sampler.peaks.get(name, 0.0), 1),
           "setup_s": round(setup, 1), "ready": ready, "attacker": summary}
    if st is not None:
        out["node_sessions"] = st.get("sessions")
    pins = node.state / "known_peers.json"
    if pins.exists():
        import json

        try:
            out["pins_in_store"] = len(json.loads(pins.read_text())["peers"])
            out["pin_store_kib"] = pins.stat().st_size // 1024
        except (OSError, ValueError, KeyError):
            pass
    print(f"  {name:<9} {desc}")
    print(f"  {'':<9} honest rpc p50 {m['p50_ms']:.2f} ms p99 {m['p99_ms']:.2f} ms "
          f"({m['calls']} calls, {m['calls_failed']} failed), new sessions "
          f"{m['connects_ok']}/{m['connects']}, status "
          f"{'FROZEN' if frozen else f'{status_ms} ms'}{' CRASHED' if crashed else ''}, "
          f"peak RSS {out['peak_rss_mib']:.1f} MiB"
          f"{', honest clients were dropped (reconnected)' if reconnected else ''}")
    if "pins_in_store" in out:
        print(f"  {'':<9} node: sessions {out.get('node_sessions')}, TOFU store "
              f"{out['pins_in_store']} pins ({out['pin_store_kib']} KiB)")
    if m["errors"]:
        print(f"  {'':<9} honest errors: {m['errors']}")
    print(f"  {'':<9} attacker: {ready if ready != {'ready': 1} else ''} {summary}")
    return out


async def run_all(node: NodeProc, sampler: Sampler, quick: bool, only: list[str] | None,
                  window: float | None = None) -> dict:
    calls, connects = 200, 20
    window = window or (3.0 if quick else 10.0)
    cap = 30.0 + 3 * window   # attackers' own hard stop
    honest = Honest(f"127.0.0.1:{node.port}", calls, connects)
    await honest.setup()
    results = []
    try:
        sampler.phase = "baseline"
        base = await honest.measure(window)
        print(f"  baseline  honest rpc p50 {base['p50_ms']:.2f} ms p99 {base['p99_ms']:.2f} ms "
              f"({base['calls']} calls, {base['calls_failed']} failed), new sessions "
              f"{base['connects_ok']}/{base['connects']} (connect p50 "
              f"{base['connect_p50_ms']:.0f} ms), RSS {sampler.peaks.get('baseline', 0):.1f} MiB")
        for name, desc, spec in attacks(quick):
            if only and name not in only:
                continue
            results.append(await run_attack(node, honest, sampler, name, desc, spec,
                                            window, cap))
            if results[-1]["crashed"]:
                print("  the node crashed: no further attacks")
                break
            sampler.phase = f"after-{name}"
            await asyncio.sleep(0.5)   # let the node settle (closing sessions)
    finally:
        await honest.close()
    return {"baseline": base, "attacks": results, "honest_reconnects": honest.reconnects}


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="bench/run abuse")
    ap.add_argument("--quick", action="store_true", help="~45 s: 3 s per attack")
    ap.add_argument("--only", help="comma-separated attack names")
    ap.add_argument("--window", type=float, help="seconds of honest measurement per attack "
                    "(default 3, full 10)")
    ap.add_argument("--node-log", default="error", help="node log level (log kept in --keep)")
    ap.add_argument("--keep", help="copy the node log here at the end")
    args = ap.parse_args(argv)
    only = args.only.split(",") if args.only else None
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="macula-abuse-") as tmp_name:
        node = NodeProc(Path(tmp_name), args.node_log)
        sampler = Sampler(node.proc.pid)
        sampler.start()
        try:
            st = node.first_status
            budget = st["memory"]["budget_mib"]
            print(f"abuse: `macula run` node (pid {node.proc.pid}, profile {st['hw_profile']}, "
                  f"agent memory budget {budget} MiB), limits lowered: "
                  + ", ".join(f"{k} {v}" for k, v in NODE_LIMITS.items())
                  + f"; {os.cpu_count()} CPUs shared by node, attackers and honest clients")
            res = asyncio.run(run_all(node, sampler, args.quick, only, args.window))
            alive = node.proc.poll() is None
            time.sleep(1.0)
            rss_end = rss_mib(node.proc.pid)
        finally:
            sampler.done.set()
            node.close()
        if args.keep:
            import shutil

            shutil.copy(node.log_path, args.keep)
        node_log = node.log_path.read_text()[-4000:]
    errors = [l for l in node_log.splitlines() if "Traceback" in l or "ERROR" in l
              or "Error" in l]
    if errors:
        print("  node log (errors):")
        for l in errors[-10:]:
            print("   ", l[:300])
    atk = res["attacks"]
    worst = max(atk, key=lambda a: a["p99_ms"]) if atk else None
    worst_new = min(atk, key=lambda a: a["new_sessions_ok"]) if atk else None
    frozen = sum(1 for a in atk if a["frozen"])
    out = {"frozen": frozen,
           "honest_rpc_p99_ms_baseline": res["baseline"]["p99_ms"],
           "honest_rpc_p99_ms_under_attack": worst["p99_ms"] if worst else None,
           "honest_new_sessions_ok": worst_new["new_sessions_ok"] if worst_new else None,
           "peak_rss_mib": round(sampler.peak, 1),
           "budget_mib": budget,
           "worst_rpc_attack": worst["name"] if worst else None,
           "worst_new_sessions_attack": worst_new["name"] if worst_new else None,
           "node_alive_at_end": alive,
           "rss_end_mib": round(rss_end, 1),
           "honest_reconnects": res["honest_reconnects"],
           "seconds": round(time.monotonic() - t_start, 1)}
    for a in atk:
        n = a["name"]
        out[f"{n}_p99_ms"] = a["p99_ms"]
        out[f"{n}_calls_failed"] = a["calls_failed"]
        out[f"{n}_new_sessions_ok"] = a["new_sessions_ok"]
        out[f"{n}_peak_rss_mib"] = a["peak_rss_mib"]
        out[f"{n}_frozen"] = a["frozen"]
        out[f"{n}_honest_dropped"] = a["honest_reconnected"]
    print(f"  summary: frozen {frozen}/{len(atk)}, honest p99 {out['honest_rpc_p99_ms_baseline']} ms "
          f"baseline -> {out['honest_rpc_p99_ms_under_attack']} ms under {out['worst_rpc_attack']}, "
          f"new sessions {out['honest_new_sessions_ok']} under {out['worst_new_sessions_attack']}, "
          f"peak RSS {out['peak_rss_mib']} MiB of a {budget} MiB budget (end {out['rss_end_mib']} MiB)")
    return out
