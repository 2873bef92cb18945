"""Gossip of named delta-state CRDT replicas (sans-IO).

Three mechanisms, from fast and cheap to slow and thorough:

1. Deltas. A local change becomes log entries (split to fit a message) tagged with
   fresh delta ids (this replica, n). They go out after a short debounce, and again
   every ``interval``, to ``fanout`` random peers that still lack them. A peer that
   merges something new logs it in turn, so a change spreads epidemically.
2. Acks and version vectors. A PUSH is acked with the receiver's version vector over
   delta ids; the sender then knows which entries that peer has, from it or from
   anyone. An entry is dropped once every connected peer has it (causal stability);
   a peer that disconnects no longer holds entries back. When the log outgrows its
   byte bound, the oldest entries go and any peer that still lacked one is sent the
   full state instead.
3. Digests. On connect each side pulls what differs; every ``anti_entropy_interval``
   one random peer gets our per-name digests and both sides exchange whole states
   for the names that differ (split into pieces, each piece a valid state). What a
   whole state brings that was new here (for causal types exactly that part, see
   ``news``) is logged and pushed on like any delta.
"""

from __future__ import annotations

import random
import re
from collections import deque
from typing import Any, Callable

from macula.crdt import DotContext, digest, packed_len
from macula.crdt.wire import chunks
from macula.errors import ErrorCode, ProtocolError, StateError
from macula.gossip.events import GossipStats, InputRejected, ReplicaChanged
from macula.gossip.log import DeltaLog, Entry
from macula.wire.messages import (
    GOSSIP_MAX_ITEMS, GOSSIP_MAX_NAMES, NAME_PATTERN, GossipAck, GossipDigest, GossipPull,
    GossipPush, GossipState,
)

MIN_MESSAGE_BYTES = 10 * 1024   # a register value (8 KiB) plus ids and headers must fit
_NAME = re.compile(NAME_PATTERN)
_HEADROOM = 64                  # frame header, message array, seq, flags

Event = ReplicaChanged | InputRejected


class _Peer:
    __slots__ = ("known", "inflight", "in_flight_keys", "needs_full", "full_seq", "full_deadline")

    def __init__(self) -> None:
        self.known = DotContext()                       # delta ids it is known to have
        self.inflight: dict[int, tuple[list[int], float]] = {}   # push seq -> (keys, deadline)
        self.in_flight_keys: set[int] = set()
        self.needs_full = False
        self.full_seq: int | None = None
        self.full_deadline = 0.0

    def lacks(self, entry: Entry) -> bool:
        if entry.key in self.in_flight_keys:
            return False
        return not entry.held_by(self.known)


