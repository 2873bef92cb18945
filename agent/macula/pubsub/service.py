"""Pub/sub on a node (edge): clients' SUBSCRIBE / PUBLISH, routed publishes from other
nodes, and delivery into bounded per-client outboxes.

Remote interest comes from an ``InterestSource`` (pubsub/interest.py): the cluster's
replicated subscriptions for the members of this node's cluster, the DHT for every
other node. Until a topic's DHT answer is known (``ready``), its publishes wait in a
bounded per-topic queue for the nodes outside the cluster, while the nodes whose
interest the cluster already knows (``direct_nodes``, fixed when the wait begins)
get them at once:

- a node in that set gets each publish at once or not at all, never from the queue;
- every other node gets only what the queue holds once the lookup ends, in order,
  and nothing at once until the queue has drained (the topic stays "waiting").

So no subscriber node gets a later publish before an earlier one of the same topic
from this node. A queue group's member is picked when the publish is made; a pick
that fell on a node outside the set is made again after the lookup, among the nodes
outside the set. With no cluster members the set is empty and every remote node
waits for the lookup, as before.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from typing import TYPE_CHECKING, Any, Collection, Protocol

from macula.errors import ErrorCode, MaculaError
from macula.host import PeerDown, PeerEvent
from macula.pubsub.router import PubSubRouter, Route
from macula.pubsub.topics import TopicError
from macula.transport.outbox import ByteBudget, FlowGate, Outbox
from macula.transport.session import Session, State
from macula.wire import encode
from macula.wire.messages import (
    Deliver, Error, Publish, PubsubFlow, PubsubRoute, Subscribe, Unsubscribe,
)

if TYPE_CHECKING:
    from macula.host import Host

log = logging.getLogger("macula.pubsub")

MAX_PEER_HOLD_MS = 10_000   # a peer node's PUBSUB_FLOW pause lasts at most this long
WAITING_OVERHEAD = 96       # bytes charged per waiting publish beyond payload and topic
WAITING_HOLD = 64 << 10     # a flood into a topic still being looked up is held from here


class InterestSource(Protocol):
    """Tells the router which remote nodes want a topic (DHT or cluster state)."""

    def ready(self, topic: str) -> bool: ...            # remote interest for topic is known
    async def resolve(self, topic: str) -> None: ...     # learn it (updates the router)
    def direct_nodes(self) -> Collection[bytes]: ...     # nodes known without any lookup
    def local_changed(self) -> None: ...                 # our subscriptions changed


class _Waiting:
    """A topic's publishes waiting for its remote interest (see the module docstring)."""

    __slots__ = ("direct", "queue", "bytes", "held")

    def __init__(self, direct: frozenset[bytes]) -> None:
        self.direct = direct
        self.queue: deque[tuple[bytes, Any, Any, frozenset[str], int]] = deque()
        self.bytes = 0                   # charged to the node's ByteBudget too
        self.held: set[Session] = set()  # publishers held back until the lookup ends


_NONE: frozenset = frozenset()


