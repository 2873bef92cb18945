"""`macula discover | advertise | dht | mesh`: the running node's view of the mesh, via the
control socket."""

from __future__ import annotations

import json
import sys

from macula.config import Config
from macula.control.client import request


def _ask(cfg: Config, cmd: str, **args):
    from macula.cli.status import control_dir

    return request(control_dir(cfg), cmd, **args)


def discover(cfg: Config, args) -> int:
    providers = _ask(cfg, "discover", service=args.service)
    if args.json:
        print(json.dumps(providers, indent=2))
    elif not providers:
        print(f"no live provider of {args.service!r}", file=sys.stderr)
    for p in [] if args.json else providers:
        meta = " ".join(f"{k}={v}" for k, v in sorted(p["metadata"].items()))
        print(f"{p['node_id'][:16]}  {p['host']}:{p['port']:<6} ttl {p['ttl_left_s']:>6.0f} s  {meta}")
    return 0 if providers else 1


def advertise(cfg: Config, args) -> int:
    metadata = {}
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"macula: --meta takes KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        metadata[key] = value
    done = _ask(cfg, "advertise", service=args.service, ttl=args.ttl, metadata=metadata)
    print(f"advertised {done['service']!r} on {done['stored_on']} node(s)"
          f"{'; refused by ' + str(done['refused_by']) if done['refused_by'] else ''}")
    return 0 if done["stored_on"] else 1


def withdraw(cfg: Config, args) -> int:
    done = _ask(cfg, "withdraw", service=args.service)
    if not done["was_advertised"]:
        print(f"{done['service']!r} was not advertised by this node; its record (if any) was "
              f"deleted on {done['deleted_on']} node(s)", file=sys.stderr)
        return 1
    print(f"withdrew {done['service']!r}: record deleted on {done['deleted_on']} node(s)"
          f"{'; refused by ' + str(done['refused_by']) if done['refused_by'] else ''}")
    return 0


def dht(cfg: Config, args) -> int:
    t = _ask(cfg, "dht")
    if args.json:
        print(json.dumps(t, indent=2))
        return 0
    print(f"node {t['node_id'][:16]}  {'client mode' if t['client_mode'] else 'server'}  "
          f"{t['contacts']} contacts in {len(t['buckets'])} bucket(s), {t['stats']['records']} records held, "
          f"{t['stats']['published']} published")
    for b in t["buckets"]:
        print(f"  bucket {b['index']:>3}: {b['contacts']:>3} contacts, {b['replacements']} waiting")
    if t["closest"]:
        print("closest:")
        for c in t["closest"]:
            print(f"  {c['node_id'][:16]}  {c['address']}")
    return 0


def mesh(cfg: Config, args) -> int:
    m = _ask(cfg, "mesh")
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    print(render_mesh(m))
    return 0


def render_mesh(m: dict) -> str:
    nodes = m["nodes"]
    cluster = f", cluster {m['cluster']!r}" if m["cluster"] else ""
    lines = [f"realm {m['realm']!r}{cluster}: {len(nodes)} node(s) known here",
             f"  {'name':<20} {'node id':<12}  {'role':<10} {'address':<22} {'rtt':>9}  "
             "cluster  seen by"]
    for n in nodes:
        rtt = "-" if n["rtt_ms"] is None else f"{n['rtt_ms']:.2f} ms"
        seen = ", ".join(what for what, on in (("this node", n.get("self")),
                                               ("session", n["connected"]),
                                               ("dht", n["in_dht_table"])) if on)
        lines.append(f"  {(n['name'] or '?'):<20} {n['node_id'][:12]}  {(n['role'] or '?'):<10} "
                     f"{(n['address'] or '-'):<22} {rtt:>9}  {(n['cluster'] or '-'):<8} {seen}")
    return "\n".join(lines)
