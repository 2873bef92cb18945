"""Pub/sub on a node (edge): clients' SUBSCRIBE / PUBLISH, routed publishes from other
nodes, and delivery into bounded per-client outboxes.

Remote interest comes from an ``InterestSource`` (the DHT, see pubsub/interest.py);
until a topic's remote interest is known, its publishes wait in a bounded per-topic
queue so that order per publisher per topic is kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from macula.errors import ErrorCode, MaculaError
from macula.pubsub.router import LocalSub, PubSubRouter, Route
from macula.pubsub.topics import TopicError
from macula.transport.outbox import Outbox
from macula.transport.session import Session, State
from macula.wire import encode
from macula.wire.messages import Deliver, Error, Publish, PubsubRoute, Subscribe, Unsubscribe

if TYPE_CHECKING:
    from macula.node import Node

log = logging.getLogger("macula.pubsub")


class InterestSource(Protocol):
    """Tells the router which remote nodes want a topic (DHT or cluster state)."""

    def ready(self, topic: str) -> bool: ...            # remote interest for topic is known
    async def resolve(self, topic: str) -> None: ...     # learn it (updates the router)
    def local_changed(self) -> None: ...                 # our subscriptions changed
    async def connect(self, node_id: bytes) -> Session | None: ...


class PubSubService:
    def __init__(self, node: "Node", *, subscriber_queue: int, max_subscriptions: int,
                 max_per_client: int, pending_per_topic: int = 1024) -> None:
        self.node = node
        self.router = PubSubRouter(max_subscriptions=max_subscriptions,
                                   max_per_owner=max_per_client)
        self.subscriber_queue = subscriber_queue
        self.pending_per_topic = pending_per_topic
        self.interest: InterestSource | None = None
        self._outboxes: dict[bytes, Outbox] = {}
        self._waiting: dict[str, deque] = {}   # topic -> publishes waiting for interest
        self.stats = {"published": 0, "delivered": 0, "routed_out": 0, "routed_in": 0,
                      "dropped": 0, "waiting_dropped": 0}

    def attach(self) -> None:
        node = self.node
        node.on(Publish, self._on_publish)
        node.on(Subscribe, self._on_subscribe)
        node.on(Unsubscribe, self._on_unsubscribe)
        node.on(PubsubRoute, self._on_route)
        node.peer_listeners.append(self._on_peer)

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
        if self.interest is not None:
            self.interest.local_changed()

    def _on_unsubscribe(self, session: Session, msg: Unsubscribe) -> None:
        if self.router.unsubscribe(session.peer.node_id, msg.sub_id) and self.interest:
            self.interest.local_changed()

    def _on_publish(self, session: Session, msg: Publish) -> None:
        try:
            self.publish(msg.topic, msg.payload, msg.reply_to, msg.headers)
        except TopicError as exc:
            session.send(Error(int(exc.code), exc.message, msg.TYPE))

    def _on_peer(self, event: str, session: Session) -> None:
        if event != "down":
            return
        peer = session.peer
        outbox = self._outboxes.get(peer.node_id)
        if outbox is not None and outbox.session is session:
            del self._outboxes[peer.node_id]
            outbox.close()
            self.stats["dropped"] += outbox.dropped
        if peer.role == "client" and self.router.drop_owner(peer.node_id) and self.interest:
            self.interest.local_changed()

    # -- publishing ------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, reply_to: str | None = None,
                headers: dict | None = None) -> None:
        """Publish from this node (for a client, or the node itself).

        Local subscribers get it at once. The remote part goes out at once when the
        topic's remote interest is known and every target node has a session; otherwise
        it waits (bounded, in order) for the lookup and the dials.
        """
        self.stats["published"] += 1
        interest = self.interest
        plan = self.router.plan(topic, interest is not None)
        if not plan.groups and not plan.remote:  # the common case: plain local subscribers
            if plan.local:
                self._deliver_local(plan.local, topic, payload, reply_to, headers)
            if interest is None or (interest.ready(topic) and topic not in self._waiting):
                return
            route = Route()  # local part done; the remote part may still be unknown
        else:
            route = self.router.route(topic, include_remote=interest is not None)
            if route.local:
                self._deliver_local(route.local, topic, payload, reply_to, headers)
            if interest is None:
                return
        waiting = self._waiting.get(topic)
        if waiting is None and interest.ready(topic) and self._all_connected(route):
            self._send_remote(route, topic, payload, reply_to, headers)
            return
        if waiting is None:
            waiting = self._waiting[topic] = deque(maxlen=self.pending_per_topic)
            asyncio.get_running_loop().create_task(self._resolve(topic))
        if len(waiting) == waiting.maxlen:
            self.stats["waiting_dropped"] += 1
        waiting.append((payload, reply_to, headers))

    def _all_connected(self, route: Route) -> bool:
        get = self.node.pool.get
        return all(get(n) is not None for n in route.remote)

    async def _resolve(self, topic: str) -> None:
        interest = self.interest
        try:
            if not interest.ready(topic):
                await interest.resolve(topic)
            route = self.router.route(topic)
            for node_id in route.remote:
                if self.node.pool.get(node_id) is None:
                    try:
                        await interest.connect(node_id)
                    except Exception as exc:
                        log.debug("cannot reach subscriber node %s: %s", node_id.hex()[:12], exc)
        except Exception as exc:  # unresolved interest: the remote part of these is lost
            log.info("interest lookup for %r failed: %s", topic, exc)
        waiting = self._waiting.pop(topic, deque())
        # recompute: interest may have changed while we waited; publish in arrival order
        route = Route(remote=self.router.route(topic).remote)
        for payload, reply_to, headers in waiting:
            self._send_remote(route, topic, payload, reply_to, headers)

    def _deliver_local(self, subs, topic: str, payload: bytes, reply_to, headers) -> None:
        outboxes = self._outboxes
        for sub in subs:
            outbox = outboxes.get(sub.owner)
            if outbox is None:
                session = self.node.pool.get(sub.owner)
                if session is None:
                    continue
                outbox = outboxes[sub.owner] = Outbox(session, self.subscriber_queue)
            outbox.put(encode(Deliver(sub.sub_id, topic, payload, reply_to, headers)))
        self.stats["delivered"] += len(subs)

    def _send_remote(self, route: Route, topic: str, payload: bytes, reply_to, headers) -> None:
        """One PUBSUB_ROUTE per remote node (never more: no relaying, no amplification)."""
        origin = self.node.node_id
        for node_id, (plain, groups) in route.remote.items():
            outbox = self._outbox_for_node(node_id)
            if outbox is None:
                continue
            outbox.put(encode(PubsubRoute(origin, topic, payload, plain, groups, reply_to,
                                          headers)))
            self.stats["routed_out"] += 1

    def _outbox_for_node(self, node_id: bytes) -> Outbox | None:
        outbox = self._outboxes.get(node_id)
        if outbox is not None and outbox.session.state is State.ESTABLISHED:
            return outbox
        session = self.node.pool.get(node_id)
        if session is None:
            return None
        outbox = self._outboxes[node_id] = Outbox(session, self.subscriber_queue)
        return outbox

    # -- from other nodes -------------------------------------------------------------
    def _on_route(self, session: Session, msg: PubsubRoute) -> None:
        if session.peer.role != "node":
            return
        self.stats["routed_in"] += 1
        try:
            subs = self.router.local_for_route(msg.topic, msg.plain, msg.groups)
        except TopicError:
            return
        self._deliver_local(subs, msg.topic, msg.payload, msg.reply_to, msg.headers)

    def status(self) -> dict[str, Any]:
        dropped = self.stats["dropped"] + sum(o.dropped for o in self._outboxes.values())
        return {**self.stats, "dropped": dropped,
                "subscriptions": self.router.subscription_count(),
                "remote_nodes": len(self.router.remote_nodes())}
