"""The cluster on a node (edge): drives the ClusterCore over real sessions.

- Every SWIM and gossip message from a node of this cluster (its CONNECT caps carry
  ``cluster:<name>``) goes to the core; the same types from anyone else are ignored.
- The core runs under the one CoreDriver (runtime/driver.py): sends, events and one
  timer re-armed after every call into the core; nothing polls.
- What the core sends goes on the destination's session. A member without one is
  dialled through the node's reach path (transport/reach.py) at the address membership
  gives for it; its messages wait (bounded) for the dial. A failed dial, or a member
  still in its backoff, is reported to the core as unreachable. Nor is one dialled while
  the pool is full: that would evict another peer, which the cluster would dial back.
- A member suspected or declared failed has its session closed if that session has
  been silent for two probe periods: a QUIC connection that lived through a partition
  may be one the peer has already closed, or sit in loss-recovery backoff, long after
  the network heals; a fresh dial does neither. A member falsely failed that still
  talks to us keeps its session.
- ``stop()`` tells every member this node leaves (before the pool's GOAWAYs).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from macula import __version__
from macula.cluster.core import GOSSIP_TYPES, SWIM_TYPES, ClusterCore
from macula.cluster.events import ProvidersChanged, StateChanged, SubscriptionsChanged
from macula.errors import ErrorCode
from macula.host import PeerEvent, PeerUp
from macula.membership import (
    MemberFailed, MemberJoined, MemberLeft, MemberRecovered, MemberSuspected,
)
from macula.interest import RemotePattern
from macula.runtime.driver import CoreDriver
from macula.transport.session import Session
from macula.wire import encode

if TYPE_CHECKING:
    from macula.host import Host

log = logging.getLogger("macula.cluster")

MAX_GOSSIP_MESSAGE = 64 * 1024   # gossip's own default; far below the frame cap
_UNSPECIFIED = ("0.0.0.0", "::", "")


def cluster_cap(name: str) -> str:
    """The CONNECT capability naming a node's cluster."""
    return f"cluster:{name}"


class ClusterMember(NamedTuple):
    node_id: bytes
    name: str
    address: tuple[str, int] | None
    state: str                    # "alive", "suspect", "dead" or "left"


@dataclass(frozen=True)
class ClusterSettings:
    name: str = ""               # empty: a cluster of one (clusters are named on purpose)
    max_members: int = 10
    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    suspicion_mult: int = 4
    sync_interval: float = 30.0
    anti_entropy_interval: float = 30.0
    gc_grace: float = 60.0
    metadata_interval: float = 10.0
    max_entries_per_node: int = 4096
    gossip_interval: float = 1.0
    gossip_fanout: int = 3
    gossip_peers: int = 4
    max_message_bytes: int = MAX_GOSSIP_MESSAGE
    hw_profile: str = ""         # told to the other members in this node's metadata


def reachable_address(listen: tuple[str, int], seeds: list[tuple[str, int]]) -> tuple[str, int]:
    """Where members should dial us. A wildcard listen host is replaced by the source
    address the kernel would use towards the first seed (no packet is sent)."""
    host, port = listen
    if host not in _UNSPECIFIED or not seeds:
        return host, port
    family = socket.AF_INET6 if ":" in seeds[0][0] else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(seeds[0])
            return probe.getsockname()[0], port
    except OSError:
        return host, port


