"""The cluster as one sans-IO core: SWIM membership, gossip and the cluster state.

It has the core shape (docs/ARCHITECTURE.md), so the node's edge and the simulator
drive the same code. Inside:

- membership decides the gossip peers: each node gossips with a random partial view of
  the live members, the ``gossip_peers`` it chose plus those that chose it, even
  before membership news of them arrives (links are used both ways: one a node cannot
  push back on would leave the chooser fed only by anti-entropy). A cluster of up to ``gossip_peers`` + 1 nodes is a full mesh; in a
  larger one a node has about twice ``gossip_peers`` peers whatever the size. Gossip
  pushes an entry until every peer has it, so a view of all N members would cost
  O(N) pushes per node per change. A neighbour that fails or leaves is replaced at
  once (and no longer holds the delta log back);
- pushes carry the news, so a new link is only announced (an empty push; its ack
  brings the peer's version vector), repeated every ack timeout until the peer
  answers. A node pulls from the node whose session brought it in (that link exists
  before anything it lacks is collected from that node's log), pulls again when a
  session to a peer comes up, and exchanges digests both ways with a member coming
  back after it failed (links to it were dropped and logs collected without it); a
  link dropped that way is restored, since the other side may still count on it.
  Gossip passes on what a pull's answer taught it (``news``), so a joiner whose
  contact was itself still joining gets what the contact learns later;
- gossip writes (PUSH, STATE) are refused from a node the membership table neither
  holds nor has room for, so a node refused at ``max_members`` cannot write into this
  node's state; reads (PULL, DIGEST) are answered for any node of the cluster;
- after every merge, this node's own entries are checked against what it publishes
  and repaired (the far side of a partition, a false failure, a previous boot);
- views (subscriptions, providers) count live members only, so a member that fails or
  leaves is out of every view at once; its entries are deleted at once when it left,
  and ``gc_grace`` after it failed (it may only be partitioned), by the ``gc_copies``
  live members closest to it (XOR), not by everyone.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any, Callable, Iterable

from macula.cluster.events import (
    ClusterStats, ProvidersChanged, StateChanged, SubscriptionsChanged,
)
from macula.cluster.state import (
    MAX_FEATURE_MAPS, NAMES, ClusterState, ProviderView, SubscriptionView,
)
from macula.crdt import ClockSkew
from macula.gossip import GossipCore, InputRejected, ReplicaChanged
from macula.membership import (
    MemberFailed, MemberJoined, MemberLeft, State, SwimCore,
)
from macula.membership.core import ACTIVE
from macula.interest import RemotePattern
from macula.wire.messages import (
    GossipAck, GossipDigest, GossipPull, GossipPush, GossipState, SwimAck, SwimPing,
    SwimPingReq,
)

SWIM_TYPES = frozenset((SwimPing, SwimAck, SwimPingReq))
GOSSIP_TYPES = frozenset((GossipPush, GossipPull, GossipDigest, GossipState, GossipAck))
_GOSSIP_WRITES = (GossipPush, GossipState)

Event = Any  # membership events, StateChanged, SubscriptionsChanged, ProvidersChanged


def _distance(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


class ClusterCore:
    def __init__(self, node_id: bytes, addr: Any, replica_id: bytes, rng: random.Random,
                 wall_ms: Callable[[float], int], *, max_members: int = 64,
                 max_entries_per_node: int = 4096, probe_interval: float = 1.0,
                 probe_timeout: float = 0.5, suspicion_mult: int = 4,
                 sync_interval: float = 30.0, dead_retention: float = 30.0,
                 gossip_interval: float = 1.0, fanout: int = 3,
                 anti_entropy_interval: float = 30.0, max_message_bytes: int = 64 * 1024,
                 max_log_bytes: int = 1 << 20, gossip_peers: int = 4, gc_grace: float = 60.0,
                 gc_copies: int = 2, max_events: int = 1024) -> None:
        """``max_members`` counts this node. ``wall_ms(now)`` gives Unix milliseconds
        for the metadata clock (the node's wall clock; the simulator's virtual time)."""
        self.node_id = node_id
        self.swim = SwimCore(node_id, addr, rng, probe_interval=probe_interval,
                             probe_timeout=probe_timeout, suspicion_mult=suspicion_mult,
                             sync_interval=sync_interval, dead_retention=dead_retention,
                             max_members=max_members - 1, max_events=max_events)
        self.gossip = GossipCore(replica_id, rng, interval=gossip_interval, fanout=fanout,
                                 anti_entropy_interval=anti_entropy_interval,
                                 max_message_bytes=max_message_bytes, max_log_bytes=max_log_bytes,
                                 max_names=len(NAMES) + MAX_FEATURE_MAPS, max_peers=max_members, max_events=max_events)
        self.state = ClusterState(node_id, replica_id, max_entries_per_node=max_entries_per_node)
        for name, replica in self.state.replicas.items():
            self.gossip.register(name, replica)
        self.gossip_peers = gossip_peers
        self.gc_grace = gc_grace
        self.gc_copies = gc_copies
        self.sweep_interval = min(10.0, gc_grace / 2)
        self.stats = ClusterStats()
        self._wall_ms = wall_ms
        self._rng = rng
        self._live: set[bytes] = set()
        self._chosen: set[bytes] = set()          # gossip neighbours this node picked
        self._peers: set[bytes] = set()           # gossip peers: chosen, and those that chose us
        self._unconfirmed: dict[bytes, tuple[float, str]] = {}   # new peer -> (again at, exchange)
        self._departed: dict[bytes, bool] = {}    # failed or left -> was a peer: back means a sync
        self._pull_on_join: dict[bytes, None] = {}   # session peers not yet gossip peers
        self._stranger_peers: dict[bytes, float] = {}   # peers membership does not know -> since
        self._absent: dict[bytes, float] = {}     # owner with entries, not live: since when
        self._subscriptions: SubscriptionView = {}
        self._providers: ProviderView = {}
        self._events: deque[Event] = deque()
        self._max_events = max_events
        self.events_dropped = 0
        self._next_sweep: float | None = None

    # ---- the application's side -------------------------------------------------------
    def start(self, now: float) -> None:
        """Start the timers and publish what was set before."""
        self.swim.handle_timer(now)
        self.gossip.handle_timer(now)
        self._next_sweep = now + self.sweep_interval
        for name in self.state.names:
            self._fix(name, now)
        self._settle(now)

    def register_map(self, name: str) -> None:
        """A feature's own replicated map (cluster/state.py); gossiped like the others."""
        self.gossip.register(name, self.state.register_map(name))

    def set_local_entries(self, name: str, entries: dict[str, Iterable[bytes]],
                          now: float) -> None:
        """This node's entries in feature map ``name`` (key -> payloads)."""
        self.state.want_entries(name, entries)
        self._publish(name, now)

    def entries(self, name: str) -> dict[bytes, dict[str, tuple[bytes, ...]]]:
        """The live members' entries in feature map ``name``: owner -> key -> payloads."""
        return self.state.entries(name, self._live)

    def set_metadata(self, meta: dict[str, Any], now: float) -> None:
        self.state.want_metadata(meta)
        self._publish("nodes", now)

    def set_local_procedures(self, names: Iterable[str], now: float) -> None:
        self.state.want_procedures(names)
        self._publish("procedures", now)

    def set_local_subscriptions(self, patterns: Iterable[RemotePattern], now: float) -> None:
        self.state.want_subscriptions(patterns)
        self._publish("subscriptions", now)

    def leave(self, now: float) -> None:
        """Tell every member this node leaves; they drop it from every view at once."""
        self.swim.leave(now)
        self._settle(now)

    def live(self) -> set[bytes]:
        """Live members (suspects included), without this node."""
        return set(self._live)

    def remote_subscriptions(self) -> SubscriptionView:
        return dict(self._subscriptions)

    def providers(self, procedure: str) -> tuple[bytes, ...]:
        return self._providers.get(procedure, ())

    def metadata(self, node_id: bytes) -> dict[str, Any] | None:
        return self.state.metadata(node_id)

    def address(self, node_id: bytes) -> Any:
        return self.swim.address(node_id)

    def member_states(self) -> dict[bytes, State]:
        """Every node the membership table holds, tombstones included (not this node)."""
        return self.swim.table()

    # ---- the core shape ---------------------------------------------------------------
    def handle_message(self, sender: bytes, msg: Any, now: float) -> None:
        kind = type(msg)
        if kind in SWIM_TYPES:
            self.swim.handle_message(sender, msg, now)
        elif kind in GOSSIP_TYPES:
            self.swim.heard_from(sender, now)   # e.g. a member we hold dead: it refutes now
            if kind in _GOSSIP_WRITES and not self._admissible(sender):
                self.stats.unadmitted += 1
                self._settle(now)
                return
            if sender not in self._peers:
                self._add_peer(sender, now)   # it chose us: gossip both ways
            self._confirm(sender, kind)
            self.gossip.handle_message(sender, msg, now)
        else:
            return
        self._settle(now)

    def handle_timer(self, now: float) -> None:
        t = self.swim.get_timer()
        if t is not None and t <= now:
            self.swim.handle_timer(now)
        t = self.gossip.get_timer()
        if t is not None and t <= now:
            self.gossip.handle_timer(now)
        if self._next_sweep is not None and now >= self._next_sweep:
            self._next_sweep = now + self.sweep_interval
            self._sweep(now)
        self._confirm_links(now)
        self._settle(now)

    def get_timer(self) -> float | None:
        times = [t for t in (self.swim.get_timer(), self.gossip.get_timer(), self._next_sweep)
                 if t is not None]
        times.extend(due for due, _ in self._unconfirmed.values())
        return min(times) if times else None

    def messages_to_send(self) -> list[tuple[bytes, Any]]:
        # membership first: a joiner must hear that we admitted it before our gossip
        return self.swim.messages_to_send() + self.gossip.messages_to_send()

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def peer_connected(self, node_id: bytes, addr: Any, now: float) -> None:
        """A session came up: membership syncs unless it knows the node alive, and a
        gossip peer is pulled from (what a dropped session may have lost)."""
        self.swim.peer_connected(node_id, addr, now)
        if node_id in self._peers:
            self.gossip.peer_connected(node_id, addr, now)   # what a dropped session lost
        else:
            self._pull_on_join.pop(node_id, None)
            self._pull_on_join[node_id] = None
            if len(self._pull_on_join) > self.gossip.max_peers:
                del self._pull_on_join[next(iter(self._pull_on_join))]
            if node_id in self._live:
                self._add_peer(node_id, now)
        self._settle(now)

    def peer_disconnected(self, node_id: bytes, now: float) -> None:
        """Sessions come and go; only the failure detector removes members."""

    def handle_unreachable(self, node_id: bytes, now: float) -> None:
        """The edge could not deliver to ``node_id``. Probes and acks time out on their
        own, so this is only counted."""
        self.stats.unreachable += 1

    # ---- internals --------------------------------------------------------------------
    def _publish(self, name: str, now: float) -> None:
        if self._next_sweep is None:
            return   # not started: start() publishes
        self._fix(name, now)
        self._settle(now)

    def _fix(self, name: str, now: float) -> None:
        try:
            mutate = self.state.fix(name, self._wall_ms(now))
        except ClockSkew:
            self.stats.clock_skew += 1
            return
        if mutate is not None:
            self.gossip.update(name, mutate, now)

    def _admissible(self, sender: bytes) -> bool:
        """A member, or a node the table has room for (its membership news may still be
        on the way; heard_from has asked it for its table)."""
        if self.swim.state_of(sender) is not None:
            return True
        table = self.swim.table()
        return len(table) < self.swim.max_members or any(s not in ACTIVE for s in table.values())

    def _republish(self, now: float) -> None:
        """Send our own entries again as one delta per name: what was written while
        this node had no members left the delta log at once (no one to wait for), and
        a peer that pulled it from us does not pass on what it pulled."""
        for name in self.state.names:
            try:
                mutate = self.state.republish(name, self._wall_ms(now))
            except ClockSkew:
                self.stats.clock_skew += 1
                continue
            if mutate is not None:
                self.gossip.update(name, mutate, now)

    def _settle(self, now: float) -> None:
        """Act on what the cores reported: membership drives the gossip peers and the
        views; merges trigger the repair of own entries and new views."""
        alone = not self._live
        membership = False
        left = []
        while (event := self.swim.next_event()) is not None:
            kind = type(event)
            if kind is MemberJoined:
                membership = True
                self._live.add(event.node_id)
                if self._departed.get(event.node_id) and event.node_id not in self._peers:
                    self._add_peer(event.node_id, now)   # back (a false failure, a partition)
            elif kind is MemberFailed or kind is MemberLeft:
                membership = True
                self._live.discard(event.node_id)
                self._departed[event.node_id] = event.node_id in self._peers
                self._drop_peer(event.node_id, now)
                if kind is MemberLeft:
                    left.append(event.node_id)
            self._emit(event)
        if membership:
            self._fill_view(now)
            if alone and self._live:
                self._republish(now)
            for owner in left:   # a member that left is not coming back with these entries
                if owner not in self._live and self._on_duty(owner):
                    self._remove(owner, now)
        changed = []
        while (event := self.gossip.next_event()) is not None:
            if type(event) is ReplicaChanged:
                changed.append(event.name)
                self._emit(StateChanged(event.name))
            elif type(event) is InputRejected:
                code = event.code.name
                self.stats.rejected[code] = self.stats.rejected.get(code, 0) + 1
        for name in changed:
            self._fix(name, now)   # repair our own entries if the merge touched them
        if membership or "procedures" in changed or "subscriptions" in changed:
            self._refresh_views()

    def _add_peer(self, node_id: bytes, now: float) -> bool:
        """Gossip with ``node_id`` (bounded by max_members, as the membership is)."""
        if len(self._peers) >= self.gossip.max_peers:
            return False
        self._peers.add(node_id)
        exchange = self._exchange_for(node_id)
        self.gossip.peer_connected(node_id, None, now, exchange)
        self._unconfirmed[node_id] = (now + self.gossip.ack_timeout, exchange)
        return True

    def _exchange_for(self, node_id: bytes) -> str:
        if self._departed.pop(node_id, None) is not None:
            return "both"
        if self._pull_on_join.pop(node_id, 0) is None:
            return "pull"
        return "none"

    def _confirm(self, sender: bytes, kind: type) -> None:
        """A new link is confirmed by any answer; one we pulled on, by the state sent."""
        pending = self._unconfirmed.get(sender)
        if pending is not None and (pending[1] == "none" or kind is GossipState):
            del self._unconfirmed[sender]

    def _confirm_links(self, now: float) -> None:
        """Start again with new peers that have not answered (a lost message would
        leave the link one-way, or the state it should have brought missing)."""
        for node_id, (due, exchange) in list(self._unconfirmed.items()):
            if due <= now:
                self.gossip.peer_connected(node_id, None, now, exchange)
                self._unconfirmed[node_id] = (now + self.gossip.ack_timeout, exchange)

    def _drop_peer(self, node_id: bytes, now: float) -> None:
        self._chosen.discard(node_id)
        self._unconfirmed.pop(node_id, None)
        if node_id in self._peers:
            self._peers.discard(node_id)
            self.gossip.peer_disconnected(node_id, now)

    def _fill_view(self, now: float) -> None:
        """Choose random live members until the view is full (or no one is left)."""
        missing = self.gossip_peers - len(self._chosen)
        if missing <= 0:
            return
        candidates = sorted(self._live - self._chosen)
        for node_id in self._rng.sample(candidates, min(missing, len(candidates))):
            if node_id in self._peers or self._add_peer(node_id, now):
                self._chosen.add(node_id)

    def _emit(self, event: Event) -> None:
        if len(self._events) >= self._max_events:
            self._events.popleft()
            self.events_dropped += 1
        self._events.append(event)

    def _refresh_views(self) -> None:
        subscriptions, providers = self.state.views(self._live)
        sub_changes = {n: subscriptions.get(n, ()) for n in self._subscriptions.keys() | subscriptions.keys()
                       if self._subscriptions.get(n) != subscriptions.get(n)}
        proc_changes = {p: providers.get(p, ()) for p in self._providers.keys() | providers.keys()
                        if self._providers.get(p) != providers.get(p)}
        self._subscriptions, self._providers = subscriptions, providers
        if sub_changes:
            self._emit(SubscriptionsChanged(sub_changes))
        if proc_changes:
            self._emit(ProvidersChanged(proc_changes))

    def _on_duty(self, owner: bytes) -> bool:
        """Whether this node is among the ``gc_copies`` live nodes closest to ``owner``:
        a few delete a departed member's entries, not every member at once."""
        mine = _distance(self.node_id, owner)
        closer = sum(1 for n in self._live if n != owner and _distance(n, owner) < mine)
        return closer < self.gc_copies

    def _remove(self, owner: bytes, now: float) -> None:
        removed = False
        for name in self.state.names:
            mutate = self.state.removal(name, owner)
            if mutate is not None:
                self.gossip.update(name, mutate, now)
                removed = True
        if removed:
            self.stats.removals += 1
        self._absent.pop(owner, None)

    def _sweep(self, now: float) -> None:
        """Delete the entries of owners that have not been live members for gc_grace;
        check the live set against the membership table (events can be dropped at
        their bound); drop peers membership has not known for gc_grace."""
        live = set(self.swim.members())
        if live != self._live:
            for node_id in self._live - live:
                self._drop_peer(node_id, now)
            self._live = live
            self._fill_view(now)
            self._refresh_views()
        table = self.swim.table()
        for node_id in [n for n in self._departed if n not in table]:
            del self._departed[node_id]   # forgotten: a stranger now
        # a peer that gossiped to us before membership knew it, and still is unknown
        strangers = {p for p in self._peers - live if self.swim.state_of(p) is None}
        for node_id in list(self._stranger_peers):
            if node_id not in strangers:
                del self._stranger_peers[node_id]
        for node_id in strangers:
            if now - self._stranger_peers.setdefault(node_id, now) >= self.gc_grace:
                self._drop_peer(node_id, now)
                del self._stranger_peers[node_id]
        owners = self.state.owners()
        owners.discard(self.node_id)
        for owner in [o for o in self._absent if o not in owners]:
            del self._absent[owner]
        for owner in owners:
            if owner in self._live:
                self._absent.pop(owner, None)
                continue
            since = self._absent.setdefault(owner, now)
            if now - since >= self.gc_grace and self._on_duty(owner):
                self._remove(owner, now)
