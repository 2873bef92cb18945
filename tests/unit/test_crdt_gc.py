"""Removed OR-Set tags do not pile up: state size stays flat over 100k add/remove cycles.

Three replicas add and remove elements and exchange the deltas. Deltas are delivered
late and out of order (held back in a shuffled window), so the replicas' causal
contexts do get gaps; the gaps close when the missing dots arrive, and what is left
is one counter per replica. Sizes are printed (pytest -s) and must not grow.
"""

from __future__ import annotations

import random
import time

from macula.crdt import ORMap, ORSet, packed_len

REPLICAS = (b"\x01" * 32 + b"boot-001", b"\x02" * 32 + b"boot-001", b"\x03" * 32 + b"boot-001")
CYCLES = 100_000
WINDOW = 12          # deltas in flight per link before the oldest is delivered


def run_cycles(make, add, remove, cycles: int, rnd: random.Random) -> list:
    replicas = [make() for _ in REPLICAS]
    in_flight: list[list] = [[] for _ in REPLICAS]   # per receiver
    sizes = []

    def send(sender: int, delta) -> None:
        for receiver in range(len(REPLICAS)):
            if receiver != sender:
                queue = in_flight[receiver]
                queue.append(delta)
                if len(queue) > WINDOW:
                    replicas[receiver].merge(queue.pop(rnd.randrange(len(queue))))

    for cycle in range(cycles):
        adder, remover = rnd.randrange(3), rnd.randrange(3)
        element = f"svc-{rnd.randrange(20)}"
        send(adder, add(replicas[adder], REPLICAS[adder], element))
        send(remover, remove(replicas[remover], element))
        if (cycle + 1) % (cycles // 10) == 0:
            for receiver, queue in enumerate(in_flight):   # quiesce, then measure
                while queue:
                    replicas[receiver].merge(queue.pop())
            assert replicas[0] == replicas[1] == replicas[2]
            # every removed tag folded into one interval per replica
            assert replicas[0].context.interval_count() == len(REPLICAS)
            sizes.append((cycle + 1, [packed_len(r.to_wire()) for r in replicas], len(replicas[0])))
    return sizes


def assert_flat(sizes: list, label: str) -> None:
    for cycle, per_replica, live in sizes:
        print(f"{label}: after {cycle:>6} cycles: {per_replica[0]:>5} bytes, {live:>2} live elements")
    # a live entry costs under 100 bytes (40-byte replica ids), the context one interval
    # per replica: removed tags leave no trace, so size follows what is live, not history
    for _, per_replica, live in sizes:
        assert max(per_replica) <= 100 * live + 3 * 60, sizes


def test_orset_state_stays_flat_over_100k_add_remove_cycles() -> None:
    started = time.perf_counter()
    sizes = run_cycles(ORSet, lambda s, r, e: s.add(r, e), lambda s, e: s.remove(e), CYCLES, random.Random(7))
    print(f"OR-Set: {CYCLES} cycles in {time.perf_counter() - started:.1f} s")
    assert_flat(sizes, "OR-Set")


def test_ormap_state_stays_flat_over_add_remove_cycles() -> None:
    sizes = run_cycles(lambda: ORMap(ORSet),
                       lambda m, r, e: m.update(r, e, lambda s: s.add(r, "node")),
                       lambda m, e: m.remove(e), CYCLES // 10, random.Random(8))
    assert_flat(sizes, "OR-Map")


def test_context_gap_closes_when_the_missing_delta_arrives() -> None:
    a, b = ORSet(), ORSet()
    d1 = a.add(b"a", "x")
    d2 = a.add(b"a", "y")
    d3 = a.remove("x")
    b.merge(d3)
    b.merge(d2)
    assert b.context.interval_count() == 1 and b.value() == {"y"}
    assert b.context.intervals(b"a") == [(1, 2)]   # the remove delta carried dot 1
    b.merge(d1)
    assert b.value() == {"y"} and b == a           # the late add of x stays removed