class ClusterService:
    def __init__(self, host: "Host", settings: ClusterSettings,
                 rng: random.Random | None = None) -> None:
        """Complete when it returns: handlers registered, membership started, the
        members among the sessions already up greeted."""
        self.host = host
        self.settings = settings
        # no name: this node is a cluster of one, and no session is a member's
        self.cap = cluster_cap(settings.name) if settings.name else None
        self._loop = host.loop
        self._rng = rng or random.Random(os.urandom(16))
        s = settings
        addr = reachable_address(host.advertise, list(host.seeds))
        # a fresh replica per boot: peers must never take new writes for ones already seen
        self.core = ClusterCore(
            host.node_id, addr, host.node_id + os.urandom(8), self._rng,
            lambda now: int(time.time() * 1000), max_members=s.max_members,
            max_entries_per_node=s.max_entries_per_node, probe_interval=s.probe_interval,
            probe_timeout=s.probe_timeout, suspicion_mult=s.suspicion_mult,
            sync_interval=s.sync_interval, gossip_interval=s.gossip_interval,
            fanout=s.gossip_fanout, gossip_peers=s.gossip_peers,
            anti_entropy_interval=s.anti_entropy_interval,
            max_message_bytes=s.max_message_bytes, gc_grace=s.gc_grace)
        self._subscription_listeners: list[Callable[[dict[bytes, tuple[RemotePattern, ...]]], None]] = []
        self._provider_listeners: list[Callable[[dict[str, list[bytes]]], None]] = []
        self._state_listeners: list[Callable[[str], None]] = []
        self._driver = CoreDriver(self._loop, self.core, self._send,
                                  next_event=self.core.next_event, on_event=self._on_event)
        self._metadata_timer: asyncio.TimerHandle | None = None
        self._metadata: dict[str, Any] = {}
        self._extra: dict[str, Any] = {}
        self._out = host.reach.channel("cluster", self._reached, self._unreachable,
                                       dial_when_full=False)
        self._stopped = False
        # bytes_sent: frames are encoded to be sent anyway; received bytes are not
        # counted (that would mean encoding every message again)
        self.stats = {"messages_sent": 0, "messages_received": 0, "bytes_sent": 0,
                      "dial_failures": 0, "send_dropped": 0,
                      "waiting_dropped": 0, "foreign": 0, "callback_errors": 0}
        for cls in SWIM_TYPES | GOSSIP_TYPES:
            # from a non-member these are refused from the header, never decoded
            host.on(cls, self._on_message, accept=self._is_member_peer)
        host.watch_peers(self._on_peer)
        now = self._loop.time()
        self._metadata = self._compose_metadata(self._extra)
        self.core.set_metadata(self._metadata, now)
        self.core.start(now)
        for session in host.pool.peers():
            self._on_peer(PeerUp(session))
        self._metadata_timer = self._loop.call_later(self.settings.metadata_interval,
                                                     self._refresh_metadata)
        self._flush()

    async def stop(self) -> None:
        """Leave the cluster: every member with a session hears it now, the rest from
        them. Call before the pool closes, so the goodbyes go out with its drain."""
        if self._stopped:
            return
        self.core.leave(self._loop.time())
        self._flush()
        self._stopped = True
        self._driver.stop()
        if self._metadata_timer is not None:
            self._metadata_timer.cancel()

    # ---- replicated state of features ---------------------------------------------------
    def register_map(self, name: str) -> None:
        """A feature's own replicated map (cluster/state.py); StateChanged(name) events
        (``on_state_changed``) say when it changed."""
        self.core.register_map(name)

    def set_local_entries(self, name: str, entries: dict[str, Any]) -> None:
        """This node's entries in feature map ``name``: key -> payloads (bytes)."""
        if self._stopped:
            return
        self.core.set_local_entries(name, entries, self._loop.time())
        self._flush()

    def entries(self, name: str) -> dict[bytes, dict[str, tuple[bytes, ...]]]:
        """What the live members publish in feature map ``name``: owner -> key -> payloads."""
        return self.core.entries(name)

    # ---- the API for routing ------------------------------------------------------------
    def set_local_subscriptions(self, patterns: list[RemotePattern]) -> None:
        """This node's subscriptions as the cluster should route to them (replaces the
        previous set; e.g. ``PubSubRouter.local_patterns()``)."""
        if self._stopped:
            return
        self.core.set_local_subscriptions(patterns, self._loop.time())
        self._flush()

    def remote_subscriptions(self) -> dict[bytes, tuple[RemotePattern, ...]]:
        """Live members other than this node -> their patterns."""
        return self.core.remote_subscriptions()

    def on_subscriptions_changed(self, fn: Callable[[dict[bytes, tuple[RemotePattern, ...]]], None]) -> None:
        """``fn(changes)``: node ID -> its patterns now; an empty tuple means forget the
        node (it has none, or it failed or left). Fits ``PubSubRouter.set_remote``."""
        self._subscription_listeners.append(fn)

    def set_local_procedures(self, names: set[str]) -> None:
        """The procedures this node serves (replaces the previous set)."""
        if self._stopped:
            return
        self.core.set_local_procedures(names, self._loop.time())
        self._flush()

    def providers(self, procedure: str) -> list[bytes]:
        """Live members other than this node that serve ``procedure``."""
        return list(self.core.providers(procedure))

    def on_providers_changed(self, fn: Callable[[dict[str, list[bytes]]], None]) -> None:
        """``fn(changes)``: procedure -> its providers now (empty: none left)."""
        self._provider_listeners.append(fn)

    def synced(self) -> set[bytes]:
        """Live members other than this node whose own state has reached this node (its
        metadata is here: a member writes it with its first subscriptions and
        procedures). For these the views above are the whole truth: a member missing
        from them has no subscriptions or procedures, whatever a DHT record says."""
        core = self.core
        return {n for n in core.live() if core.metadata(n) is not None}

    def member_address(self, node_id: bytes) -> tuple[str, int] | None:
        """Where to dial a live member (None: not one, or no usable address)."""
        if node_id not in self.core.live():
            return None
        addr = self.core.address(node_id)
        if not addr or addr[0] in _UNSPECIFIED:
            return None
        return addr[0], addr[1]

    def on_state_changed(self, fn: Callable[[str], None]) -> None:
        """``fn(name)`` when a peer's data changed ``nodes``, ``procedures`` or
        ``subscriptions`` here (for tests, benchmarks and status)."""
        self._state_listeners.append(fn)

    def members(self) -> list[ClusterMember]:
        """This node first, then every member the table holds (failed and departed ones
        while their tombstones last)."""
        core = self.core
        me = ClusterMember(self.host.node_id, self.host.name, core.swim.addr, "alive")
        others = []
        for node_id, state in core.member_states().items():
            meta = core.metadata(node_id) or {}
            addr = core.address(node_id)
            others.append(ClusterMember(node_id, str(meta.get("name", "")),
                                        tuple(addr) if addr else None, state.name.lower()))
        others.sort(key=lambda m: (m.state != "alive", m.name, m.node_id))
        return [me, *others]

    def metadata(self, node_id: bytes) -> dict[str, Any] | None:
        """A node's metadata as the cluster replicates it: name, hw, version, load and
        any fields given to ``update_metadata``."""
        return self.core.metadata(node_id)

    def update_metadata(self, fields: dict[str, Any]) -> None:
        """Publish more fields in this node's metadata (plain msgpack values, 8 KiB in
        all; StateError beyond). name, hw, version and load stay the node's own."""
        extra = {**self._extra, **fields}
        meta = self._compose_metadata(extra)
        self.core.set_metadata(meta, self._loop.time())   # raises before anything changed
        self._extra, self._metadata = extra, meta
        self._flush()

    def status(self) -> dict[str, Any]:
        core = self.core
        entries, log_bytes = core.gossip.log_size()
        return {
            "name": self.settings.name,
            "max_members": self.settings.max_members,
            "members": 1 + len(core.live()),
            "states": {m.node_id.hex(): m.state for m in self.members()},
            # this node first; names from the replicated metadata, else its session's
            "roster": [{"name": m.name or self._name_of(m.node_id), "node_id": m.node_id.hex(),
                        "address": "%s:%d" % tuple(m.address) if m.address else None,
                        "state": m.state} for m in self.members()],
            "gossip": {**asdict(core.gossip.stats), "log_entries": entries, "log_bytes": log_bytes},
            "membership": {**asdict(core.swim.stats), "health": core.swim.health,
                           "incarnation": core.swim.incarnation},
            "state": {**asdict(core.stats), "local_refused": core.state.local_refused,
                      "over_cap": core.state.over_cap, "malformed": core.state.malformed,
                      "events_dropped": core.events_dropped},
            **self.stats,
        }

    # ---- from the node ------------------------------------------------------------------
    def _is_member_session(self, session: Session) -> bool:
        return session.peer is not None and self._is_member_peer(session.peer)

    def _is_member_peer(self, peer: Any) -> bool:
        return self.cap is not None and peer.role == "node" and self.cap in peer.caps

    def _on_message(self, session: Session, msg: Any) -> None:
        if self._stopped:
            return
        if not self._is_member_session(session):
            self.stats["foreign"] += 1
            return
        self.stats["messages_received"] += 1
        self.core.handle_message(session.peer.node_id, msg, self._loop.time())
        self._flush()

    def _on_peer(self, event: PeerEvent) -> None:
        session = event.session
        if type(event) is not PeerUp or self._stopped or not self._is_member_session(session):
            return
        node_id = session.peer.node_id
        self.core.peer_connected(node_id, session.peer.listen, self._loop.time())
        self._flush()

    # ---- to the network -------------------------------------------------------------------
    def _flush(self) -> None:
        self._driver.pump()

    def _send(self, dest: bytes, msg: Any) -> None:
        frame = encode(msg)
        session = self.host.pool.get(dest)
        if session is not None:
            self._send_frames(session, (frame,))
            return
        addr = self.core.address(dest)
        if not self._stopped and addr is not None and self._out.send(dest, frame, addr):
            return
        if self._out.dialing(dest):
            self.stats["waiting_dropped"] += 1   # its queue is full
        else:   # no address, in its backoff, or the pool is full
            self.core.handle_unreachable(dest, self._loop.time())

    def _send_frames(self, session: Session, frames: Any) -> None:
        for frame in frames:
            if session.send_frame(frame):
                self.stats["messages_sent"] += 1
                self.stats["bytes_sent"] += len(frame)
            else:
                self.stats["send_dropped"] += 1

    def _reached(self, session: Session, frames: list) -> None:
        if not self._stopped:
            self._send_frames(session, frames)

    def _unreachable(self, dest: bytes, frames: list) -> None:
        if self._stopped:
            return
        self.stats["dial_failures"] += 1
        self.stats["waiting_dropped"] += len(frames)
        self.core.handle_unreachable(dest, self._loop.time())
        self._flush()

    def _on_event(self, event: Any) -> None:
        kind = type(event)
        if kind is SubscriptionsChanged:
            self._notify(self._subscription_listeners, event.changes)
        elif kind is ProvidersChanged:
            self._notify(self._provider_listeners,
                         {p: list(nodes) for p, nodes in event.changes.items()})
        elif kind is StateChanged:
            self._notify(self._state_listeners, event.name)
        elif kind is MemberJoined:
            self.host.reach.book.learn(event.node_id, event.addr)
            log.info("cluster %s: member %s joined (%s)", self.settings.name, self._who(event.node_id),
                     "%s:%d" % tuple(event.addr) if event.addr else "no address")
        elif kind is MemberLeft:
            log.info("cluster %s: member %s left", self.settings.name, self._who(event.node_id))
        elif kind is MemberFailed or kind is MemberSuspected:
            if kind is MemberFailed:
                log.warning("cluster %s: member %s failed", self.settings.name, self._who(event.node_id))
            else:
                log.debug("cluster %s: member %s suspected", self.settings.name, self._who(event.node_id))
            # A session that heard nothing for two probe periods, not even the pool's
            # keepalive answers, is most likely one the peer no longer has (it closed
            # it while we were cut off): what we send there is lost until QUIC's idle
            # timeout, and the pool may refuse the peer's new dial as a duplicate. One
            # that still hears from a member that others think failed stays open.
            session = self.host.pool.get(event.node_id)
            if session is not None and \
                    self._loop.time() - session.last_received > 2 * self.settings.probe_interval:
                session.close(ErrorCode.GOING_AWAY, "silent, and suspected or failed in the cluster")
        elif kind is MemberRecovered:
            log.debug("cluster %s: member %s refuted the suspicion", self.settings.name,
                      self._who(event.node_id))

    def _notify(self, listeners: list[Callable], arg: Any) -> None:
        for fn in listeners:
            try:
                fn(arg)
            except Exception:  # a listener's bug must not stop the cluster
                self.stats["callback_errors"] += 1
                log.exception("cluster listener %r failed", fn)

    def _who(self, node_id: bytes) -> str:
        meta = self.core.metadata(node_id) or {}
        return f"{meta.get('name') or self._name_of(node_id)} ({node_id.hex()[:12]})"

    def _name_of(self, node_id: bytes) -> str:
        """A member's name before its metadata is replicated (a join): its session's."""
        session = self.host.pool.get(node_id)
        return session.peer.name if session is not None and session.peer else "?"

    # ---- metadata -----------------------------------------------------------------------
    def _compose_metadata(self, extra: dict[str, Any]) -> dict[str, Any]:
        try:
            load = round(os.getloadavg()[0] / (os.cpu_count() or 1), 1)
        except OSError:
            load = None
        return {**extra, "name": self.host.name, "hw": self.settings.hw_profile,
                "version": __version__, "load": load}

    def _refresh_metadata(self) -> None:
        """Publish the load when it moved (rounded to 0.1 per core, so an idle node
        writes nothing)."""
        meta = self._compose_metadata(self._extra)
        if meta != self._metadata:
            self._metadata = meta
            self.core.set_metadata(meta, self._loop.time())
            self._flush()
        self._metadata_timer = self._loop.call_later(self.settings.metadata_interval,
                                                     self._refresh_metadata)