class PubSubService:
    def __init__(self, host: "Host", router: PubSubRouter, interest: InterestSource, *,
                 subscriber_queue_bytes: int, total_queue_bytes: int,
                 publish_hold: float = 1.0) -> None:
        """``router`` holds the subscriptions (``interest`` reads the local ones from it
        and writes the remote ones into it)."""
        self.host = host
        self.loop = host.loop
        self.router = router
        self.subscriber_queue_bytes = subscriber_queue_bytes
        self.budget = ByteBudget(total_queue_bytes)
        # back-pressure: congested outboxes hold back the sessions that fed them
        self.gate = FlowGate(PubsubFlow, publish_hold)
        self.interest = interest
        self._outboxes: dict[bytes, Outbox] = {}
        self._waiting: dict[str, _Waiting] = {}   # topic -> publishes waiting for interest
        # a subscriber node without a session: dialled by the reach path, frames wait there
        self._out = host.reach.channel("pubsub", self._reached, self._unreachable)
        self.stats = {"published": 0, "delivered": 0, "routed_out": 0, "routed_in": 0,
                      "dropped": 0, "waiting_dropped": 0, "routed_early": 0}
        # PUBSUB_ROUTE frames per peer node: what proves there is no amplification
        self.routed_to: Counter[bytes] = Counter()
        self.routed_from: Counter[bytes] = Counter()
        host.on(Publish, self._on_publish)
        host.on(Subscribe, self._on_subscribe)
        host.on(Unsubscribe, self._on_unsubscribe)
        host.on(PubsubRoute, self._on_route)
        host.on(PubsubFlow, self._on_flow)
        host.watch_peers(self._on_peer)

    # -- from clients ----------------------------------------------------------------
    def _on_subscribe(self, session: Session, msg: Subscribe) -> None:
        if session.peer.role != "client":
            session.send(Error(int(ErrorCode.PROTOCOL_VIOLATION), "SUBSCRIBE is for clients",
                               msg.TYPE, msg.sub_id))
            return
        try:
            self.router.subscribe(session.peer.node_id, msg.sub_id, msg.pattern, msg.group)
        except MaculaError as exc:
            session.send(Error(int(exc.code), exc.message, msg.TYPE, msg.sub_id))
            return
        self.interest.local_changed()

    def _on_unsubscribe(self, session: Session, msg: Unsubscribe) -> None:
        if self.router.unsubscribe(session.peer.node_id, msg.sub_id):
            self.interest.local_changed()

    def _on_publish(self, session: Session, msg: Publish) -> None:
        try:
            self.publish(msg.topic, msg.payload, msg.reply_to, msg.headers, source=session)
        except TopicError as exc:
            session.send(Error(int(exc.code), exc.message, msg.TYPE))

    def _on_flow(self, session: Session, msg: PubsubFlow) -> None:
        """A node we route to is congested (or no longer): pause our outbox toward it."""
        if session.peer.role != "node":
            return
        outbox = self._outboxes.get(session.peer.node_id)
        if outbox is None or outbox.session is not session:
            return
        if msg.paused:
            outbox.pause(min(msg.hold_ms, MAX_PEER_HOLD_MS) / 1000.0)
        else:
            outbox.resume()

    def _on_peer(self, event: PeerEvent) -> None:
        if type(event) is not PeerDown:
            return
        session = event.session
        peer = session.peer
        self.gate.forget(session)
        outbox = self._outboxes.get(peer.node_id)
        if outbox is not None and outbox.session is session:
            del self._outboxes[peer.node_id]
            outbox.close()
            self.stats["dropped"] += outbox.dropped
        if peer.role == "client" and self.router.drop_owner(peer.node_id):
            self.interest.local_changed()

    # -- publishing ------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, reply_to: str | None = None,
                headers: dict | None = None, source: Session | None = None) -> None:
        """Publish from this node (for a client, or the node itself).

        Local subscribers get it at once. Remote nodes get one frame each as soon as the
        topic's remote interest is known; until then the topic's publishes wait, in
        order and bounded, for the lookup, except for the nodes the cluster knows.
        ``source`` (the publishing session) is held back while an outbox it fed is
        congested.
        """
        self.stats["published"] += 1
        interest = self.interest
        plan = self.router.plan(topic)  # raises TopicError first
        waiting = self._waiting.get(topic)
        if waiting is None and interest.ready(topic):
            if not plan.groups and not plan.remote:  # the common case: plain local subscribers
                if plan.local:
                    self._deliver_local(plan.local, topic, payload, reply_to, headers, source)
                return
            route = self.router.route(topic)
            if route.local:
                self._deliver_local(route.local, topic, payload, reply_to, headers, source)
            self._send_remote(route, topic, payload, reply_to, headers, source)
            return
        # the topic's remote interest is being looked up
        if waiting is None:
            waiting = self._waiting[topic] = _Waiting(frozenset(interest.direct_nodes()))
            self.host.spawn(self._resolve(topic))
        settled = _NONE
        if not plan.groups and not plan.remote:
            if plan.local:
                self._deliver_local(plan.local, topic, payload, reply_to, headers, source)
        else:
            route = self.router.route(topic)
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
        queue, budget, limit = waiting.queue, self.budget, self.subscriber_queue_bytes
        queue.append((payload, reply_to, headers, settled, n))
        waiting.bytes += n
        budget.used += n
        while queue and (waiting.bytes > limit or budget.used > budget.limit):
            old = queue.popleft()[4]
            waiting.bytes -= old
            budget.used -= old
            self.stats["waiting_dropped"] += 1
        if waiting.bytes > min(limit // 4, WAITING_HOLD) and source is not None \
                and source not in waiting.held:
            waiting.held.add(source)  # back-pressure: hold the publisher until the answer
            self.gate.acquire(source)

    async def _resolve(self, topic: str) -> None:
        try:
            await self.interest.resolve(topic)
        except Exception as exc:  # unresolved interest: the remote part of these is lost
            log.info("interest lookup for %r failed: %s", topic, exc)
        waiting = self._waiting.pop(topic, None)
        if waiting is None:
            return
        self.budget.used -= waiting.bytes
        for payload, reply_to, headers, settled, _ in waiting.queue:  # in arrival order
            # groups still to serve pick a member per message
            route = self.router.route_rest(topic, waiting.direct, settled)
            if route.local:
                self._deliver_local(route.local, topic, payload, reply_to, headers)
            self._send_remote(route, topic, payload, reply_to, headers)
        for source in waiting.held:  # after: a congested outbox may hold them on
            self.gate.release(source)

    def _deliver_local(self, subs, topic: str, payload: bytes, reply_to, headers,
                       source: Session | None = None) -> None:
        outboxes = self._outboxes
        for sub in subs:
            outbox = outboxes.get(sub.owner)
            if outbox is None:
                session = self.host.pool.get(sub.owner)
                if session is None:
                    continue
                outbox = outboxes[sub.owner] = self._new_outbox(session)
            outbox.put(encode(Deliver(sub.sub_id, topic, payload, reply_to, headers)), source)
        self.stats["delivered"] += len(subs)

    def _new_outbox(self, session: Session) -> Outbox:
        return Outbox(session, self.subscriber_queue_bytes, self.budget, self.gate)

    def _send_remote(self, route: Route, topic: str, payload: bytes, reply_to, headers,
                     source: Session | None = None) -> None:
        """One PUBSUB_ROUTE per remote node (never more: no relaying, no amplification).
        A node without a session gets its frames queued (bounded) while it is dialled."""
        if not route.remote:
            return
        origin = self.host.node_id
        for node_id, (plain, groups) in route.remote.items():
            frame = encode(PubsubRoute(origin, topic, payload, plain, groups, reply_to, headers))
            outbox = self._outbox_for_node(node_id)
            if outbox is not None and not self._out.dialing(node_id):
                outbox.put(frame, source)
            elif not self._out.send(node_id, frame):
                self.stats["dropped"] += 1  # in its backoff, no address, or its queue is full
            self.stats["routed_out"] += 1
            self.routed_to[node_id] += 1

    def _reached(self, session: Session, frames: list) -> None:
        outbox = self._outbox_for_node(session.peer.node_id)
        if outbox is None:  # closed again at once
            self.stats["dropped"] += len(frames)
            return
        for frame in frames:  # in order, before anything newer
            outbox.put(frame)

    def _unreachable(self, node_id: bytes, frames: list) -> None:
        log.debug("cannot reach subscriber node %s", node_id.hex()[:12])
        self.stats["dropped"] += len(frames)

    def _outbox_for_node(self, node_id: bytes) -> Outbox | None:
        outbox = self._outboxes.get(node_id)
        if outbox is not None and outbox.session.state is State.ESTABLISHED:
            return outbox
        session = self.host.pool.get(node_id)
        if session is None:
            return None
        outbox = self._outboxes[node_id] = self._new_outbox(session)
        return outbox

    # -- from other nodes -------------------------------------------------------------
    def _on_route(self, session: Session, msg: PubsubRoute) -> None:
        if session.peer.role != "node":
            return
        self.stats["routed_in"] += 1
        self.routed_from[session.peer.node_id] += 1
        try:
            subs = self.router.local_for_route(msg.topic, msg.plain, msg.groups)
        except TopicError:
            return
        self._deliver_local(subs, msg.topic, msg.payload, msg.reply_to, msg.headers, session)

    def status(self) -> dict[str, Any]:
        dropped = self.stats["dropped"] + sum(o.dropped for o in self._outboxes.values())
        return {**self.stats, "dropped": dropped, "queued_bytes": self.budget.used,
                "flow_pauses": self.gate.pauses, "held_now": len(self.gate),
                "subscriptions": self.router.subscription_count(),
                "remote_nodes": len(self.router.remote_nodes())}
