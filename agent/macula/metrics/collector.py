"""The node's metrics, read from its operations table at scrape time.

A custom collector rather than Counter/Gauge objects updated in the hot paths: the node
already counts what matters (sessions, pool, endpoint, pub/sub, RPC), so a scrape costs
one walk over the sessions and nothing is paid between scrapes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from macula.host import PeerDown
from macula.metrics import rss_bytes

if TYPE_CHECKING:
    from macula.host import PeerEvent
    from macula.operations import Operations
    from macula.transport import Session

MIB = 1 << 20
# status() keys of pub/sub and RPC that are levels, not running totals.
GAUGE_KEYS = {"subscriptions", "remote_nodes", "in_flight"}
FRAME_KEYS = ("frames_in", "frames_out", "dropped_out")


class NodeCollector:
    def __init__(self, ops: "Operations") -> None:
        self.ops = ops
        # Frame counts of sessions that have closed: Prometheus counters must not fall back
        # when a session goes away.
        self._retired = dict.fromkeys(FRAME_KEYS, 0)
        self._reported = dict.fromkeys(FRAME_KEYS, 0)
        ops.watch_peers(self._session_event)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)

    def detach(self) -> None:
        self.ops.unwatch_peers(self._session_event)

    def _session_event(self, event: "PeerEvent") -> None:
        if type(event) is PeerDown:
            for key in FRAME_KEYS:
                self._retired[key] += getattr(event.session, key)

    def _frame_totals(self, sessions: list["Session"]) -> dict[str, int]:
        # A session replaced as a duplicate closes without a "down" event; its frames then
        # drop out of the sum. max() keeps the counter monotonic (it undercounts instead).
        for key in FRAME_KEYS:
            now = self._retired[key] + sum(getattr(s, key) for s in sessions)
            self._reported[key] = max(self._reported[key], now)
        return dict(self._reported)

    def collect(self) -> Iterator[Metric]:
        facts = self.ops.facts
        info = GaugeMetricFamily("macula_node_info", "This node (value is always 1).",
                                 labels=["node_id", "name", "realm", "version", "tls_mode",
                                         "hw_profile"])
        info.add_metric([facts.node_id.hex(), facts.name, facts.realm, facts.version,
                         facts.tls_mode, facts.hw_profile], 1)
        yield info
        yield GaugeMetricFamily("macula_uptime_seconds", "Seconds since the node started.",
                                value=time.monotonic() - facts.started_at)

        sessions = self.ops.sessions()
        roles: dict[str, int] = {"node": 0, "client": 0}
        for s in sessions:
            if s.peer is not None:
                roles[s.peer.role] = roles.get(s.peer.role, 0) + 1
        clients = roles["client"]
        yield GaugeMetricFamily("macula_peers", "Node-to-node sessions.",
                                value=len(sessions) - clients)
        yield GaugeMetricFamily("macula_clients", "Light-client sessions.", value=clients)
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
        counters = self.ops.counters()
        yield from _counters("macula_endpoint", "QUIC endpoint", counters["endpoint"])
        yield from _counters("macula_pool", "peer pool", counters["pool"])
        yield from _status_metrics("macula_pubsub", "pub/sub", counters["pubsub"])
        yield from _status_metrics("macula_rpc", "RPC", counters["rpc"])
        # failed: handshakes that failed authentication; refused_early: CONNECTs then
        # refused unchecked (transport/authlimit.py)
        yield from _counters("macula_auth", "authentication", counters.get("auth", {}))

        yield GaugeMetricFamily("macula_memory_rss_bytes", "Resident memory of the agent.",
                                value=rss_bytes())
        yield GaugeMetricFamily("macula_memory_budget_bytes",
                                "The agent's memory budget (limits.agent_memory_mib).",
                                value=facts.limits["agent_memory_mib"] * MIB)
        limits = GaugeMetricFamily("macula_limit", "Limits in force ([limits], from the "
                                   "hardware profile unless configured).", labels=["limit"])
        for key, value in facts.limits.items():
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
