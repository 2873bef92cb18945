"""The DHT in the simulator at scale (10,000 nodes by default); `bench/run dht` calls
run_sim(). Prints readable lines, then one JSON line with the figures.

    python bench/dht_sim.py [--nodes 10000] [--seed 1] [--churn 0.1] [--lookups 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# this checkout's agent, ahead of any installed copy
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "agent"))
from macula.sim import dht_scenario  # noqa: E402


def run_sim(nodes: int = 10_000, seed: int = 1, churn: float = 0.1, lookups: int = 1000,
            values: int = 100, codec: float | None = None) -> dict[str, Any]:
    """One scenario (see macula.sim.dht_scenario); keys sim_nodes, sim_success_rate,
    sim_rounds_p50, sim_rounds_p99, sim_msgs_per_lookup_p50 and more."""
    return dht_scenario.run(nodes=nodes, seed=seed, churn=churn, lookups=lookups,
                            values=values, codec=codec)


def report(r: dict[str, Any]) -> list[str]:
    done = r["sim_lookups"]
    hist = "  ".join(f"{k}:{v}" for k, v in r["sim_rounds_hist"].items())
    return [
        f"nodes {r['sim_nodes']}, {r['sim_churned']} churned (crashed, replaced by new nodes), "
        f"{r['sim_virtual_s']} s simulated in {r['sim_wall_s']} s wall",
        f"lookups {done} ({r['sim_lookups_aborted']} aborted with their origin): "
        f"{100 * r['sim_success_rate']:.2f} % found the closest live node "
        f"({100 * r['sim_exact_rate']:.2f} % ranked it first)",
        f"rounds per lookup p50 {r['sim_rounds_p50']}, p99 {r['sim_rounds_p99']}, "
        f"max {r['sim_rounds_max']}; histogram {hist}",
        f"messages per lookup p50 {r['sim_msgs_per_lookup_p50']}, "
        f"p99 {r['sim_msgs_per_lookup_p99']}, mean {r['sim_msgs_per_lookup_mean']}",
        f"values: {r['sim_values']} stored with ttl {r['sim_ttl_s']} s; "
        f"{100 * r['sim_value_survival']:.1f} % of {r['sim_values_expected']} with a live "
        f"publisher found at the end; {r['sim_expired_returned']} expired ones returned",
        f"{r['sim_messages']} messages, {r['sim_codec_checked']} through the wire codec",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--churn", type=float, default=0.1)
    ap.add_argument("--lookups", type=int, default=1000)
    ap.add_argument("--values", type=int, default=100)
    ap.add_argument("--codec", type=float, default=None,
                    help="fraction of messages through the wire codec (default: all up "
                         "to 2,000 nodes, 1 %% above)")
    args = ap.parse_args(argv)
    r = run_sim(args.nodes, args.seed, args.churn, args.lookups, args.values, args.codec)
    for line in report(r):
        print(line)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