class GossipCore:
    def __init__(self, replica_id: bytes, rng: random.Random, *, interval: float = 1.0,
                 fanout: int = 3, debounce: float = 0.03, anti_entropy_interval: float = 30.0,
                 ack_timeout: float = 3.0, max_message_bytes: int = 64 * 1024,
                 max_log_bytes: int = 1 << 20, max_names: int = 64, max_peers: int = 256,
                 max_events: int = 1024) -> None:
        """``replica_id`` names this replica in dots and delta ids. It must never be
        reused by a replica that starts from an empty state (use node ID + boot epoch):
        peers would take its new writes for old ones they have already seen."""
        if not 1 <= len(replica_id) <= 64:
            raise StateError("replica_id must be 1..64 bytes")
        if interval <= 0 or debounce < 0 or anti_entropy_interval <= 0 or ack_timeout <= 0:
            raise StateError("intervals must be positive")
        if fanout < 1:
            raise StateError("fanout must be >= 1")
        if max_message_bytes < MIN_MESSAGE_BYTES:
            raise StateError(f"max_message_bytes must be >= {MIN_MESSAGE_BYTES}")
        if max_log_bytes < max_message_bytes:
            raise StateError("max_log_bytes must be >= max_message_bytes")
        if not 1 <= max_names <= GOSSIP_MAX_NAMES:
            raise StateError(f"max_names must be in 1..{GOSSIP_MAX_NAMES}")
        self.replica_id = replica_id
        self.interval = interval
        self.fanout = fanout
        self.debounce = debounce
        self.anti_entropy_interval = anti_entropy_interval
        self.ack_timeout = ack_timeout
        self.max_message_bytes = max_message_bytes
        self.max_names = max_names
        self.max_peers = max_peers
        self.stats = GossipStats()
        self._rng = rng
        # a delta piece leaves room for its ids and for the sender's version vector
        self._piece_bytes = max_message_bytes // 2
        self._replicas: dict[str, Any] = {}
        self._seen = DotContext()                # delta ids merged here
        self._log = DeltaLog(max_log_bytes)
        self._peers: dict[bytes, _Peer] = {}
        self._out: list[tuple[bytes, Any]] = []
        self._changed: dict[str, None] = {}       # ordered set of names with news
        self._rejections: deque[InputRejected] = deque()
        self._max_events = max_events
        self._seq = 0
        self._next_round: float | None = None
        self._next_anti_entropy = 0.0
        self._flush_at: float | None = None

    # ---- the application's side -------------------------------------------------------
    def register(self, name: str, replica: Any) -> None:
        """Hold ``replica`` (an empty CRDT, or one restored locally) under ``name``.
        Peers must register the same name with the same type; other names are ignored."""
        if type(name) is not str or not _NAME.fullmatch(name):
            raise StateError(f"gossip name {name!r:.40} must match {NAME_PATTERN}")
        if name in self._replicas:
            raise StateError(f"{name!r} is already registered")
        if len(self._replicas) >= self.max_names:
            raise StateError(f"at most {self.max_names} names")
        self._replicas[name] = replica

    def replica(self, name: str) -> Any:
        """The replica held under ``name``: read it, change it only through ``update``."""
        try:
            return self._replicas[name]
        except KeyError:
            raise StateError(f"{name!r} is not registered") from None

    def update(self, name: str, mutate: Callable[[Any], Any], now: float) -> Any:
        """Run ``mutate(replica)`` (a CRDT mutator, returning its delta) and gossip the
        delta, e.g. ``core.update("services", lambda s: s.add(rid, "api"), now)``."""
        replica = self.replica(name)
        self._start(now)
        delta = mutate(replica)
        for piece in delta.split(self._piece_bytes):
            ids = DotContext()
            ids.add(self._seen.next_dot(self.replica_id))
            self._append(ids, name, piece.to_wire())
        self._flush_soon(now)
        return delta

    def peers(self) -> list[bytes]:
        return list(self._peers)

    def log_size(self) -> tuple[int, int]:
        """(entries, bytes) in the delta log."""
        return len(self._log), self._log.bytes

    # ---- the core shape ---------------------------------------------------------------
    def peer_connected(self, node_id: bytes, addr: Any, now: float, exchange: str = "pull") -> None:
        """Gossip with ``node_id`` from now on, and start with ``exchange``:

        - "pull": ask for the states that differ (a session came up: both sides do it);
        - "both": send our digests as anti-entropy does, so each side pulls what only
          the other has (a link only this side knows of, to a peer that may be far
          behind or ahead, e.g. back from a partition);
        - "none": an empty PUSH that tells the peer we gossip with it; its ACK says
          what it has. For peers that membership introduced: pulling from every one
          while a large cluster forms would move whole states many times over.
        """
        self._start(now)
        if node_id not in self._peers and len(self._peers) >= self.max_peers:
            self.stats.peers_refused += 1
            return
        self._peers[node_id] = _Peer()
        if exchange == "none":
            self._send(node_id, GossipPush(self._next_seq(), (), self._known_wire()))
        elif self._replicas:
            digests = self._digest_list(self._replicas)
            self._send(node_id, GossipDigest(digests) if exchange == "both" else GossipPull(digests))

    def peer_disconnected(self, node_id: bytes, now: float) -> None:
        if self._peers.pop(node_id, None) is not None:
            self._collect()   # it no longer holds entries back

    def handle_message(self, sender: bytes, msg: Any, now: float) -> None:
        self._start(now)
        handler = self._HANDLERS.get(type(msg))
        if handler is None:
            return
        try:
            handler(self, sender, msg, now)
        except ProtocolError as exc:
            self._reject(sender, exc)

    def handle_timer(self, now: float) -> None:
        self._start(now)
        assert self._next_round is not None
        if self._flush_at is not None and now >= self._flush_at:
            self._flush_at = None
            self._push_round(now)
        if now >= self._next_round:
            self._next_round = now + self.interval
            self._expire(now)
            self._collect()
            self._push_round(now)
        if now >= self._next_anti_entropy:
            self._next_anti_entropy = now + self.anti_entropy_interval
            if self._peers and self._replicas:
                peer = self._rng.choice(list(self._peers))
                self._send(peer, GossipDigest(self._digest_list(self._replicas)))

    def get_timer(self) -> float | None:
        if self._next_round is None:
            return None
        t = min(self._next_round, self._next_anti_entropy)
        return t if self._flush_at is None else min(t, self._flush_at)

    def messages_to_send(self) -> list[tuple[bytes, Any]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        if self._changed:
            name = next(iter(self._changed))
            del self._changed[name]
            return ReplicaChanged(name)
        return self._rejections.popleft() if self._rejections else None

    # ---- incoming ---------------------------------------------------------------------
    def _on_push(self, sender: bytes, msg: GossipPush, now: float) -> None:
        peer = self._peers.get(sender)
        try:
            entries = [(self._entry_ids(item[0]), item[1], item) for item in msg.entries]
            known = DotContext.from_wire(msg.known)
        except ProtocolError:
            # acked even when refused: resending bad data would not make it good
            self._send(sender, GossipAck(msg.seq, self._known_wire()))
            raise
        forwarded = False
        for ids, name, item in entries:
            if peer is not None:
                peer.known.join(ids)
            if ids.issubset(self._seen):
                continue            # a duplicate: not even decoded
            replica = self._replicas.get(name)
            if replica is not None:
                try:
                    state = type(replica).from_wire(item[2])
                except ProtocolError as exc:
                    self._reject(sender, exc)
                    continue
                if self._merge(sender, name, state):
                    if packed_len(item) <= self._piece_bytes:
                        self._append(ids, name, item[2])
                        forwarded = True
                    else:
                        self.stats.oversize_dropped += 1
            self._seen.join(ids)
        if peer is not None:
            peer.known.join(known)
        self._send(sender, GossipAck(msg.seq, self._known_wire()))
        if forwarded:
            self._flush_soon(now)

    def _on_ack(self, sender: bytes, msg: GossipAck, now: float) -> None:
        peer = self._peers.get(sender)
        if peer is None:
            return
        peer.known.join(DotContext.from_wire(msg.known))
        keys, _ = peer.inflight.pop(msg.seq, ((), 0.0))
        for key in keys:
            peer.in_flight_keys.discard(key)
            entry = self._log.get(key)
            if entry is not None:
                peer.known.join(entry.ids)
                self._collect_entry(entry)
        if peer.full_seq == msg.seq:
            peer.needs_full, peer.full_seq = False, None

    def _on_pull(self, sender: bytes, msg: GossipPull, now: float) -> None:
        self._send_state(sender, self._differing(msg.digests))

    def _on_digest(self, sender: bytes, msg: GossipDigest, now: float) -> None:
        names = self._differing(msg.digests)
        self._send_state(sender, names)
        if names:  # our pieces arrive first, so the peer answers with only what we lack
            self._send(sender, GossipPull(self._digest_list(names)))

    def _on_state(self, sender: bytes, msg: GossipState, now: float) -> None:
        pieces = []
        for name, wire in msg.pieces:
            replica = self._replicas.get(name)
            if replica is not None:
                pieces.append((name, type(replica).from_wire(wire)))
        claim = DotContext.from_wire(msg.known) if msg.last else None
        forwarded = False
        for name, state in pieces:
            # what a whole state taught us is passed on as a delta, like pushed news;
            # a peer that linked to us before we got it would otherwise never see it
            try:
                news = self._replicas[name].news(state) if hasattr(state, "news") else state
            except ProtocolError as exc:
                self._reject(sender, exc)
                continue
            if self._merge(sender, name, state) and not news.is_bottom():
                for piece in news.split(self._piece_bytes):
                    ids = DotContext()
                    ids.add(self._seen.next_dot(self.replica_id))
                    self._append(ids, name, piece.to_wire())
                forwarded = True
        if forwarded:
            self._flush_soon(now)
        if claim is not None:
            # all pieces are in: we now hold everything the sender had merged
            self._seen.join(claim)
            peer = self._peers.get(sender)
            if peer is not None:
                peer.known.join(claim)
            self._send(sender, GossipAck(msg.seq, self._known_wire()))

    _HANDLERS: dict[type, Callable] = {
        GossipPush: _on_push, GossipAck: _on_ack, GossipPull: _on_pull,
        GossipDigest: _on_digest, GossipState: _on_state,
    }

    @staticmethod
    def _entry_ids(wire: Any) -> DotContext:
        ids = DotContext.from_wire(wire)
        if not ids:
            raise ProtocolError("gossip entry without delta ids", code=ErrorCode.BAD_FIELD)
        return ids

    def _merge(self, sender: bytes, name: str, state: Any) -> bool:
        try:
            if not self._replicas[name].merge(state):
                return False
        except ProtocolError as exc:   # e.g. a map of another value type under this name
            self._reject(sender, exc)
            return False
        self._changed[name] = None
        return True

    def _reject(self, sender: bytes, exc: ProtocolError) -> None:
        self.stats.rejected += 1
        if len(self._rejections) >= self._max_events:
            self._rejections.popleft()
            self.stats.events_dropped += 1
        self._rejections.append(InputRejected(sender, exc.code, exc.message))

    # ---- outgoing ---------------------------------------------------------------------
    def _start(self, now: float) -> None:
        if self._next_round is None:   # first contact with time: spread nodes' rounds apart
            self._next_round = now + self._rng.uniform(0, self.interval)
            self._next_anti_entropy = now + self._rng.uniform(0.5, 1.0) * self.anti_entropy_interval

    def _flush_soon(self, now: float) -> None:
        if self._flush_at is None:
            self._flush_at = now + self.debounce

    def _send(self, dest: bytes, msg: Any) -> None:
        self._out.append((dest, msg))

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF_FFFF_FFFF_FFFF
        return self._seq

    def _known_wire(self) -> list:
        """Our version vector; left out when huge (it is advice, not needed for safety)."""
        known = self._seen.to_wire()
        return known if packed_len(known) <= self.max_message_bytes // 4 else []

    def _append(self, ids: DotContext, name: str, delta_wire: Any) -> None:
        for entry in self._log.append(ids, name, delta_wire):
            self.stats.entries_dropped += 1
            for peer in self._peers.values():
                peer.in_flight_keys.discard(entry.key)
                if not peer.needs_full and not entry.held_by(peer.known):
                    peer.needs_full = True
                    self.stats.full_state_fallbacks += 1

    def _push_round(self, now: float) -> None:
        """Push to ``fanout`` peers picked at random among those that lack something."""
        log = list(self._log)
        order = list(self._peers)
        self._rng.shuffle(order)
        picked = 0
        for node in order:   # a shuffled scan that stops early: cheap when most peers lag
            if picked == self.fanout:
                break
            peer = self._peers[node]
            if peer.needs_full:
                if peer.full_seq is not None:
                    continue
            elif not any(peer.lacks(e) for e in log):
                continue
            picked += 1
            self._push_to(node, peer, log, now)

    def _push_to(self, node: bytes, peer: _Peer, log: list[Entry], now: float) -> None:
        if peer.needs_full:
            peer.full_seq = self._send_state(node, list(self._replicas))
            peer.full_deadline = now + self.ack_timeout
            return
        known = self._known_wire()
        budget = self.max_message_bytes - _HEADROOM - packed_len(known)
        pending = [e for e in log if peer.lacks(e)]
        for group in chunks(pending, lambda e: e.size, budget, GOSSIP_MAX_ITEMS):
            seq = self._next_seq()
            keys = [e.key for e in group]
            peer.inflight[seq] = (keys, now + self.ack_timeout)
            peer.in_flight_keys.update(keys)
            self._send(node, GossipPush(seq, tuple(e.item for e in group), known))
            self.stats.pushes_sent += 1

    def _send_state(self, node: bytes, names: list[str]) -> int:
        """Send whole states of ``names`` in pieces; returns the transfer's seq."""
        seq = self._next_seq()
        items = []
        for name in names:
            for piece in self._replicas[name].split(self._piece_bytes):
                item = [name, piece.to_wire()]
                size = packed_len(item)
                if size > self._piece_bytes:
                    self.stats.oversize_dropped += 1
                else:
                    items.append((item, size))
        known = self._known_wire()
        budget = self.max_message_bytes - _HEADROOM - packed_len(known)
        groups = list(chunks(items, lambda i: i[1], budget, GOSSIP_MAX_ITEMS)) or [[]]
        for n, group in enumerate(groups):
            last = n == len(groups) - 1
            self._send(node, GossipState(seq, tuple(i[0] for i in group), known if last else (), last))
            self.stats.states_sent += 1
        return seq

    # digests are computed when asked for (on connect and every anti-entropy period), not
    # cached: a cache would go stale if a replica ever changed outside update()
    def _digest_list(self, names: Any) -> tuple:
        return tuple((name, digest(self._replicas[name])) for name in sorted(names))

    def _differing(self, digests: tuple) -> list[str]:
        return [name for name, d in digests if name in self._replicas and digest(self._replicas[name]) != d]

    # ---- bookkeeping ------------------------------------------------------------------
    def _expire(self, now: float) -> None:
        """Forget pushes never acked (lost), so their entries go out again."""
        for peer in self._peers.values():
            for seq in [s for s, (_, deadline) in peer.inflight.items() if deadline <= now]:
                keys, _ = peer.inflight.pop(seq)
                peer.in_flight_keys.difference_update(keys)
            if peer.full_seq is not None and peer.full_deadline <= now:
                peer.full_seq = None

    def _collect_entry(self, entry: Entry) -> None:
        if all(peer.needs_full or entry.held_by(peer.known) for peer in self._peers.values()):
            self._log.drop(entry.key)

    def _collect(self) -> None:
        """Drop entries every peer has; forget delta ids of replicas no entry mentions.

        Forgetting is safe: a late copy of such a delta merges as a no-op and, changing
        nothing, is not logged again; acks name the push they answer, so a sender never
        waits on an id we no longer report.
        """
        for entry in self._log:
            self._collect_entry(entry)
        active = self._log.origins()
        active.add(self.replica_id)
        self._seen.restrict(active)
        for peer in self._peers.values():
            peer.known.restrict(active)
