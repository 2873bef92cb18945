"""Operator metrics: a Prometheus text endpoint on localhost, and the process's memory.

Nothing here imports prometheus_client until an endpoint is started: the library costs
megabytes resident, which nodes run in-process by tests, the demo and benchmarks (nodes
without a control endpoint) do not pay.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from macula.config import parse_address

if TYPE_CHECKING:
    from macula.metrics.http import MetricsServer
    from macula.operations import Operations

log = logging.getLogger("macula.metrics")

DEFAULT_PORT = 9464
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident set size of this process (/proc/self/statm: no psutil import needed)."""
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * _PAGE


async def start_metrics(ops: "Operations", listen: str) -> "MetricsServer | None":
    """Serve the node's metrics at ``listen`` ([metrics] listen); None when that is empty
    or the endpoint cannot start (the mesh matters more than its metrics: the reason is
    logged)."""
    if not listen:
        return None
    try:
        from macula.metrics.collector import NodeCollector
        from macula.metrics.http import MetricsServer
    except ImportError as exc:
        log.warning("metrics endpoint off: %s (install python3-prometheus-client)", exc)
        return None
    host, port = parse_address(listen, DEFAULT_PORT)
    collector = NodeCollector(ops)
    server = MetricsServer(collector)
    try:
        await server.start(host, port)
    except OSError as exc:
        collector.detach()
        # one line naming the key to change (a second node on the host: its own port)
        log.warning("metrics endpoint off: metrics.listen = %r: cannot listen on %s:%d: %s",
                    listen, host, port, exc.strerror or exc)
        return None
    log.info("metrics at http://%s/metrics", server.url_host)
    return server
