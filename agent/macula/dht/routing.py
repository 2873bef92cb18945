"""The routing table: k-buckets split along the own ID, least-recently-seen eviction.

Bucket ``i`` below the last holds the contacts sharing exactly ``i`` leading bits with
the own ID; the last bucket holds everything closer and is the only one that splits
(Kademlia's "split the bucket covering the own ID"). A full bucket does not drop the
newcomer blindly as the original did: the newcomer waits in a small replacement cache
and the oldest contact gets a liveness ping (sent by the node); only if that fails is
the oldest replaced. Long-lived nodes are the ones most likely to stay, so they are
kept, and a flood of fresh IDs cannot flush a bucket. Pings are paced: the oldest
contact counts as alive without one if it was heard from within ``probe_after``
seconds, and a bucket pings at most once per ``probe_after``. Otherwise nearly every
request from a new node to a busy far bucket would cost a ping.

Contacts are keyed by their node ID bytes, the very object the Contact holds, so a
table costs no memory per contact beyond its dict entries (10,000 simulated nodes
hold two million of them).
"""

from __future__ import annotations

import random
from typing import Iterator

from macula.dht.ids import ID_BITS, ID_BYTES, Contact, prefix_len, to_int


class Bucket:
    __slots__ = ("contacts", "replacements", "probing", "probed", "touched")

    def __init__(self, now: float) -> None:
        self.contacts: dict[bytes, Contact] = {}       # least recently seen first
        self.replacements: dict[bytes, Contact] = {}   # most recently seen last
        self.probing: bytes | None = None              # oldest contact being pinged
        self.probed = float("-inf")                  # when the last ping went out
        self.touched = now                           # last activity in this range


class RoutingTable:
    def __init__(self, own_id: bytes, k: int = 20, now: float = 0.0,
                 probe_after: float = 60.0) -> None:
        if len(own_id) != ID_BYTES:
            raise ValueError("own_id must be 32 bytes")
        if k < 1 or probe_after < 0:
            raise ValueError("k must be >= 1 and probe_after >= 0")
        self.own_id = own_id
        self._own = to_int(own_id)
        self.k = k
        self.probe_after = probe_after
        self.buckets: list[Bucket] = [Bucket(now)]
        self._heard: dict[bytes, float] = {}   # contact -> last time it was heard from

    def __len__(self) -> int:
        return sum(len(b.contacts) for b in self.buckets)

    def __contains__(self, node_id: object) -> bool:
        if type(node_id) is not bytes:
            return False
        return node_id in self.buckets[self.index(to_int(node_id))].contacts

    def __iter__(self) -> Iterator[Contact]:
        for b in self.buckets:
            yield from b.contacts.values()

    def index(self, node: int) -> int:
        return min(ID_BITS - (self._own ^ node).bit_length(), len(self.buckets) - 1)

    def seen(self, contact: Contact, now: float) -> Contact | None:
        """Record that ``contact`` is alive (it moves to the tail of its bucket).
        Returns a contact the caller must ping (the oldest of a full bucket), or None."""
        node_id = contact[0]
        node = int.from_bytes(node_id, "big")
        if node == self._own:
            return None
        while True:
            i = min(ID_BITS - (self._own ^ node).bit_length(), len(self.buckets) - 1)
            b = self.buckets[i]
            contacts = b.contacts
            b.touched = now
            if node_id in contacts:
                del contacts[node_id]
                contacts[node_id] = contact
                self._heard[node_id] = now
                if b.probing == node_id:
                    b.probing = None
                return None
            if len(contacts) < self.k:
                contacts[node_id] = contact
                self._heard[node_id] = now
                b.replacements.pop(node_id, None)
                return None
            if i == len(self.buckets) - 1 and len(self.buckets) < ID_BITS:
                self._split()
                continue
            reps = b.replacements
            reps.pop(node_id, None)
            reps[node_id] = contact
            self._heard[node_id] = now
            if len(reps) > self.k:
                dropped = next(iter(reps))
                del reps[dropped], self._heard[dropped]
            if b.probing is not None or now - b.probed < self.probe_after:
                return None
            oldest = next(iter(contacts))
            if now - self._heard[oldest] < self.probe_after:
                return None
            b.probing = oldest
            b.probed = now
            return contacts[oldest]

    def remove(self, node_id: bytes) -> bool:
        """Drop a failed contact; the most recently seen replacement takes its place."""
        b = self.buckets[self.index(to_int(node_id))]
        if b.probing == node_id:
            b.probing = None
        if b.replacements.pop(node_id, None) is not None:
            del self._heard[node_id]
        if b.contacts.pop(node_id, None) is None:
            return False
        del self._heard[node_id]
        if b.replacements:
            rid, contact = b.replacements.popitem()
            b.contacts[rid] = contact
        return True

    def _split(self) -> None:
        depth = len(self.buckets) - 1
        old = self.buckets[-1]
        new = Bucket(old.touched)
        own = self._own
        for src, dst in ((old.contacts, new.contacts), (old.replacements, new.replacements)):
            for node_id in [n for n in src if prefix_len(own, to_int(n)) > depth]:
                dst[node_id] = src.pop(node_id)
        if old.probing is not None and old.probing in new.contacts:
            new.probing, old.probing = old.probing, None
        self.buckets.append(new)

    def closest(self, target: bytes, n: int, exclude: bytes | None = None) -> list[Contact]:
        """The ``n`` known contacts closest to ``target`` (XOR), nearest first.

        Buckets are visited nearest first (``_order``), so only the few buckets that
        hold the answer are sorted: a query costs about k log k, not the table size.
        """
        t = to_int(target)
        buckets = self.buckets
        out: list[Contact] = []
        for i in self._order(t):
            contacts = buckets[i].contacts
            # distances at C speed; they are distinct, so contacts are never compared
            found = sorted(zip(map(t.__xor__, map(int.from_bytes, contacts)),
                               contacts.values()))
            out.extend([c for _, c in found if c[0] != exclude])
            if len(out) >= n:
                break
        return out[:n]

    def _order(self, t: int) -> Iterator[int]:
        """Bucket indices by distance to ``t``; every contact of a bucket is closer to
        ``t`` than every contact of the buckets after it.

        For ``t`` in bucket b < last: bucket b (its contacts share one more bit with
        ``t``), then buckets b+1..last, ordered the same way for ``t`` with that bit
        flipped (they all differ from ``t`` in exactly that bit), then b-1 down to 0.
        """
        last = len(self.buckets) - 1
        own = self._own
        lo = 0
        tails = []
        while True:
            b = ID_BITS - (own ^ t).bit_length()
            if b >= last:
                yield from range(last, lo - 1, -1)
                break
            yield b
            tails.append(range(b - 1, lo - 1, -1))
            t ^= 1 << (ID_BITS - 1 - b)
            lo = b + 1
        for tail in reversed(tails):
            yield from tail

    def touch(self, target: bytes, now: float) -> None:
        """A lookup ran in ``target``'s range: that bucket is not stale."""
        self.buckets[self.index(to_int(target))].touched = now

    def stale(self, now: float, age: float) -> list[int]:
        return [i for i, b in enumerate(self.buckets) if now - b.touched >= age]

    def random_id(self, i: int, rng: random.Random) -> bytes:
        """A random ID that falls in bucket ``i`` (for refreshing it)."""
        if i < len(self.buckets) - 1:
            bit = ID_BITS - 1 - i
            offset = (1 << bit) | rng.getrandbits(bit)
        else:
            offset = rng.getrandbits(ID_BITS - i)
        return (self._own ^ offset).to_bytes(ID_BYTES, "big")
