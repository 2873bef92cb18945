"""Pub/sub on a node (edge): clients' SUBSCRIBE / PUBLISH, routed publishes from other
nodes, delivery into bounded per-client outboxes and in-process subscribers.

Who gets each publish, in which order, and whom to hold is decided by the sans-IO
``PubSubCore`` (pubsub/core.py). This edge checks roles, turns what the core returns
into frames (a client's outbox, a peer node's outbox or the reach path) or into
in-process deliveries (pubsub/local.py), runs the interest lookups the core asks for,
and carries back-pressure: a congested outbox or in-process subscriber holds the
session or in-process publisher that fed it (``FlowGate``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from macula.errors import ErrorCode, MaculaError
from macula.host import PeerDown, PeerEvent
from macula.pubsub.core import Hold, InterestView, NeedInterest, PubSubCore, Release
from macula.pubsub.router import PubSubRouter
from macula.pubsub.topics import TopicError
from macula.transport.outbox import ByteBudget, FlowGate, Outbox
from macula.transport.session import Session, State
from macula.wire import encode
from macula.wire.messages import (
    Deliver, Error, Publish, PubsubFlow, PubsubRoute, Subscribe, Unsubscribe,
)

if TYPE_CHECKING:
    from macula.host import Host
    from macula.pubsub.local import LocalPublisher, LocalSubscription

log = logging.getLogger("macula.pubsub")

MAX_PEER_HOLD_MS = 10_000   # a peer node's PUBSUB_FLOW pause lasts at most this long


class InterestSource(InterestView, Protocol):
    """Tells the router which remote nodes want a topic (DHT or cluster state): what
    the core asks, and the lookup the edge runs for it."""

    async def resolve(self, topic: str) -> None: ...     # learn it (updates the router)


class PubSubService:
    def __init__(self, host: "Host", router: PubSubRouter, interest: InterestSource, *,
                 subscriber_queue_bytes: int, total_queue_bytes: int,
                 publish_hold: float = 1.0) -> None:
        """``router`` holds the subscriptions (``interest`` reads the local ones from it
        and writes the remote ones into it)."""
        self.host = host
        self.loop = host.loop
        self.router = router
        self.interest = interest
        self.subscriber_queue_bytes = subscriber_queue_bytes
        self.budget = ByteBudget(total_queue_bytes)
        # back-pressure: congested outboxes hold back the sessions that fed them
        self.gate = FlowGate(PubsubFlow, publish_hold)
        self.core = PubSubCore(host.node_id, router, interest, self.budget,
                               queue_bytes=subscriber_queue_bytes, hold=publish_hold > 0)
        self.stats = self.core.stats
        self.routed_to = self.core.routed_to
        self.routed_from = self.core.routed_from
        self._outboxes: dict[bytes, Outbox] = {}
        # a subscriber node without a session: dialled by the reach path, frames wait there
        self._out = host.reach.channel("pubsub", self._reached, self._unreachable)
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
            self.core.subscribe(session.peer.node_id, msg.sub_id, msg.pattern, msg.group)
        except MaculaError as exc:
            session.send(Error(int(exc.code), exc.message, msg.TYPE, msg.sub_id))

    def _on_unsubscribe(self, session: Session, msg: Unsubscribe) -> None:
        self.core.unsubscribe(session.peer.node_id, msg.sub_id)

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
        self.core.forget_source(session)
        outbox = self._outboxes.get(peer.node_id)
        if outbox is not None and outbox.session is session:
            del self._outboxes[peer.node_id]
            outbox.close()
            self.stats["dropped"] += outbox.dropped
        if peer.role == "client":
            self.core.drop_owner(peer.node_id)

    # -- in-process subscribers and publishers (apps, the HTTP gateway) ----------------
    def subscribe_local(self, pattern: str, group: str | None = None, *,
                        queue_bytes: int | None = None) -> "LocalSubscription":
        """A subscriber inside this process: bounded like a client's outbox, and holds
        the publishers that flood it the same way. Raises TopicError / Overloaded."""
        from macula.pubsub.local import LocalSubscription  # only nodes that have them

        sub = LocalSubscription(self, queue_bytes or self.subscriber_queue_bytes,
                                self.gate)
        self.core.subscribe(sub, 1, pattern, group)
        return sub

    def unsubscribe_local(self, sub: "LocalSubscription") -> None:
        self.core.drop_owner(sub)
        sub.closed()

    def publisher(self) -> "LocalPublisher":
        """A publisher inside this process, held by back-pressure like a client session."""
        from macula.pubsub.local import LocalPublisher

        return LocalPublisher(self)

    def forget_publisher(self, publisher: "LocalPublisher") -> None:
        self.gate.forget(publisher)
        self.core.forget_source(publisher)

    # -- publishing ------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, reply_to: str | None = None,
                headers: dict | None = None, source: Any = None) -> None:
        """Publish from this node (for a client, an in-process publisher, or the node
        itself); ``source`` is held back while what it fed is congested. Raises
        TopicError."""
        self.core.publish(topic, payload, reply_to, headers, source)
        self._pump()

    def _pump(self) -> None:
        core = self.core
        if core.out:
            self._send_out(core.messages_to_send())
        if core.events:
            self._handle_events()

    def _send_out(self, out: list) -> None:
        outboxes, pool = self._outboxes, self.host.pool
        for dest, msg, source in out:
            if type(msg) is Deliver:
                if type(dest) is bytes:  # a client session of this node
                    outbox = outboxes.get(dest)
                    if outbox is None:
                        session = pool.get(dest)
                        if session is None:
                            continue
                        outbox = outboxes[dest] = self._new_outbox(session)
                    outbox.put(encode(msg), source)
                else:  # an in-process subscriber
                    dest.put(msg, source)
            else:
                self._send_route(dest, msg, source)

    def _handle_events(self) -> None:
        core, gate = self.core, self.gate
        event = core.next_event()
        while event is not None:
            kind = type(event)
            if kind is NeedInterest:
                self.host.spawn(self._resolve(event.topic))
            elif kind is Hold:
                gate.acquire(event.source)
            elif kind is Release:
                gate.release(event.source)
            event = core.next_event()

    async def _resolve(self, topic: str) -> None:
        try:
            await self.interest.resolve(topic)
        except Exception as exc:  # unresolved interest: the remote part of these is lost
            log.info("interest lookup for %r failed: %s", topic, exc)
        self.core.interest_known(topic)
        self._pump()

    def _new_outbox(self, session: Session) -> Outbox:
        return Outbox(session, self.subscriber_queue_bytes, self.budget, self.gate)

    def _send_route(self, node_id: bytes, msg: PubsubRoute, source: Any) -> None:
        """One PUBSUB_ROUTE per remote node (the core never makes more). A node without
        a session gets its frames queued (bounded) while it is dialled."""
        frame = encode(msg)
        outbox = self._outbox_for_node(node_id)
        if outbox is not None and not self._out.dialing(node_id):
            outbox.put(frame, source)
        elif not self._out.send(node_id, frame):
            self.stats["dropped"] += 1  # in its backoff, no address, or its queue is full

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
        self.core.handle_route(session.peer.node_id, msg, session)
        self._pump()

    def status(self) -> dict[str, Any]:
        dropped = self.stats["dropped"] + sum(o.dropped for o in self._outboxes.values())
        return {**self.stats, "dropped": dropped, "queued_bytes": self.budget.used,
                "flow_pauses": self.gate.pauses, "held_now": len(self.gate),
                "subscriptions": self.router.subscription_count(),
                "remote_nodes": len(self.router.remote_nodes())}
