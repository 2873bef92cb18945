"""`macula run`: one node in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from macula.config import Config
from macula.node import Node

log = logging.getLogger("macula.cli")


async def run_node(cfg: Config, fields=None) -> int:
    """Run until SIGINT/SIGTERM. Under systemd: READY=1 once the node listens and has
    tried every seed once, WATCHDOG=1 from this loop (a frozen loop gets restarted),
    STATUS= with the peer count, STOPPING=1 on the way out."""
    from macula.service import Notifier, start_watchdog

    node = Node(cfg, log_fields=fields)
    notifier = Notifier()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watchdog = None
    try:
        await node.start()
        watchdog = start_watchdog(notifier, status=lambda: _status_line(node))
        await node.pool.seeds_tried(cfg.timeouts.connect + 1.0)
        notifier.ready(_status_line(node))
        await stop.wait()
        log.info("signal received, shutting down")
        notifier.stopping("shutting down")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if watchdog is not None:
            watchdog.cancel()
        await node.stop()
    return 0


def _status_line(node: Node) -> str:
    pool = node.pool
    seeds = pool.seed_states()
    up = sum(1 for state in seeds.values() if state == "connected")
    return (f"{len(pool.peers())} peers, {len(pool.clients())} clients, "
            f"seeds {up}/{len(seeds)} connected, listening on {node.listen_address[1]}")
