"""`macula run`: one node in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from macula.config import Config
from macula.node import Node

log = logging.getLogger("macula.cli")


async def run_node(cfg: Config) -> int:
    node = Node(cfg)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
        await stop.wait()
        log.info("signal received, shutting down")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await node.stop()
    return 0
