"""One iterative lookup (FIND_NODE or FIND_VALUE), as plain state.

Candidates are kept sorted by XOR distance to the target (distinct IDs have distinct
distances, so the distance is the key). Up to ``alpha`` queries are in flight; a new
one goes out as soon as one answers, always to the closest candidate not yet asked.
The lookup is done when the ``k`` closest candidates that did not fail have all
answered. A candidate's ``depth`` is 1 for contacts from our own table and one more
than the node that told us about it; ``rounds`` is the deepest query sent, i.e. the
length of the longest chain of sequential round trips. A query that timed out is sent
again up to ``retries`` times before the candidate counts as failed: on a lossy link
the closest node is otherwise lost to one dropped packet.
"""

from __future__ import annotations

from bisect import insort
from operator import itemgetter
from typing import Sequence

from macula.dht.ids import Contact

NEW, PENDING, DONE, FAILED = range(4)
_node_id = itemgetter(0)


class Lookup:
    __slots__ = ("target", "_t", "_own", "k", "alpha", "width", "retries", "_dists",
                 "_entries", "in_flight", "sent", "replies", "rounds", "finished")

    def __init__(self, target: bytes, own_id: bytes, k: int, alpha: int, width: int,
                 retries: int = 0) -> None:
        self.target = target
        self._t = int.from_bytes(target, "big")
        self._own = int.from_bytes(own_id, "big") ^ self._t   # own distance: never a candidate
        self.k = k
        self.alpha = alpha
        self.width = width                   # candidates kept; farther ones are dropped
        self.retries = retries
        self._dists: list[int] = []          # sorted distances of the candidates
        self._entries: dict[int, list] = {}  # distance -> [contact, state, depth, tries]
        self.in_flight = 0
        self.sent = 0
        self.replies = 0
        self.rounds = 0
        self.finished = False

    def add(self, contacts: Sequence[tuple], depth: int) -> None:
        entries = self._entries
        dists = self._dists
        own = self._own
        # most contacts in a reply are known already: find the new ones at C speed
        # (int.from_bytes is big-endian by default since Python 3.11)
        ds = map(self._t.__xor__, map(int.from_bytes, map(_node_id, contacts)))
        fresh = [(d, c) for d, c in zip(ds, contacts) if d not in entries and d != own]
        for d, c in fresh:
            if len(dists) >= self.width and d > dists[-1]:
                continue
            if type(c) is not Contact:   # decoded from the wire: a plain tuple
                c = Contact(*c)
            entries[d] = [c, NEW, depth, 0]
            insort(dists, d)
        if len(dists) > self.width:
            self._trim()

    def _trim(self) -> None:
        dists, entries = self._dists, self._entries
        i = len(dists) - 1
        while len(dists) > self.width and i >= 0:
            d = dists[i]
            if entries[d][1] != PENDING:  # an answer in flight must still find its entry
                del entries[d]
                del dists[i]
            i -= 1

    def next_queries(self) -> list[Contact]:
        """Contacts to query now (marked pending); sets ``finished`` when converged."""
        out: list[Contact] = []
        if self.finished:
            return out
        budget = self.alpha - self.in_flight
        live = 0
        open_ = False
        entries = self._entries
        for d in self._dists:
            e = entries[d]
            state = e[1]
            if state == FAILED:
                continue
            live += 1
            if state == NEW:
                open_ = True
                if budget > 0:
                    e[1] = PENDING
                    budget -= 1
                    out.append(e[0])
                    if e[2] > self.rounds:
                        self.rounds = e[2]
            elif state == PENDING:
                open_ = True
            if live >= self.k:
                break
        self.in_flight += len(out)
        self.sent += len(out)
        if not open_:
            self.finished = True
        return out

    def _entry(self, node_id: bytes) -> list | None:
        e = self._entries.get(int.from_bytes(node_id, "big") ^ self._t)
        return e if e is not None and e[1] == PENDING else None

    def on_reply(self, node_id: bytes, contacts: Sequence[tuple]) -> None:
        e = self._entry(node_id)
        if e is None:
            return
        e[1] = DONE
        self.in_flight -= 1
        self.replies += 1
        if not self.finished:
            self.add(contacts, e[2] + 1)

    def on_fail(self, node_id: bytes, timed_out: bool) -> None:
        """A query failed; after a timeout it may be retried, after a definite
        failure (unreachable, session closed) it is not."""
        e = self._entry(node_id)
        if e is not None:
            self.in_flight -= 1
            if timed_out and e[3] < self.retries:
                e[3] += 1
                e[1] = NEW
            else:
                e[1] = FAILED

    def closest(self) -> list[Contact]:
        """The ``k`` closest candidates that answered, nearest first."""
        out = []
        entries = self._entries
        for d in self._dists:
            e = entries[d]
            if e[1] == DONE:
                out.append(e[0])
                if len(out) == self.k:
                    break
        return out
