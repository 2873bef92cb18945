"""Entry point of the `macula` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from macula import __version__
from macula.errors import ConfigError, MaculaError


def _count(least: int):
    def count(text: str) -> int:
        n = int(text)
        if n < least:
            raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {n}")
        return n
    count.__name__ = "integer"  # argparse names the type in "invalid integer value"
    return count


def _int_range(least: int, most: int):
    def integer(text: str) -> int:
        n = int(text)
        if not least <= n <= most:
            raise argparse.ArgumentTypeError(f"expected an integer in {least}..{most}, got {n}")
        return n
    return integer


def _seconds(text: str) -> float:
    """A duration: a finite number of seconds > 0 (0 would mean 'at once' to some options
    and 'never' to others: neither is asked for by typing it)."""
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _wire_name(msg: str, field: str, what: str):
    """An argparse type checking a name against the field validator of the message that
    will carry it: the node would refuse it with an ERROR the CLI only logs."""
    def check(text: str) -> str:
        from macula.wire.fields import FieldError
        from macula.wire.messages import REGISTRY, MsgType

        try:
            dict(REGISTRY[MsgType[msg]].validators)[field](text)
        except FieldError as exc:
            raise argparse.ArgumentTypeError(f"{what} {exc} (1-64 letters, digits, '.', "
                                             "'_', '-'; first a letter or digit)") from None
        return text
    return check


_realm = _wire_name("CONNECT", "realm", "realm")
_group = _wire_name("SUBSCRIBE", "group", "queue group")


def _node_address(text: str) -> str:
    """--node is checked before connecting: a bad one is a one-line usage error, exit 2."""
    import socket

    from macula.config import parse_address

    try:
        host, port = parse_address(text, 9443)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {exc}") from None
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: cannot resolve {host!r}: "
                                         f"{exc.strerror}") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="macula", description="Macula edge agent")
    p.add_argument("--version", action="version", version=f"macula {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser, what: str = "") -> argparse.ArgumentParser:
        sp.add_argument("--config", "-c", metavar="FILE",
                        help=f"the node's TOML config{what} (default: $MACULA_CONFIG, else "
                             "/etc/macula/agent.toml if it exists, else the built-in defaults)")
        return sp

    json_help = "print JSON instead of text"
    ask = ": where its control socket is ([node] runtime_dir)"
    with_config(sub.add_parser("run", help="run a node in the foreground"))
    hw = sub.add_parser("hw", help="detected board, hardware profile and every derived limit")
    hw.add_argument("--json", action="store_true", help=json_help)
    hw.add_argument("--systemd-dropin", action="store_true",
                    help="the MemoryMax=/CPUQuota= drop-in for this machine")
    demo = sub.add_parser("demo", help="a local mesh of real nodes on loopback")
    demo.add_argument("--nodes", type=_int_range(1, 200), default=5,
                      help="how many nodes, 1-200 (default 5)")
    demo.add_argument("--duration", type=_seconds, default=10.0,
                      help="how long to run, in seconds (default 10)")
    keys = sub.add_parser("keys", help="this node's identity and pinned peers")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    with_config(keys_sub.add_parser("show", help="node id, keys and pinned peers"),
                ": where its state is ([node] state_dir)")
    forget = with_config(keys_sub.add_parser("forget", help="drop the pin of a reinstalled peer"),
                         ": where its state is ([node] state_dir)")
    forget.add_argument("name", help="the peer's node name, as `macula keys show` lists it")
    forget.add_argument("--realm", help="the realm of the pin to drop (default: every realm)")
    realm = sub.add_parser("realm", help="a realm's authority key and the membership "
                                         "credentials it signs (offline)")
    realm_sub = realm.add_subparsers(dest="realm_command", metavar="ACTION", required=True)
    r_init = realm_sub.add_parser("init", help="make a realm authority key")
    r_init.add_argument("--key", type=Path, required=True,
                        help="where to write the private key (must not exist; keep it offline)")
    r_admit = realm_sub.add_parser("admit", help="sign a membership credential for a node id")
    r_admit.add_argument("node_id", metavar="NODE_ID", help="the node's id, 64 hex digits")
    r_admit.add_argument("--key", type=Path, required=True, help="the realm's authority key")
    r_admit.add_argument("--realm", required=True, help="the realm the credential admits to")
    r_admit.add_argument("--roles", default="node",
                         help="comma-separated roles, e.g. node,bridge (default: node)")
    r_admit.add_argument("--expires", default="365d",
                         help="lifetime: seconds, or a number with m, h, d (0: never; "
                              "default 365d)")
    r_admit.add_argument("--out", type=Path,
                         help="credential file to write (default: NODE_ID[:16].credential)")
    r_revoke = realm_sub.add_parser("revoke", help="sign the list of revoked node ids "
                                    "(the whole list: each new one replaces the last)")
    r_revoke.add_argument("node_ids", metavar="NODE_ID", nargs="*",
                          help="every node id revoked so far, 64 hex digits each")
    r_revoke.add_argument("--key", type=Path, required=True, help="the realm's authority key")
    r_revoke.add_argument("--realm", required=True, help="the realm the list is for")
    r_revoke.add_argument("--serial", type=int, required=True,
                          help="the list's number; higher than the one it replaces")
    r_revoke.add_argument("--out", type=Path, required=True,
                          help="the list file (node.realm_revocations on the nodes)")
    cfg = sub.add_parser("config", help="show or check configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    with_config(cfg_sub.add_parser("show", help="the effective configuration"))
    cfg_sub.add_parser("defaults", help="a commented file with every key at its default")
    check = cfg_sub.add_parser("check", help="validate a config file")
    check.add_argument("file", help="the TOML file to check")
    status = with_config(sub.add_parser("status", help="ask the running node how it is"), ask)
    status.add_argument("--json", action="store_true", help=json_help)
    status.add_argument("--limits", action="store_true",
                        help="also list every limit in force (the JSON always has them)")
    disc = with_config(sub.add_parser("discover", help="live providers of a service (DHT)"), ask)
    disc.add_argument("service", help="the service name (1-64 letters, digits, '.', '_', '-')")
    disc.add_argument("--json", action="store_true", help=json_help)
    adv = with_config(sub.add_parser("advertise", help="advertise this node as a provider"), ask)
    adv.add_argument("service", help="the service name (1-64 letters, digits, '.', '_', '-')")
    adv.add_argument("--ttl", type=_int_range(1, 86400), default=300,
                     help="lifetime of the DHT record, in seconds, 1-86400 (default 300); the "
                          "node republishes it while it runs, so the record outlives the node "
                          "by at most this long")
    adv.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                     help="metadata stored with the record (repeat for several keys)")
    wd = with_config(sub.add_parser("withdraw", help="stop advertising a service from this "
                                                     "node and delete its record"), ask)
    wd.add_argument("service", help="the service name given to `macula advertise`")
    dht = with_config(sub.add_parser("dht", help="the running node's routing table"), ask)
    dht.add_argument("--json", action="store_true", help=json_help)
    mesh = with_config(sub.add_parser("mesh", help="every node the running node knows: its "
                                                   "cluster, its peers, its DHT contacts"), ask)
    mesh.add_argument("--json", action="store_true", help=json_help)

    def client(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        with_config(sp, ": --node and --realm default to its listen address and realm")
        sp.add_argument("--node", type=_node_address, metavar="HOST:PORT",
                        help="node to attach to (default: the config's network.listen_host "
                             "and listen_port, 127.0.0.1 for a wildcard host; without a "
                             "config 127.0.0.1:9443)")
        sp.add_argument("--realm", type=_realm,
                        help="the node's realm (default: the config's node.realm; without a "
                             "config 'default')")
        return sp

    p_pub = client(sub.add_parser("pub", help="publish a message"))
    p_pub.add_argument("topic", help="a concrete topic, tokens separated by '.'")
    p_pub.add_argument("message", help="the payload; '-' reads stdin")
    p_pub.add_argument("--count", type=_count(1), default=1,
                       help="publish it this many times, >= 1 (default 1)")
    p_sub = client(sub.add_parser("sub", help="print messages matching a pattern"))
    p_sub.add_argument("pattern", help="topic pattern: '*' matches one token, '>' the rest")
    p_sub.add_argument("--group", type=_group, help="queue group: one member gets each message")
    p_sub.add_argument("--count", type=_count(0), default=0,
                       help="stop after this many messages (default 0: no limit)")
    p_sub.add_argument("--timeout", type=_seconds,
                       help="stop after this many seconds (default: run until Ctrl-C)")
    p_call = client(sub.add_parser("call", help="call a procedure"))
    p_call.add_argument("procedure", help="the procedure name (1-60 letters, digits, '.', '_', '-')")
    p_call.add_argument("args", nargs="?", default="", help="the argument bytes (default empty)")
    p_call.add_argument("--timeout", type=_seconds, default=5.0,
                        help="give up after this many seconds (default 5)")
    p_echo = client(sub.add_parser("serve-echo", help="serve a procedure that echoes its input"))
    p_echo.add_argument("--procedure", default="echo",
                        help="the procedure name to serve (default 'echo')")
    return p


def node_target(cfg) -> str:
    """host:port a light client on this machine reaches the configured node at."""
    host, port = cfg.network.listen_host, cfg.network.listen_port
    if port == 0:
        raise ConfigError(f"network.listen_port = 0 in {cfg.source}: the node picks a free "
                          "port when it starts; pass --node host:port")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _client_target(args: argparse.Namespace) -> None:
    """--node and --realm not given come from the config (--config, $MACULA_CONFIG, the
    system file), like a saved `nats context`; with both given no config is read."""
    if args.node is not None and args.realm is not None:
        return
    cfg = _load(args)
    if args.node is None:
        args.node = node_target(cfg)
    if args.realm is None:
        args.realm = cfg.node.realm


def _load(args: argparse.Namespace):
    from macula.config import load_config

    return load_config(getattr(args, "config", None))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"macula: error {int(exc.code)} {exc.code.name}: {exc.message}", file=sys.stderr)
        return 78  # EX_CONFIG: the unit does not restart a node whose config is invalid
    except MaculaError as exc:
        print(f"macula: error {int(exc.code)} {exc.code.name}: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from macula.cli.logs import setup_logging

    if args.command == "run":
        from macula.runtime.memory import limit_arenas

        limit_arenas()  # before the node starts threads (runtime/memory.py says why)
        from macula.cli.run import run_node
        from macula.service import setup_logging as service_logging

        cfg = _load(args)
        fields = service_logging(cfg.node.log_level)  # journald under systemd, else stderr
        return asyncio.run(run_node(cfg, fields))
    if args.command == "hw":
        from macula.hw import hw_report, systemd_dropin

        print(systemd_dropin() if args.systemd_dropin else hw_report(as_json=args.json))
        return 0
    if args.command == "demo":
        from macula.cli.demo import run_demo

        setup_logging("warning")
        return asyncio.run(run_demo(args.nodes, args.duration))
    if args.command == "realm":
        from macula.cli.realm import realm_admit, realm_init, realm_revoke

        if args.realm_command == "init":
            return realm_init(args.key)
        if args.realm_command == "revoke":
            return realm_revoke(args.key, args.realm, args.node_ids, args.serial, args.out)
        roles = [r for r in args.roles.split(",") if r]
        return realm_admit(args.key, args.realm, args.node_id, roles, args.expires, args.out)
    if args.command == "keys":
        from macula.cli.keys import keys_forget, keys_show

        cfg = _load(args)
        if args.keys_command == "show":
            return keys_show(cfg)
        return keys_forget(cfg, args.name, args.realm)
    if args.command == "config":
        return _config(args)
    if args.command in ("pub", "sub", "call", "serve-echo"):
        from macula.cli import messaging

        _client_target(args)
        setup_logging("warning")
        return asyncio.run(getattr(messaging, args.command.replace("-", "_"))(args))
    if args.command == "status":
        from macula.cli.status import print_status

        return print_status(_load(args), args.json, args.limits)
    if args.command in ("discover", "advertise", "withdraw", "dht", "mesh"):
        from macula.cli import dht as dht_cli

        return getattr(dht_cli, args.command)(_load(args), args)
    raise AssertionError(args.command)


def _config(args: argparse.Namespace) -> int:
    import dataclasses

    from macula.config import load_config, render_defaults

    if args.config_command == "defaults":
        from macula.hw import detect_limits

        print(render_defaults(detect_limits()[1]))
        return 0
    cfg = load_config(args.file) if args.config_command == "check" else _load(args)
    if args.config_command == "check":
        print(f"{args.file}: valid")
        return 0
    print(json.dumps(dataclasses.asdict(cfg), indent=2))
    return 0
