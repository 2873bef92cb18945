"""The node's metrics, read from the node at scrape time.

A custom collector rather than Counter/Gauge objects updated in the hot paths: the node
already counts what matters (sessions, pool, endpoint, pub/sub, RPC), so a scrape costs
one walk over the sessions and nothing is paid between scrapes.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from macula import __version__
from macula.metrics import rss_bytes

if TYPE_CHECKING:
    from macula.node import Node
    from macula.transport import Session

MIB = 1 << 20
# status() keys of pub/sub and RPC that are levels, not running totals.
GAUGE_KEYS = {"subscriptions", "remote_nodes", "in_flight"}
FRAME_KEYS = ("frames_in", "frames_out", "dropped_out")


class NodeCollector:
    def __init__(self, node: "Node") -> None:
        self.node = node
        # Frame counts of sessions that have closed: Prometheus counters must not fall back
        # when a session goes away.
        self._retired = dict.fromkeys(FRAME_KEYS, 0)
        self._reported = dict.fromkeys(FRAME_KEYS, 0)
        node.peer_listeners.append(self._session_event)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)

    def detach(self) -> None:
        if self._session_event in self.node.peer_listeners:
            self.node.peer_listeners.remove(self._session_event)

    def _session_event(self, event: str, session: "Session") -> None:
        if event == "down":
            for key in FRAME_KEYS:
                self._retired[key] += getattr(session, key)

    def _frame_totals(self, sessions: list["Session"]) -> dict[str, int]:
        # A session replaced as a duplicate closes without a "down" event; its frames then
        # drop out of the sum. max() keeps the counter monotonic (it undercounts instead).
        for key in FRAME_KEYS:
            now = self._retired[key] + sum(getattr(s, key) for s in sessions)
            self._reported[key] = max(self._reported[key], now)
        return dict(self._reported)

    def collect(self) -> Iterator[Metric]:
        node, pool = self.node, self.node.pool
        if pool is None:   # not started yet: only the process metrics
            return
        cfg = node.cfg
        info = GaugeMetricFamily("macula_node_info", "This node (value is always 1).",
                                 labels=["node_id", "name", "realm", "version", "tls_mode",
                                         "hw_profile"])
        info.add_metric([node.node_id.hex(), node.name, cfg.node.realm, __version__,
                         cfg.tls.mode, cfg.hw_profile], 1)
        yield info
        yield GaugeMetricFamily("macula_uptime_seconds", "Seconds since the node started.",
                                value=time.monotonic() - node.started_at)

        peers, clients = pool.peers(), pool.clients()
        sessions = peers + clients
        yield GaugeMetricFamily("macula_peers", "Node-to-node sessions.", value=len(peers))
        yield GaugeMetricFamily("macula_clients", "Light-client sessions.", value=len(clients))
        roles: dict[str, int] = {"node": 0, "client": 0}
        for s in sessions:
            if s.peer is not None:
                roles[s.peer.role] = roles.get(s.peer.role, 0) + 1
        by_role = GaugeMetricFamily("macula_sessions", "Sessions by the role the peer declared.",
                                    labels=["role"])
        for role, count in sorted(roles.items()):
            by_role.add_metric([role], count)
        yield by_role
        rtt = GaugeMetricFamily("macula_peer_rtt_seconds",
                                "Smoothed PING round-trip time per session.",
                                labels=["peer", "name", "role"])
        for s in sessions:
            if s.peer is not None and s.rtt is not None:
                rtt.add_metric([s.peer.node_id.hex(), s.peer.name, s.peer.role], s.rtt)
        yield rtt

        frames = self._frame_totals(sessions)
        yield CounterMetricFamily("macula_frames_received", "Frames received on sessions.",
                                  value=frames["frames_in"])
        yield CounterMetricFamily("macula_frames_sent", "Frames queued for sending on sessions.",
                                  value=frames["frames_out"])
        yield CounterMetricFamily("macula_frames_dropped",
                                  "Frames dropped because a session's send buffer was full.",
                                  value=frames["dropped_out"])
        if node.endpoint is not None:
            yield from _counters("macula_endpoint", "QUIC endpoint", node.endpoint.stats)
        yield from _counters("macula_pool", "peer pool",
                             {k: v for k, v in dataclasses.asdict(pool.stats).items()
                              if isinstance(v, int)})
        if node.pubsub is not None:
            yield from _status_metrics("macula_pubsub", "pub/sub", node.pubsub.status())
        if node.rpc is not None:
            yield from _status_metrics("macula_rpc", "RPC", node.rpc.status())

        yield GaugeMetricFamily("macula_memory_rss_bytes", "Resident memory of the agent.",
                                value=rss_bytes())
        yield GaugeMetricFamily("macula_memory_budget_bytes",
                                "The agent's memory budget (limits.agent_memory_mib).",
                                value=cfg.limits.agent_memory_mib * MIB)
        limits = GaugeMetricFamily("macula_limit", "Limits in force ([limits], from the "
                                   "hardware profile unless configured).", labels=["limit"])
        for key, value in dataclasses.asdict(cfg.limits).items():
            limits.add_metric([key], value)
        yield limits


def _counters(prefix: str, what: str, stats: dict[str, int]) -> Iterator[Metric]:
    for key, value in stats.items():
        yield CounterMetricFamily(f"{prefix}_{key}", f"{what}: {key.replace('_', ' ')}.",
                                  value=value)


def _status_metrics(prefix: str, what: str, status: dict[str, Any]) -> Iterator[Metric]:
    """A subsystem's status(): running totals become counters, levels and lists gauges."""
    for key, value in status.items():
        if isinstance(value, (list, tuple, set, dict)):
            yield GaugeMetricFamily(f"{prefix}_{key}", f"{what}: number of {key}.",
                                    value=len(value))
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        elif key in GAUGE_KEYS:
            yield GaugeMetricFamily(f"{prefix}_{key}", f"{what}: {key.replace('_', ' ')}.",
                                    value=value)
        else:
            yield CounterMetricFamily(f"{prefix}_{key}", f"{what}: {key.replace('_', ' ')}.",
                                      value=value)
