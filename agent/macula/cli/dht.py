"""`macula discover | advertise | dht`: the running node's DHT, via the control socket."""

from __future__ import annotations

import json
import sys

from macula.config import Config
from macula.control.client import request
from macula.node import Node


def _ask(cfg: Config, cmd: str, **args):
    return request(Node(cfg, control=False).runtime_dir, cmd, **args)


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
