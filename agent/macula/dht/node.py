"""The Kademlia core, sans-IO: fed messages and the time, it returns messages and events.

Shape (shared by every core, docs/ARCHITECTURE.md)::

    handle_message(sender, msg, now)   sender: Contact of a DHT server, or the bare
                                       node ID of a client-mode peer (never routed to)
    handle_timer(now); get_timer()     RPC timeouts, maintenance tick, republish
    messages_to_send()                 [(Contact | node ID, msg)], drained
    next_event()                       LookupDone | ValueFound | StoreDone | None
    peer_connected / peer_disconnected / handle_unreachable   hints from the edge

Everything that grows is bounded by ``DhtConfig``: operations (``max_ops``; an app
call at the bound raises Overloaded, maintenance waits for the next tick), pending
RPCs (an op lives until its last request is answered or timed out, with at most
alpha + k in flight; plus one ping per bucket: at most max_ops * (alpha + k) + 256),
records (``RecordStore``), own published records (``max_published``) and undrained
events (``max_events``, oldest dropped, counted).
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any, Iterable

from macula.dht.config import RECORD_OVERHEAD, DhtConfig
from macula.dht.events import Event, LookupDone, StoreDone, ValueFound
from macula.dht.ids import ID_BYTES, Contact, to_int
from macula.dht.lookup import Lookup
from macula.dht.routing import RoutingTable
from macula.dht.storage import Record, RecordStore
from macula.errors import ErrorCode, Overloaded
from macula.wire.messages import (
    DHT_RECORDS_MAX, DHT_VALUE_MAX, DhtPing, DhtPong, FindNode, FindNodeReply, FindValue,
    FindValueReply, MsgType, Store, StoreReply,
)

# operation kinds and stages; RPC kinds
FIND_NODE, FIND_VALUE, STORE, BOOTSTRAP, REFRESH = range(5)
LOOKING, STORING, DONE = range(3)
QUERY, STORE_RPC, PING = range(3)


class _Op:
    __slots__ = ("op_id", "kind", "app", "lookup", "records", "found", "holders", "stage",
                 "outstanding", "waiting", "stored", "refused")

    def __init__(self, op_id: int, kind: int, app: bool, lookup: Lookup,
                 records: list[Record] | None) -> None:
        self.op_id = op_id
        self.kind = kind
        self.app = app                        # report an event when done
        self.lookup = lookup
        self.records = records                # what a STORE op stores after its lookup
        self.found: dict[bytes, Record] = {}  # FIND_VALUE: best copy per publisher
        self.holders = 0
        self.stage = LOOKING
        self.outstanding = 0                  # RPCs of this op in flight (any stage)
        self.waiting = 0                      # STOREs not answered yet
        self.stored = 0
        self.refused = 0


class _Published:
    __slots__ = ("value", "ttl", "expires", "due")

    def __init__(self, value: bytes, ttl: float, now: float, ratio: float) -> None:
        self.value = value
        self.ttl = ttl
        self.expires = now + ttl
        self.due = now + ttl * ratio


class DhtNode:
    def __init__(self, node_id: bytes, config: DhtConfig | None = None, *,
                 rng: random.Random, now: float = 0.0, client: bool = False) -> None:
        """``client``: look up and publish, but hold nothing for others. Tell peers
        (CONNECT caps ``CLIENT_CAP``) so they keep this node out of their tables."""
        if len(node_id) != ID_BYTES:
            raise ValueError("node_id must be 32 bytes")
        cfg = self.config = config or DhtConfig()
        self.node_id = node_id
        self.client = client
        self._rng = rng
        self.table = RoutingTable(node_id, cfg.k, now, cfg.probe_after)
        self.records = RecordStore(cfg.max_records, cfg.max_records_per_publisher,
                                 cfg.max_bytes_per_publisher, cfg.max_ttl)
        self._pending: dict[int, tuple[bytes, _Op | None, int]] = {}  # req -> node, op, kind
        self._deadlines: deque[tuple[float, int]] = deque()   # in send order = deadline order
        self._next_req = 1
        self._ops: dict[int, _Op] = {}
        self._next_op = 1
        self._published: dict[bytes, _Published] = {}
        self._next_republish = float("inf")
        self._out: list[tuple[Any, Any]] = []
        self._events: deque[Event] = deque()
        self.events_dropped = 0
        self.rpc_failures = 0
        # ticks start at a random phase so that nodes started together do not all
        # refresh and replicate at the same moment
        self._next_tick = now + cfg.maintenance_interval * (0.5 + rng.random() / 2)
        self._handlers = {
            MsgType.FIND_NODE: self._on_find_node,
            MsgType.FIND_VALUE: self._on_find_value,
            MsgType.STORE: self._on_store,
            MsgType.DHT_PING: self._on_ping,
            MsgType.FIND_NODE_REPLY: self._on_query_reply,
            MsgType.FIND_VALUE_REPLY: self._on_query_reply,
            MsgType.STORE_REPLY: self._on_store_reply,
            MsgType.DHT_PONG: self._on_pong,
        }

    # ---- the core shape -----------------------------------------------------------
    def handle_message(self, sender: Contact | bytes, msg: Any, now: float) -> None:
        if type(sender) is bytes:
            sid = sender
        else:
            sid = sender[0]
            if sid != self.node_id:
                self._seen(sender, now)
        handler = self._handlers.get(msg.TYPE)
        if handler is not None and sid != self.node_id:
            handler(sender, sid, msg, now)

    def handle_timer(self, now: float) -> None:
        dq, pending = self._deadlines, self._pending
        while dq and dq[0][0] <= now:
            entry = pending.pop(dq.popleft()[1], None)
            if entry is not None:
                self._failed(entry, now, timed_out=True)
        if now >= self._next_tick:
            self._next_tick = now + self.config.maintenance_interval
            self._maintain(now)
        if now >= self._next_republish:
            self._republish(now)

    def get_timer(self) -> float:
        dq, pending = self._deadlines, self._pending
        while dq and dq[0][1] not in pending:
            dq.popleft()
        t = self._next_tick
        if dq and dq[0][0] < t:
            t = dq[0][0]
        return min(t, self._next_republish)

    def messages_to_send(self) -> list[tuple[Any, Any]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def peer_connected(self, node_id: bytes, addr: tuple[str, int] | None, now: float,
                       client: bool = False) -> None:
        """A session came up. A DHT server with a listen address is a live contact."""
        if addr is not None and not client and node_id != self.node_id:
            self._seen(Contact(node_id, addr[0], addr[1]), now)

    def peer_disconnected(self, node_id: bytes, now: float) -> None:
        """A session closed: requests still waiting on it will not be answered."""
        self._fail_pending(node_id, now)

    def handle_unreachable(self, node_id: bytes, now: float) -> None:
        """The edge could not reach the node: fail its requests, forget it."""
        self._fail_pending(node_id, now)
        self.table.remove(node_id)

    # ---- operations started by the application ------------------------------------
    def bootstrap(self, contacts: Iterable[tuple], now: float) -> int:
        """Join through ``contacts`` (seeds; may be empty when the seeds are already
        connected peers): look up the own ID, then refresh the buckets it left thin.
        Reports LookupDone; with nobody to ask the node simply runs alone."""
        seeds = [Contact(*c) for c in contacts]
        return self._start(BOOTSTRAP, self.node_id, True, now, seeds=seeds).op_id

    def lookup_node(self, target: bytes, now: float) -> int:
        return self._start(FIND_NODE, _check_key(target), True, now).op_id

    def find_value(self, key: bytes, now: float) -> int:
        return self._start(FIND_VALUE, _check_key(key), True, now).op_id

    def store(self, key: bytes, value: bytes, ttl: int, now: float) -> int:
        """Publish ``value`` under ``key`` as this node's record to the k closest nodes,
        and republish it before every expiry until ``withdraw``. Reports StoreDone."""
        _check_key(key)
        if len(value) > DHT_VALUE_MAX:
            raise ValueError(f"value of {len(value)} bytes > {DHT_VALUE_MAX}")
        if not 0 < ttl <= self.config.max_ttl:
            raise ValueError(f"ttl must be in (0, {self.config.max_ttl}]")
        if key not in self._published and len(self._published) >= self.config.max_published:
            raise Overloaded(f"{len(self._published)} records published (max_published)")
        self._room(app=True)
        pub = self._published[key] = _Published(value, ttl, now, self.config.republish_ratio)
        self._next_republish = min(self._next_republish, pub.due)
        return self._start(STORE, key, True, now,
                           records=[Record(self.node_id, value, pub.expires)]).op_id

    def withdraw(self, key: bytes, now: float) -> int:
        """Stop republishing this node's record under ``key`` and delete it from the
        k closest nodes (a STORE with ttl 0). Reports StoreDone."""
        _check_key(key)
        self._room(app=True)
        if self._published.pop(key, None) is not None:
            self._next_republish = min((p.due for p in self._published.values()),
                                       default=float("inf"))
        self.records.put(key, self.node_id, b"", 0, now, True)
        return self._start(STORE, key, True, now,
                           records=[Record(self.node_id, b"", now)]).op_id

    def stats(self) -> dict[str, Any]:
        return {
            "contacts": len(self.table),
            "buckets": [len(b.contacts) for b in self.table.buckets],
            "records": len(self.records),
            "published": len(self._published),
            "ops": len(self._ops),
            "pending_rpcs": len(self._pending),
            "rpc_failures": self.rpc_failures,
            "events_dropped": self.events_dropped,
        }

    # ---- operations -----------------------------------------------------------------
    def _room(self, app: bool) -> bool:
        """Maintenance may use half of max_ops, so it never starves the application."""
        limit = self.config.max_ops if app else self.config.max_ops // 2
        if len(self._ops) < limit:
            return True
        if app:
            raise Overloaded(f"{len(self._ops)} DHT operations running (max_ops)")
        return False

    def _start(self, kind: int, target: bytes, app: bool, now: float,
               records: list[Record] | None = None, seeds: list[Contact] = ()) -> _Op:
        if app:
            self._room(app=True)
        cfg = self.config
        lookup = Lookup(target, self.node_id, cfg.k, cfg.alpha, 3 * cfg.k, cfg.lookup_retries)
        lookup.add(self.table.closest(target, cfg.k), 1)
        lookup.add(seeds, 1)
        self.table.touch(target, now)
        op = _Op(self._next_op, kind, app, lookup, records)
        self._next_op += 1
        if kind == FIND_VALUE:
            for r in self.records.get(target, now):
                op.found[r.publisher] = r
            if op.found:
                op.holders = 1
            own = self._published.get(target)
            if own is not None:
                op.found[self.node_id] = Record(self.node_id, own.value, own.expires)
        self._ops[op.op_id] = op
        self._advance(op, now)
        return op

    def _advance(self, op: _Op, now: float) -> None:
        if op.stage == LOOKING:
            lookup = op.lookup
            target = lookup.target
            for c in lookup.next_queries():
                req = self._track(c[0], op, QUERY, now)
                self._out.append((c, FindValue(req, target) if op.kind == FIND_VALUE
                                  else FindNode(req, target)))
            if lookup.finished:
                self._looked_up(op, now)
        if op.stage == STORING and op.waiting == 0:
            op.stage = DONE
            if op.app:
                self._emit(StoreDone(op.op_id, op.lookup.target, op.stored, op.refused))
        if op.stage == DONE and op.outstanding == 0:
            self._ops.pop(op.op_id, None)

    def _looked_up(self, op: _Op, now: float) -> None:
        lookup = op.lookup
        kind = op.kind
        op.stage = DONE
        if kind == STORE:
            op.stage = STORING
            self._send_stores(op, lookup.closest(), now)
        elif kind == FIND_VALUE:
            records = tuple(r for r in op.found.values() if r.expires > now)
            self._emit(ValueFound(op.op_id, lookup.target, records, lookup.rounds,
                                  lookup.sent + lookup.replies))
        elif op.app:
            self._emit(LookupDone(op.op_id, lookup.target, tuple(lookup.closest()),
                                  lookup.rounds, lookup.sent + lookup.replies))
        if kind == BOOTSTRAP:
            self._refresh_thin_buckets(now)

    def _send_stores(self, op: _Op, targets: list[Contact], now: float) -> None:
        key = op.lookup.target
        own = self.node_id
        # a replica close to expiry is not worth sending; a withdrawal (ttl 0) is
        wire = tuple((r.publisher, r.value, max(0, int(r.expires - now))) for r in op.records
                     if r.publisher == own or r.expires - now >= 1)
        if not wire:
            return
        k = self.config.k
        if not self.client and (len(targets) < k or
                                to_int(own) ^ to_int(key) < to_int(targets[-1][0]) ^ to_int(key)):
            # this node is one of the k closest: it keeps a copy and k - 1 others do
            del targets[k - 1:]
            refused = [c for p, v, ttl in wire
                       if (c := self.records.put(key, p, v, ttl, now, p == own)) is not None]
            if refused:
                op.refused += 1
            else:
                op.stored += 1
        for c in targets:
            self._out.append((c, Store(self._track(c[0], op, STORE_RPC, now), key, wire)))
            op.waiting += 1

    def _refresh_thin_buckets(self, now: float) -> None:
        buckets = self.table.buckets
        for i in range(len(buckets) - 1):    # the own-ID lookup just filled the last one
            if len(buckets[i].contacts) < self.config.k:
                if not self._room(app=False):
                    return
                self._start(REFRESH, self.table.random_id(i, self._rng), False, now)

    def _maintain(self, now: float) -> None:
        cfg = self.config
        self.records.sweep(now)
        for i in self.table.stale(now, cfg.refresh_interval):
            if not self._room(app=False):
                return
            self._start(REFRESH, self.table.random_id(i, self._rng), False, now)
        for key in self.records.due(now, cfg.replicate_interval):
            if not self._room(app=False):
                return
            self.records.mark_replicated(key, now)
            for chunk in _split(self.records.get(key, now), self.config.max_message_bytes):
                self._start(STORE, key, False, now, records=chunk)

    def _republish(self, now: float) -> None:
        for key, pub in self._published.items():
            if pub.due > now:
                continue
            if self._room(app=False):
                pub.expires = now + pub.ttl
                pub.due = now + pub.ttl * self.config.republish_ratio
                self._start(STORE, key, False, now,
                            records=[Record(self.node_id, pub.value, pub.expires)])
            else:
                pub.due = now + self.config.rpc_timeout   # the margin before expiry allows it
        self._next_republish = min((p.due for p in self._published.values()),
                                   default=float("inf"))

    def _emit(self, event: Event) -> None:
        if len(self._events) >= self.config.max_events:
            self._events.popleft()
            self.events_dropped += 1
        self._events.append(event)

    # ---- RPC bookkeeping --------------------------------------------------------------
    def _track(self, node_id: bytes, op: _Op | None, kind: int, now: float) -> int:
        req = self._next_req
        self._next_req = req + 1
        self._pending[req] = (node_id, op, kind)
        self._deadlines.append((now + self.config.rpc_timeout, req))
        if op is not None:
            op.outstanding += 1
        return req

    def _take(self, req: int, sid: bytes, kind: int) -> tuple | None:
        """The pending request this reply answers, if it came from the node asked."""
        entry = self._pending.get(req)
        if entry is None or entry[0] != sid or entry[2] != kind:
            return None
        del self._pending[req]
        return entry

    def _failed(self, entry: tuple, now: float, timed_out: bool) -> None:
        """Timeout or unreachable: the node leaves the table (a replacement moves in;
        the node comes back when it is heard from again)."""
        node_id, op, kind = entry
        self.rpc_failures += 1
        self.table.remove(node_id)
        if op is None:
            return
        op.outstanding -= 1
        if kind == QUERY:
            op.lookup.on_fail(node_id, timed_out)
        else:
            op.waiting -= 1
        self._advance(op, now)

    def _fail_pending(self, node_id: bytes, now: float) -> None:
        for req in [r for r, e in self._pending.items() if e[0] == node_id]:
            entry = self._pending.pop(req, None)
            if entry is not None:
                self._failed(entry, now, timed_out=False)

    def _seen(self, sender: tuple, now: float) -> None:
        if type(sender) is not Contact:
            sender = Contact(*sender)
        oldest = self.table.seen(sender, now)
        if oldest is not None:
            self._out.append((oldest, DhtPing(self._track(oldest[0], None, PING, now))))

    # ---- handlers -----------------------------------------------------------------------
    def _on_find_node(self, sender: Any, sid: bytes, msg: FindNode, now: float) -> None:
        nodes = tuple(self.table.closest(msg.target, self.config.k, sid))
        self._out.append((sender, FindNodeReply(msg.req_id, nodes)))

    def _on_find_value(self, sender: Any, sid: bytes, msg: FindValue, now: float) -> None:
        wire = [(r.publisher, r.value, ttl) for r in self.records.get(msg.key, now)
                if (ttl := int(r.expires - now)) > 0]
        chunks = _split(wire, self.config.max_message_bytes)
        if len(chunks) > 1:   # too many to send: a random subset, so every provider gets a share
            chunks = _split(self._rng.sample(wire, len(wire)), self.config.max_message_bytes)
        nodes = tuple(self.table.closest(msg.key, self.config.k, sid))
        self._out.append((sender, FindValueReply(msg.req_id, tuple(chunks[0]) if chunks else (),
                                                 nodes)))

    def _on_store(self, sender: Any, sid: bytes, msg: Store, now: float) -> None:
        if self.client:
            self._out.append((sender, StoreReply(msg.req_id, False, int(ErrorCode.STORE_REFUSED))))
            return
        code = None
        for publisher, value, ttl in msg.records:
            refused = self.records.put(msg.key, publisher, value, ttl, now, publisher == sid)
            code = code or refused
        self._out.append((sender, StoreReply(msg.req_id, code is None,
                                             None if code is None else int(code))))

    def _on_ping(self, sender: Any, sid: bytes, msg: DhtPing, now: float) -> None:
        self._out.append((sender, DhtPong(msg.req_id)))

    def _on_query_reply(self, sender: Any, sid: bytes, msg: Any, now: float) -> None:
        entry = self._take(msg.req_id, sid, QUERY)
        if entry is None:
            return
        op = entry[1]
        op.outstanding -= 1
        if op.stage == LOOKING and msg.TYPE == MsgType.FIND_VALUE_REPLY and msg.records:
            found = op.found
            for publisher, value, ttl in msg.records:
                expires = now + ttl
                have = found.get(publisher)
                if ttl > 0 and (have is None or expires > have.expires):
                    found[publisher] = Record(publisher, value, expires)
            op.holders += 1
            if op.holders >= self.config.value_quorum:
                op.lookup.finished = True
        op.lookup.on_reply(sid, msg.nodes)
        self._advance(op, now)

    def _on_store_reply(self, sender: Any, sid: bytes, msg: StoreReply, now: float) -> None:
        entry = self._take(msg.req_id, sid, STORE_RPC)
        if entry is None:
            return
        op = entry[1]
        op.outstanding -= 1
        op.waiting -= 1
        if msg.ok:
            op.stored += 1
        else:
            op.refused += 1
        self._advance(op, now)

    def _on_pong(self, sender: Any, sid: bytes, msg: DhtPong, now: float) -> None:
        # handle_message already moved a server to the tail of its bucket; a node that
        # answers as a client has left server mode and leaves the table
        if self._take(msg.req_id, sid, PING) is not None and type(sender) is bytes:
            self.table.remove(sid)


def _split(records: list, max_bytes: int) -> list[list]:
    """Records (value at index 1) in chunks that fit one message."""
    chunks: list[list] = []
    size = max_bytes            # as if a chunk were full: the first record opens one
    for r in records:
        n = len(r[1]) + RECORD_OVERHEAD
        if size + n > max_bytes or len(chunks[-1]) == DHT_RECORDS_MAX:
            chunks.append([])
            size = 0
        chunks[-1].append(r)
        size += n
    return chunks


def _check_key(key: bytes) -> bytes:
    if type(key) is not bytes or len(key) != ID_BYTES:
        raise ValueError("a DHT key is 32 bytes")
    return key
