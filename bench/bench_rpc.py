"""RPC through one node: macula beside nats-py request-reply and Zenoh get.

Separate processes: broker/node, an echo provider, a caller. The caller makes
sequential 64 B calls (latency p50/p99), then keeps 32 calls in flight for a few
seconds (calls/s). Medians over the repeats.
"""

from __future__ import annotations

import argparse

from benchlib import Servers, median, read_json_line, spawn, stop


def run(system: str, addr: str, seq: int, inflight: int, seconds: float) -> dict:
    echo = spawn("mq_roles", f"{system}-echo", addr)
    caller = None
    try:
        read_json_line(echo, 30)
        caller = spawn("mq_roles", f"{system}-caller", addr, str(seq), str(inflight), str(seconds))
        return read_json_line(caller, 120)
    finally:
        if caller is not None:
            stop(caller)
        stop(echo)


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="bench/run rpc")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int)
    args = ap.parse_args(argv)
    repeats = args.repeats or 3
    seq, seconds = (1000, 2.0) if args.quick else (5000, 5.0)
    servers = Servers()
    figures: dict = {}
    try:
        addrs = {"macula": servers.macula_node("rpc-node"), "nats": servers.nats(),
                 "zenoh": servers.zenoh()}
        print(f"rpc: caller -> broker/node -> echo provider, 64 B, {repeats} repeats, medians")
        for system, addr in addrs.items():
            runs = [run(system, addr, seq, 32, seconds) for _ in range(repeats)]
            p50 = median([r["seq_p50_us"] for r in runs])
            p99 = median([r["seq_p99_us"] for r in runs])
            rate = median([r["calls_s"] for r in runs])
            figures[system] = (p50, p99, rate)
            print(f"  {system:<7} sequential p50 {p50:7.0f} us  p99 {p99:7.0f} us   "
                  f"32 in flight {rate:>9,.0f} calls/s")
    finally:
        servers.stop()
    m, n, z = figures["macula"], figures["nats"], figures["zenoh"]
    out = {"rpc_seq_p50_us": round(m[0]), "rpc_seq_p99_us": round(m[1]),
           "rpc_32_calls_s": round(m[2]), "nats_rpc_seq_p50_us": round(n[0]),
           "nats_rpc_32_calls_s": round(n[2]), "zenoh_get_seq_p50_us": round(z[0]),
           "zenoh_get_32_calls_s": round(z[2]),
           "ratio_32_vs_nats": round(m[2] / max(1, n[2]), 3),
           "ratio_32_vs_zenoh": round(m[2] / max(1, z[2]), 3)}
    print(f"  ratios at 32 in flight: macula/nats {out['ratio_32_vs_nats']:.2f}, "
          f"macula/zenoh {out['ratio_32_vs_zenoh']:.2f}  "
          f"(targets: p50 <= 500 us, >= 40k calls/s)")
    return out
