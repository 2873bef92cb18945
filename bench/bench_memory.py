"""Memory budget of one node: RSS idle, with 100 peers, and its trend over a churn soak.

The node under test is a real `macula run` in its own process (control socket and
metrics endpoint on, as the service runs it), with its state directory made beforehand so
no key generation (and no `cryptography` import) happens in it. The load lives in other
processes (memory_roles.py): 100 peer nodes in one process, then churn on top of them.

RSS is VmRSS from /proc/PID/status. The soak's trend is the slope of a least-squares
line through the samples after a warm-up, in MiB per 10 minutes, with its standard error:
end minus start would mostly measure the noise of the last sample.
Targets (limits.md): idle <= 35 MiB, 100 peers <= 50 MiB, no growth over the soak.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import child_env, free_port, read_json_line, spawn, stop
from memory_stats import linear_fit, median, smaps_breakdown

MIB = 1 << 20
TARGETS = {"idle": 35.0, "peers100": 50.0}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def precreate_state(state: Path) -> None:
    """Identity and development TLS material, made here so the node only loads them."""
    from macula.identity import load_or_create_dev_material, load_or_create_identity

    identity = load_or_create_identity(state)
    load_or_create_dev_material(state, identity.node_id)


class Hub:
    """`python -m macula run` with its own config, state and runtime directories."""

    def __init__(self, tmp: Path, trace: bool = False) -> None:
        self.state, self.run_dir = tmp / "hub-state", tmp / "hub-run"
        precreate_state(self.state)
        self.metrics_port = free_port()
        config = tmp / "hub.toml"
        config.write_text(
            f'[node]\nname = "hub"\nrealm = "memory"\nstate_dir = "{self.state}"\n'
            f'runtime_dir = "{self.run_dir}"\n\n'
            f'[network]\nlisten_host = "127.0.0.1"\nlisten_port = 0\n\n'
            f'[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"\n')
        self.log = open(tmp / "hub.log", "w")
        self.snapshots = tmp / "snapshot"
        launcher = ["memory_traced_node", str(self.snapshots)] if trace else ["macula"]
        self.proc = subprocess.Popen([sys.executable, "-m", *launcher, "run", "--config",
                                      str(config)], stdout=self.log, stderr=subprocess.STDOUT,
                                     env=child_env(), stdin=subprocess.DEVNULL,
                                     cwd=Path(__file__).parent)
        self.dumped = 0
        self.address = f"127.0.0.1:{self.status(timeout=30)['listen'].rsplit(':', 1)[1]}"

    def status(self, timeout: float = 10.0) -> dict:
        from macula.control.client import ControlError, request

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the node exited with {self.proc.returncode}")
            try:
                return request(self.run_dir, "status", timeout=5)
            except ControlError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def wait_peers(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len([p for p in self.status()["peers"] if p["role"] == "node"]) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the hub did not reach {n} peers in {timeout} s")
            time.sleep(0.2)

    def sample(self, seconds: float, interval: float = 0.5) -> list[float]:
        out = []
        for _ in range(max(1, int(seconds / interval))):
            out.append(rss_mib(self.proc.pid))
            time.sleep(interval)
        return out

    def snapshot(self):
        """A tracemalloc snapshot of the node (started with trace=True)."""
        import tracemalloc

        path = Path(f"{self.snapshots}.{self.dumped}")
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 60
        while not path.exists():   # renamed into place once written
            if time.monotonic() > deadline:
                raise TimeoutError("no tracemalloc snapshot from the node")
            time.sleep(0.2)
        self.dumped += 1
        census = json.loads(Path(f"{path}.census").read_text())
        return tracemalloc.Snapshot.load(str(path)), census

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def report(label: str, samples: list[float], pid: int, target: float | None) -> float:
    value = median(samples)
    verdict = "" if target is None else f"  (target <= {target:g} MiB: " \
        f"{'met' if value <= target else 'MISSED'})"
    print(f"  {label:<22} {value:6.1f} MiB RSS (min {min(samples):.1f}, max {max(samples):.1f})"
          f"{verdict}")
    print(f"  {'':<22} {smaps_breakdown(pid)}")
    return value


def print_growth(before, after, top: int = 12) -> None:
    """What was allocated between two tracemalloc snapshots and is still held, and which
    object types grew in number."""
    (before, census_before), (after, census_after) = before, after
    alloc = {k: (census_before.pop(k), census_after.pop(k)) for k in list(census_after)
             if k.startswith("malloc.")}
    print("  malloc (all native and Python allocations): " + ", ".join(
        f"{k[7:]} {a / MIB:.1f} -> {b / MIB:.1f} MiB" for k, (a, b) in alloc.items()))
    grew = sorted(((n - census_before.get(t, 0), t) for t, n in census_after.items()),
                  reverse=True)[:top]
    print("  live objects that grew in number: " + ", ".join(f"{t} {d:+d}" for d, t in grew if d > 0))
    diff = after.compare_to(before, "traceback")
    total = sum(d.size_diff for d in diff) / MIB
    print(f"  tracemalloc: {total:+.2f} MiB held by Python allocations over the traced part; "
          f"largest growth:")
    for d in diff[:top]:
        frames = [f"{Path(f.filename).name}:{f.lineno}" for f in reversed(d.traceback)][:4]
        print(f"    {d.size_diff / 1024:+9.1f} KiB {d.count_diff:+7d} blocks  {' < '.join(frames)}")


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="bench/run memory")
    ap.add_argument("--quick", action="store_true", help="~45 s: 25 s soak")
    ap.add_argument("--soak", type=float, help="soak seconds (default 600, quick 25)")
    ap.add_argument("--peers", type=int, default=100)
    ap.add_argument("--trace", action="store_true",
                    help="run the node under tracemalloc and print what grew over the soak "
                         "(figures are then inflated by the tracing itself)")
    args = ap.parse_args(argv)
    soak = args.soak or (25.0 if args.quick else 600.0)
    settle, window = (2.0, 2.0) if args.quick else (10.0, 10.0)
    warmup = soak / 3 if args.quick else min(120.0, soak / 3)
    nodes, clients = (6, 6) if args.quick else (10, 10)

    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="macula-memory-") as tmp_name:
        tmp = Path(tmp_name)
        hub = Hub(tmp, trace=args.trace)
        try:
            print(f"memory: `macula run` node (pid {hub.proc.pid}), load in other processes; "
                  f"{os.cpu_count()} CPUs")
            time.sleep(settle)   # settle: let start-up garbage be collected before sampling
            idle = report("idle", hub.sample(window), hub.proc.pid, TARGETS["idle"])

            peers = spawn("memory_roles", "peers", hub.address, str(tmp / "peers"),
                          str(args.peers))
            procs.append(peers)
            read_json_line(peers, 60 + args.peers * 0.2)
            hub.wait_peers(args.peers, 30)
            time.sleep(settle)
            loaded = report(f"{args.peers} peers", hub.sample(window), hub.proc.pid,
                            TARGETS["peers100"] if args.peers == 100 else None)

            churn = spawn("memory_roles", "churn", hub.address, str(tmp / "churn"), str(soak),
                          str(nodes), str(clients))
            procs.append(churn)
            started = time.monotonic()
            times, series = [], []
            interval = 1.0
            before = None
            for i in range(int(soak / interval)):   # bounded: one sample a second
                time.sleep(max(0.0, started + i * interval - time.monotonic()))
                times.append(time.monotonic() - started)
                series.append(rss_mib(hub.proc.pid))
                if args.trace and before is None and times[-1] >= warmup:
                    before = hub.snapshot()
            after = hub.snapshot() if args.trace else None
            summary = read_json_line(churn, 120)
            kept = [(t, r) for t, r in zip(times, series) if t >= warmup]
            slope, stderr = linear_fit([t for t, _ in kept], [r for _, r in kept])
            growth, growth_err = slope * 600, stderr * 600
            late = [(t, r) for t, r in zip(times, series) if t >= soak / 2]
            late_growth = linear_fit([t for t, _ in late], [r for _, r in late])[0] * 600
            print(f"  churn soak {soak:.0f} s: {summary['cycles']} cycles, {summary['joins']} "
                  f"node joins and leaves, {summary['clients']} clients with "
                  f"{summary['published']} publishes and {summary['calls']} calls; "
                  f"100 peers held throughout")
            step = max(1, len(series) // 10)
            print(f"  RSS over the soak (MiB, every {step * interval:.0f} s): "
                  + " ".join(f"{r:.1f}" for r in series[::step]) + f"; end {series[-1]:.1f}")
            print(f"  trend after {warmup:.0f} s warm-up: {growth:+.2f} ± {growth_err:.2f} MiB "
                  f"per 10 min (least squares over {len(kept)} samples); second half alone "
                  f"{late_growth:+.2f}")
            if soak < 300:
                print("  (a soak this short ends inside the warm-up: RSS climbs to the churn's "
                      "working set for the first minutes, so this slope is no trend; run the "
                      "full 10 minutes for one)")
            print(f"  {'':<22} {smaps_breakdown(hub.proc.pid)}")
            if before is not None and after is not None:
                print_growth(before, after)
            hub.status()   # still answering after the soak
        finally:
            for p in procs:
                stop(p)
            hub.close()
    return {"idle_rss_mib": round(idle, 1), "peers100_rss_mib": round(loaded, 1),
            "soak_growth_mib": round(growth, 2), "soak_growth_stderr_mib": round(growth_err, 2),
            "soak_growth_second_half_mib": round(late_growth, 2),
            "soak_seconds": soak, "soak_end_rss_mib": round(series[-1], 1),
            "soak_cycles": summary["cycles"]}
