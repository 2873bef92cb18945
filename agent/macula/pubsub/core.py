"""The pub/sub core (sans-IO): who gets each publish, in which order, and whom to hold.

Fed subscriptions, publishes and routed publishes; it returns what to send as
``(destination, message, source)`` triples (``out``, drained by ``messages_to_send``):

- ``Deliver`` to a local subscriber's owner: an opaque handle the edge maps to a sink
  (a client session's outbox, an in-process subscriber);
- ``PubsubRoute`` to a remote node id: ONE per node per publish, never relayed further;
- ``source``: who fed it (a publisher handle or None), for the edge's back-pressure.

and events (``next_event``): ``NeedInterest(topic)`` (look the topic's remote interest
up, then call ``interest_known``), ``Hold(source)`` / ``Release(source)`` (back-pressure
on a publisher flooding a topic still being looked up).

Remote interest comes from an injected ``InterestView`` (pubsub/interest.py: the
cluster's replicated subscriptions for the members of this node's cluster, the DHT for
every other node). Until a topic's answer is known (``ready``), its publishes wait in a
bounded per-topic queue for the nodes outside the cluster, while the nodes whose
interest the cluster already knows (``direct_nodes``, fixed when the wait begins) get
them at once:

- a node in that set gets each publish at once or not at all, never from the queue;
- every other node gets only what the queue holds once the lookup ends, in order,
  and nothing at once until the queue has drained (the topic stays "waiting").

So no subscriber node gets a later publish before an earlier one of the same topic
from this node. A queue group's member is picked when the publish is made; a pick
that fell on a node outside the set is made again after the lookup, among the nodes
outside the set. With no cluster members the set is empty and every remote node
waits for the lookup.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any, Collection, NamedTuple, Protocol

from macula.pubsub.router import PubSubRouter, Route
from macula.pubsub.topics import TopicError
from macula.runtime.outputs import CoreOutputs
from macula.wire.messages import Deliver, PubsubRoute

WAITING_OVERHEAD = 96       # bytes charged per waiting publish beyond payload and topic
WAITING_HOLD = 64 << 10     # a flood into a topic still being looked up is held from here


class InterestView(Protocol):
    """What the core may ask of the remote-interest source, synchronously."""

    def ready(self, topic: str) -> bool: ...             # remote interest for topic is known
    def direct_nodes(self) -> Collection[bytes]: ...     # nodes known without any lookup
    def local_changed(self) -> None: ...                 # our subscriptions changed


class Budget(Protocol):
    """Bytes the node's queues hold together (shared with the edge's outboxes)."""
    limit: int
    used: int


class NeedInterest(NamedTuple):
    topic: str


class Hold(NamedTuple):
    source: Any


class Release(NamedTuple):
    source: Any


class _Waiting:
    """A topic's publishes waiting for its remote interest (see the module docstring)."""

    __slots__ = ("direct", "queue", "bytes", "held")

    def __init__(self, direct: frozenset[bytes]) -> None:
        self.direct = direct
        self.queue: deque[tuple[bytes, Any, Any, frozenset[str], int]] = deque()
        self.bytes = 0                   # charged to the node's budget too
        self.held: set[Any] = set()      # publishers held back until the lookup ends


_NONE: frozenset = frozenset()


