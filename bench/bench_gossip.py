"""Gossip convergence and cost: real nodes (one process each) and 1,000 simulated ones.

Real: N nodes, each its own process (bench/gossip_roles.py) on 127.0.0.1 with the
detected hardware profile's gossip limits and the default [cluster] settings, joined
through the first. One node at a time (round robin) writes a metadata field; the time
until every other node has it is taken from their own clocks (time.monotonic, shared by
the processes of one machine) at the moment they merged it. Then the next change, after
a random 50-150 ms. Bytes: what each node's cluster layer (SWIM + gossip) sent, per
node per second, idle and while the changes run.

Simulated: the same ClusterCore on macula.sim (bench/gossip_sim.py), 1,000 nodes joining
10 ms apart through a random earlier node, LAN-like latency. Quick: changes start once
every node has its gossip view (membership tables are still filling, which the bytes
include); full: once every node sees all 999 others. Figures are medians over repeats;
p99 over a repeat's changes is its slowest change when there are fewer than 100.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import subprocess
import sys
import time

from benchlib import HERE, child_env, median, percentile


class Child:
    """A gossip_roles process: commands on stdin, JSON lines read without buffering
    surprises (select on a buffered pipe can miss a line already read ahead)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "gossip_roles", *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
                                     env=child_env(), cwd=str(HERE))
        self._buf = b""

    def send(self, line: str) -> None:
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def read(self, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"{self.proc.args} said nothing in {timeout} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"{self.proc.args} exited with {self.proc.wait()}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def counters(children: list[Child]) -> list[dict]:
    for c in children:
        c.send("stats")
    return [c.read() for c in children]


def byte_rate(start: list[dict], end: list[dict]) -> float:
    """Bytes sent per node per second between two readings of every node's counters."""
    return sum((e["sent"] - s["sent"]) / (e["t"] - s["t"]) for s, e in zip(start, end)) / len(start)


def real_run(n: int, changes: int, idle: float, rng: random.Random) -> dict:
    children = [Child("g0", str(n))]
    try:
        seed = f"127.0.0.1:{children[0].read()['port']}"
        children += [Child(f"g{i}", str(n), seed) for i in range(1, n)]
        for c in children[1:]:
            c.read()                   # listening
        for c in children:
            assert c.read(60)["members"] == n - 1
        start = counters(children)
        time.sleep(idle)   # an idle window: time passing is the point, nothing to wait for
        before = counters(children)
        times = []
        for k in range(changes):
            origin = children[k % n]
            origin.send(f"change {k}")
            t0 = origin.read()["t"]
            seen = [c.read(10) for c in children if c is not origin]
            assert all(s["seen"] == k for s in seen), seen
            times.append(max(s["t"] for s in seen) - t0)
            time.sleep(rng.uniform(0.05, 0.15))   # spacing between changes, not a sync
        after = counters(children)
        return {"p50": percentile(times, 50), "p99": percentile(times, 99), "max": max(times),
                "idle_bytes": byte_rate(start, before), "busy_bytes": byte_rate(before, after),
                "changes_per_s": changes / (after[0]["t"] - before[0]["t"])}
    finally:
        for c in children:
            c.stop()


def real(n: int, repeats: int, changes: int, idle: float) -> dict:
    runs = [real_run(n, changes, idle, random.Random(r)) for r in range(repeats)]
    out = {key: median([r[key] for r in runs]) for key in runs[0]}
    print(f"  {n:>4} real nodes: p50 {out['p50'] * 1000:6.1f} ms  p99 {out['p99'] * 1000:6.1f} ms  "
          f"(slowest {max(r['max'] for r in runs) * 1000:.1f} ms)  bytes/node/s idle "
          f"{out['idle_bytes']:,.0f}, with {out['changes_per_s']:.1f} changes/s "
          f"{out['busy_bytes']:,.0f}", flush=True)
    return out


def simulated(n: int, repeats: int, changes: int, whole: bool) -> dict | None:
    try:
        from gossip_sim import GossipSim
    except ImportError as exc:   # macula.sim not on this branch
        print(f"  {n} simulated nodes: skipped ({exc})")
        return None
    runs = []
    for r in range(repeats):
        started = time.monotonic()
        sim = GossipSim(n, seed=r + 1, metadata=False, codec=0.05)
        joined = sim.join_all(0.01, whole=whole)
        rng = random.Random(r)
        b0, t0 = sim.bytes_sent(), sim.sim.now
        times = []
        for k in range(changes):
            times.append(sim.spread(rng.randrange(n), k))
            sim.sim.run(sim.sim.now + rng.uniform(0.05, 0.15))
        seconds = sim.sim.now - t0
        runs.append({"p50": percentile(times, 50), "p99": percentile(times, 99),
                     "bytes": (sim.bytes_sent() - b0) / n / seconds, "joined": joined,
                     "changes_per_s": changes / seconds, "real_s": time.monotonic() - started})
    out = {key: median([r[key] for r in runs]) for key in runs[0]}
    print(f"  {n:>4} simulated:  p50 {out['p50']:.2f} s  p99 {out['p99']:.2f} s  bytes/node/s "
          f"{out['bytes']:,.0f} with {out['changes_per_s']:.1f} changes/s; "
          f"{'full membership' if whole else 'every gossip view filled'} "
          f"{out['joined']:.1f} s after the last join ({out['real_s']:.0f} s real per run)", flush=True)
    return out


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="bench/run gossip")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int)
    args = ap.parse_args(argv)
    q = args.quick
    r = args.repeats
    print("gossip: a metadata change on one node until every node has it "
          f"({'quick' if q else 'full'}; real nodes are one process each)")
    r3 = real(3, r or (2 if q else 5), 15 if q else 40, 2.0 if q else 5.0)
    r10 = real(10, r or (1 if q else 3), 15 if q else 30, 2.0 if q else 5.0)
    s = simulated(1000, r or (1 if q else 2), 6 if q else 30, whole=not q)
    out = {"real3_p50_ms": round(r3["p50"] * 1000, 1), "real3_p99_ms": round(r3["p99"] * 1000, 1),
           "real3_bytes_per_node_s": round(r3["busy_bytes"]),
           "real3_idle_bytes_per_node_s": round(r3["idle_bytes"]),
           "real10_p50_ms": round(r10["p50"] * 1000, 1), "real10_p99_ms": round(r10["p99"] * 1000, 1),
           "real10_bytes_per_node_s": round(r10["busy_bytes"]),
           "real10_idle_bytes_per_node_s": round(r10["idle_bytes"]),
           "sim1000_converge_s": None if s is None else round(s["p99"], 3),
           "sim1000_p50_s": None if s is None else round(s["p50"], 3),
           "sim1000_bytes_per_node_s": None if s is None else round(s["bytes"])}
    print(f"  target: 3 real nodes p99 < 1000 ms -> {'met' if r3['p99'] < 1.0 else 'NOT met'}")
    return out
