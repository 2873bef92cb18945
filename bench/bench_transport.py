"""Frames per second over one connection: our codec + transport vs bare qh3 and aioquic.

Client and server run in separate processes; every implementation sends the same bytes
(our 8-byte header + msgpack PUBLISH body) in batches of 64 frames per loop tick, and
its server splits and msgpack-decodes every frame (ours also validates every field and
dispatches). The figure is frames received per second at the server, median of the
repeats; the ratio compares ours with bare qh3 measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchlib import median, read_json_line, spawn, stop


def one_run(impl: str, size: int, count: int, cert: str, key: str) -> float:
    server = spawn("transport_roles", "server", impl, str(count), cert, key)
    client = None
    try:
        port = read_json_line(server, 30)["port"]
        client = spawn("transport_roles", "client", impl, str(port), str(size), str(count))
        return read_json_line(server, 120)["msgs_s"]
    finally:
        if client is not None:
            stop(client)
        stop(server)


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="bench/run transport")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int)
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    counts = {64: 100_000 if args.quick else 300_000, 1024: 30_000 if args.quick else 100_000}
    from macula.identity.certs import generate_self_signed

    tmp = tempfile.mkdtemp(prefix="macula-bench-")
    cert_pem, key_pem = generate_self_signed("bench")
    cert, key = Path(tmp, "c.pem"), Path(tmp, "k.pem")
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    print(f"transport: one connection, one-way frames, {repeats} repeats, medians")
    results: dict[tuple[str, int], float] = {}
    for size, count in counts.items():
        for impl in ("macula", "qh3", "aioquic"):
            runs = [one_run(impl, size, count, str(cert), str(key)) for _ in range(repeats)]
            results[impl, size] = median(runs)
            print(f"  {impl:<8} {size:>5} B x {count:>7}: {results[impl, size]:>10,.0f} msgs/s  "
                  f"(runs: {', '.join(f'{r:,.0f}' for r in runs)})")
    figures = {
        "macula_64_msgs_s": round(results["macula", 64]),
        "qh3_64_msgs_s": round(results["qh3", 64]),
        "aioquic_64_msgs_s": round(results["aioquic", 64]),
        "ratio_64": round(results["macula", 64] / results["qh3", 64], 3),
        "macula_1k_msgs_s": round(results["macula", 1024]),
        "qh3_1k_msgs_s": round(results["qh3", 1024]),
        "aioquic_1k_msgs_s": round(results["aioquic", 1024]),
        "ratio_1k": round(results["macula", 1024] / results["qh3", 1024], 3),
    }
    print(f"  ratio macula/qh3: 64 B {figures['ratio_64']:.2f}, 1 KiB {figures['ratio_1k']:.2f} "
          f"(target >= 0.70)")
    return figures
