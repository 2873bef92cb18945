"""Pub/sub throughput and latency: macula beside nats-server + nats-py and Zenoh.

Every system runs as separate processes on this machine in the same run: a broker or
node, one subscriber, one publisher. Throughput is messages delivered per second at
the subscriber (first to last), median of the repeats; latency is one-way publisher to
subscriber (CLOCK_MONOTONIC is shared by processes) at ~2 kHz, median of the repeats.
"""

from __future__ import annotations

import argparse

from benchlib import Servers, median, pubsub_run


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="bench/run pubsub")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int)
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    n64, n1k, nlat = (30_000, 10_000, 500) if args.quick else (200_000, 50_000, 2000)
    servers = Servers()
    try:
        a = servers.macula_node("bench-a")
        b = servers.macula_node("bench-b", a)
        nats, zenoh = servers.nats(), servers.zenoh()
        cases = [
            ("one_node_64", "macula", a, a, n64, 64),
            ("one_node_1k", "macula", a, a, n1k, 1024),
            ("two_node_64", "macula", b, a, n64, 64),
            ("nats_64", "nats", nats, nats, n64, 64),
            ("nats_1k", "nats", nats, nats, n1k, 1024),
            ("zenoh_64", "zenoh", zenoh, zenoh, n64, 64),
            ("zenoh_1k", "zenoh", zenoh, zenoh, n1k, 1024),
        ]
        print(f"pubsub: publisher -> broker/node -> subscriber, separate processes, "
              f"{repeats} repeats, medians")
        figures: dict = {}
        for name, system, sub_addr, pub_addr, n, size in cases:
            runs = [pubsub_run(system, sub_addr, pub_addr, n, size) for _ in range(repeats)]
            rates = [r["msgs_s"] for r in runs]
            lost = max(n - r["received"] for r in runs)
            figures[f"{name}_msgs_s"] = round(median(rates))
            listing = ", ".join(f"{x:,.0f}" for x in rates)
            print(f"  {name:<12} {size:>5} B: {median(rates):>10,.0f} msgs/s  "
                  f"(runs {listing}; most lost in a run {lost} of {n})")
        for name, system, addr in (("macula", "macula", a), ("nats", "nats", nats),
                                   ("zenoh", "zenoh", zenoh)):
            runs = [pubsub_run(system, addr, addr, nlat, 64, latency=True) for _ in range(repeats)]
            p50, p99 = median([r["p50_us"] for r in runs]), median([r["p99_us"] for r in runs])
            figures[f"{name}_lat_p50_us"], figures[f"{name}_lat_p99_us"] = round(p50), round(p99)
            print(f"  latency {name:<7} 64 B one-way: p50 {p50:7.0f} us  p99 {p99:7.0f} us")
    finally:
        servers.stop()
    for ours, theirs in (("one_node_64", "nats_64"), ("one_node_1k", "nats_1k"),
                         ("one_node_64", "zenoh_64")):
        ratio = figures[f"{ours}_msgs_s"] / max(1, figures[f"{theirs}_msgs_s"])
        figures[f"ratio_{ours}_vs_{theirs}"] = round(ratio, 3)
        print(f"  ratio {ours} / {theirs}: {ratio:.2f}")
    print("  targets: one node 64 B >= 100k, 1 KiB >= 20k, two nodes 64 B >= 60k msgs/s")
    return figures
