"""`macula status`: what the running node says about itself, via the control socket."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from macula.config import Config
from macula.control.client import request
from macula.control.server import SOCKET_NAME
from macula.node import Node

SERVICE_RUNTIME_DIR = Path("/run/macula")


def control_dir(cfg: Config) -> Path:
    """Where the node's control socket is. An operator in group macula is not root, so the
    default for their own runs ($XDG_RUNTIME_DIR/macula) is not where the service listens:
    fall back to the service's directory when only it has a socket."""
    own = Node(cfg, control=False).runtime_dir
    if cfg.node.runtime_dir or (own / SOCKET_NAME).exists():
        return own
    try:
        service = (SERVICE_RUNTIME_DIR / SOCKET_NAME).exists()
    except PermissionError:   # not in group macula: the request says so
        service = True
    return SERVICE_RUNTIME_DIR if service else own


def print_status(cfg: Config, as_json: bool, limits: bool = False) -> int:
    st = request(control_dir(cfg), "status")
    print(json.dumps(st, indent=2) if as_json else render_status(st, limits=limits))
    return 0


def duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def render_status(st: dict[str, Any], *, limits: bool = False) -> str:
    """The text of `macula status`; the limits in force only with ``limits``."""
    mem = st["memory"]
    lines = [
        f"node     {st['name']} ({st['node_id'][:16]}) realm {st['realm']!r} "
        f"({st.get('realm_mode', 'open')}), v{st['version']}",
        f"listen   {st['listen']}  TLS {st['tls_mode']}  up {duration(st['uptime_s'])}  "
        f"profile {st['hw_profile']}",
        f"memory   {mem['rss_mib']:.1f} MiB resident of the agent's {mem['budget_mib']} MiB "
        f"budget ({mem['budget_used'] * 100:.0f} %)",
        f"metrics  {st['metrics'] or 'off'}",
    ]
    for seed, state in st["seeds"].items():
        lines.append(f"seed     {seed}  {state}")
    lines.extend(_cluster(st.get("cluster")))
    roles = ", ".join(f"{n} {role}" for role, n in sorted(st["sessions"].items()))
    lines.append(f"peers    {len(st['peers'])}" + (f" ({roles})" if roles else ""))
    for p in sorted(st["peers"], key=lambda p: (p["role"], p["name"])):
        rtt = "-" if p["rtt_ms"] is None else f"{p['rtt_ms']:.2f} ms"
        lines.append(f"  {p['name']:<20} {p['node_id'][:12]}  {p['role']:<6} {p['direction']:<3} "
                     f"{p['address']:<22} rtt {rtt}")
    for name in ("pubsub", "rpc"):
        if st.get(name):
            counters = " ".join(f"{k}={len(v) if isinstance(v, (list, dict)) else v}"
                                for k, v in st[name].items())
            lines.append(f"{name:<8} {counters}")
    if limits:
        text = " ".join(f"{k}={v}" for k, v in st["limits"].items())
        lines.append("limits   " + textwrap.fill(text, 88, subsequent_indent=" " * 9))
    return "\n".join(lines)


def _cluster(cl: dict[str, Any] | None) -> list[str]:
    if not cl or not cl.get("name"):
        return ["cluster  none (a cluster of one: set [cluster] name to join one)"]
    roster = cl.get("roster", [])
    alive = sum(1 for m in roster if m["state"] == "alive")
    lines = [f"cluster  {cl['name']!r}: {alive} of {len(roster)} member(s) alive "
             f"(at most {cl['max_members']})"]
    for i, m in enumerate(roster):
        where = m["address"] or "-"
        lines.append(f"  {m['name']:<20} {m['node_id'][:12]}  {m['state']:<7} {where}"
                     f"{'  (this node)' if i == 0 else ''}")
    return lines
