"""Pub/sub and RPC cores in the simulator at scale (1,000 nodes by default); `bench/run
pubsub_rpc_sim` runs it. Prints readable lines, then one JSON line with the figures.

    python bench/run pubsub_rpc_sim [--nodes 1000] [--seed 1] [--churn 0.1] [--quick]

The figures are a property of the cores, not of this machine: --quick runs the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "agent"))
from macula.sim import pubsub_rpc_scenario  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="bench/run pubsub_rpc_sim")
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--churn", type=float, default=0.1)
    ap.add_argument("--publishes", type=int, default=2000)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="the same scenario (it takes ~5 s)")
    args = ap.parse_args(argv)
    r = pubsub_rpc_scenario.run(nodes=args.nodes, seed=args.seed, churn=args.churn,
                                publishes=args.publishes, calls=args.calls)
    print(f"nodes {r['sim_nodes']}, {r['sim_crashes']} crashed and restarted during the run, "
          f"{r['sim_wall_s']} s wall")
    print(f"publishes {r['sim_publishes']}: {100 * r['sim_delivery_ratio']:.2f} % of "
          f"{r['sim_delivery_expected']} deliveries to running subscribers made; "
          f"{r['sim_out_of_order']} out of order, {r['sim_group_duplicates']} group duplicates")
    print(f"calls {r['sim_calls']}: {100 * r['sim_call_success']:.2f} % answered ok; "
          f"failures {r['sim_call_failures'] or 'none'}")
    print(f"{r['sim_messages']} messages ({r['sim_to_dead']} to crashed nodes), "
          f"{r['sim_encoded']} through the wire codec")
    return r


if __name__ == "__main__":
    print(json.dumps(main()))