class PubSubCore(CoreOutputs):
    def __init__(self, node_id: bytes, router: PubSubRouter, interest: InterestView,
                 budget: Budget, *, queue_bytes: int, hold: bool = True) -> None:
        """``queue_bytes``: a waiting topic's bound (a subscriber outbox's, too);
        ``hold``: hold flooding publishers at all (False: drop-oldest only)."""
        self.node_id = node_id
        self.router = router
        self.interest = interest
        self.budget = budget
        self.queue_bytes = queue_bytes
        self.hold = hold
        super().__init__()   # out: (destination, message, source) triples; events
        self._waiting: dict[str, _Waiting] = {}
        self.stats = {"published": 0, "delivered": 0, "routed_out": 0, "routed_in": 0,
                      "dropped": 0, "waiting_dropped": 0, "routed_early": 0}
        # PUBSUB_ROUTE frames per peer node: what proves there is no amplification
        self.routed_to: Counter[bytes] = Counter()
        self.routed_from: Counter[bytes] = Counter()

    # -- the core shape (messages_to_send / next_event: CoreOutputs) --------------------
    def waiting(self, topic: str) -> int | None:
        """Publishes of ``topic`` waiting for its lookup; None when it is not waiting."""
        w = self._waiting.get(topic)
        return None if w is None else len(w.queue)

    # -- local subscriptions -----------------------------------------------------------
    def subscribe(self, owner: Any, sub_id: int, pattern: str, group: str | None) -> None:
        """Raises TopicError / Overloaded (the router's bounds)."""
        self.router.subscribe(owner, sub_id, pattern, group)
        self.interest.local_changed()

    def unsubscribe(self, owner: Any, sub_id: int) -> None:
        if self.router.unsubscribe(owner, sub_id):
            self.interest.local_changed()

    def drop_owner(self, owner: Any) -> None:
        if self.router.drop_owner(owner):
            self.interest.local_changed()

    def forget_source(self, source: Any) -> None:
        """A publisher is gone: no Release will be due for it."""
        for waiting in self._waiting.values():
            waiting.held.discard(source)

    # -- publishing --------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, reply_to: str | None = None,
                headers: dict | None = None, source: Any = None) -> None:
        """A publish made here (by a client or in-process). Local subscribers get it at
        once; remote nodes one frame each as soon as the topic's interest is known, and
        until then it waits (module docstring). Raises TopicError first."""
        self.stats["published"] += 1
        router = self.router
        plan = router.plan(topic)
        waiting = self._waiting.get(topic)
        if waiting is None and self.interest.ready(topic):
            if not plan.groups and not plan.remote:  # the common case: plain local subscribers
                if plan.local:
                    self._deliver_local(plan.local, topic, payload, reply_to, headers, source)
                return
            route = router.route(topic)
            if route.local:
                self._deliver_local(route.local, topic, payload, reply_to, headers, source)
            self._send_remote(route, topic, payload, reply_to, headers, source)
            return
        # the topic's remote interest is being looked up
        if waiting is None:
            waiting = self._waiting[topic] = _Waiting(frozenset(self.interest.direct_nodes()))
            self.events.append(NeedInterest(topic))
        settled = _NONE
        if not plan.groups and not plan.remote:
            if plan.local:
                self._deliver_local(plan.local, topic, payload, reply_to, headers, source)
        else:
            route = router.route(topic)
            if route.local:
                self._deliver_local(route.local, topic, payload, reply_to, headers, source)
            direct = waiting.direct
            now = Route([], {n: part for n, part in route.remote.items() if n in direct})
            if now.remote:
                self._send_remote(now, topic, payload, reply_to, headers, source)
                self.stats["routed_early"] += len(now.remote)
            if plan.groups:  # groups served now; the others are picked again later
                settled = frozenset([s.group for s in route.local if s.group is not None]
                                    + [g for _, groups in now.remote.values() for g in groups])
        # bounded like a subscriber's outbox: publishers held past a quarter of the
        # bound, the oldest dropped past all of it (or past the node's budget)
        n = len(payload) + len(topic) + WAITING_OVERHEAD
        queue, budget, limit = waiting.queue, self.budget, self.queue_bytes
        queue.append((payload, reply_to, headers, settled, n))
        waiting.bytes += n
        budget.used += n
        while queue and (waiting.bytes > limit or budget.used > budget.limit):
            old = queue.popleft()[4]
            waiting.bytes -= old
            budget.used -= old
            self.stats["waiting_dropped"] += 1
        if self.hold and waiting.bytes > min(limit // 4, WAITING_HOLD) and source is not None \
                and source not in waiting.held:
            waiting.held.add(source)  # back-pressure: hold the publisher until the answer
            self.events.append(Hold(source))

    def interest_known(self, topic: str) -> None:
        """The lookup ``NeedInterest(topic)`` asked for ended (found, empty or failed):
        what waited goes out, in arrival order."""
        waiting = self._waiting.pop(topic, None)
        if waiting is None:
            return
        self.budget.used -= waiting.bytes
        route_rest = self.router.route_rest
        for payload, reply_to, headers, settled, _ in waiting.queue:
            # groups still to serve pick a member per message
            route = route_rest(topic, waiting.direct, settled)
            if route.local:
                self._deliver_local(route.local, topic, payload, reply_to, headers, None)
            self._send_remote(route, topic, payload, reply_to, headers, None)
        for source in waiting.held:  # after: a congested sink may hold them on
            self.events.append(Release(source))

    # -- from other nodes --------------------------------------------------------------
    def handle_route(self, node_id: bytes, msg: PubsubRoute, source: Any = None) -> None:
        """A publish another node routed here: local subscribers only, never further."""
        self.stats["routed_in"] += 1
        self.routed_from[node_id] += 1
        try:
            subs = self.router.local_for_route(msg.topic, msg.plain, msg.groups)
        except TopicError:  # a bad topic from a peer is skipped
            return
        if subs:
            self._deliver_local(subs, msg.topic, msg.payload, msg.reply_to, msg.headers, source)

    # -- output ------------------------------------------------------------------------
    def _deliver_local(self, subs, topic: str, payload: bytes, reply_to, headers,
                       source: Any) -> None:
        out = self.out
        for sub in subs:
            out.append((sub.owner, Deliver(sub.sub_id, topic, payload, reply_to, headers),
                        source))
        self.stats["delivered"] += len(subs)

    def _send_remote(self, route: Route, topic: str, payload: bytes, reply_to, headers,
                     source: Any) -> None:
        if not route.remote:
            return
        origin, out, routed_to = self.node_id, self.out, self.routed_to
        for node_id, (plain, groups) in route.remote.items():
            out.append((node_id, PubsubRoute(origin, topic, payload, plain, groups, reply_to,
                                             headers), source))
            routed_to[node_id] += 1
        self.stats["routed_out"] += len(route.remote)
