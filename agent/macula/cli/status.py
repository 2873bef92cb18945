"""`macula status`: what the running node says about itself, via the control socket."""

from __future__ import annotations

import json

from macula.config import Config
from macula.control.client import request
from macula.node import Node


def print_status(cfg: Config, as_json: bool) -> int:
    st = request(Node(cfg, control=False).runtime_dir, "status")
    if as_json:
        print(json.dumps(st, indent=2))
        return 0
    print(f"node    {st['name']} ({st['node_id'][:16]}) realm {st['realm']!r}, v{st['version']}")
    print(f"listen  {st['listen']}  TLS {st['tls_mode']}  up {st['uptime_s']:.0f} s  "
          f"profile {st['hw_profile']}")
    for seed, err in st["seeds"].items():
        print(f"seed    {seed}  {'connected' if not err else 'unreachable: ' + err}")
    print(f"peers   {len(st['peers'])}")
    for p in st["peers"]:
        rtt = "-" if p["rtt_ms"] is None else f"{p['rtt_ms']:.2f} ms"
        print(f"  {p['name']:<20} {p['node_id'][:12]}  {p['role']:<6} {p['direction']:<3} "
              f"{p['address']:<22} rtt {rtt}")
    return 0
