"""Many cluster cores on the simulator (macula.sim): joining, and how fast a change spreads.

The cores are the node's own ClusterCore (SWIM + gossip + cluster state); only the
network is simulated: a LAN-like latency (1 ms plus an exponential tail, mean 3 ms),
optional loss. Every message a core sends is encoded as the node would send it, which
is what the byte counts are; a sample (``codec``) also goes through the decoder and its
schema checks on the way (all of them is exact but slow at 1,000 nodes).
A node joins through one random earlier node, as a session with a seed would: both
sides see ``peer_connected``. Used by bench_gossip and tests/unit/test_cluster_sim.py.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from macula.cluster import ClusterCore, StateChanged
from macula.sim import Sim
from macula.wire import encode

EPOCH_MS = 1_700_000_000_000


def lan_latency(rng: random.Random) -> float:
    return 0.001 + rng.expovariate(500.0)


class Metered:
    """A core whose outgoing messages are encoded and counted (the simulator hosts this)."""

    def __init__(self, core: ClusterCore, counts: list[int]) -> None:
        self.core = core
        self._counts = counts

    def messages_to_send(self) -> list[tuple[bytes, Any]]:
        out = self.core.messages_to_send()
        self._counts[0] += sum(len(encode(msg)) for _, msg in out)
        self._counts[1] += len(out)
        return out

    def __getattr__(self, name: str) -> Any:   # the rest of the core shape
        return getattr(self.core, name)


class GossipSim:
    def __init__(self, n: int, seed: int = 1, *, loss: float = 0.0, metadata: bool = True,
                 codec: float = 1.0, **core_options: Any) -> None:
        """``metadata``: each node publishes its name when it starts. Without it the join
        is membership only (a large run's join then does not pay for N states meeting
        N nodes; a change spreads the same either way)."""
        self.n = n
        self.metadata = metadata
        self.seed = seed
        self.options = {"max_members": n, **core_options}
        self.sim = Sim(seed, latency=lan_latency, loss=loss, codec=codec, on_event=self._on_event)
        self._sent = [0, 0]     # bytes, messages
        self.ids = [hashlib.sha256(b"node-%d" % i).digest() for i in range(n)]
        self.cores: dict[bytes, ClusterCore] = {}
        self._watch: tuple[bytes, int] | None = None      # (origin, value) being timed
        self._seen_at: dict[bytes, float] = {}

    def _new_core(self, i: int) -> ClusterCore:
        nid = self.ids[i]
        core = ClusterCore(nid, (f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 4433), nid + b"boot-1",
                           random.Random(self.seed * 1_000_003 + i),
                           lambda now: EPOCH_MS + int(now * 1000), **self.options)
        if self.metadata:
            core.set_metadata({"name": f"n{i}"}, self.sim.now)
        return core

    def _join(self, i: int, rng: random.Random) -> None:
        nid = self.ids[i]
        core = self.cores[nid] = self._new_core(i)
        core.start(self.sim.now)
        self.sim.add(nid, Metered(core, self._sent))
        if i:
            contact = self.ids[rng.randrange(i)]
            self.sim.call(nid, lambda c, now: c.peer_connected(contact, None, now))
            self.sim.call(contact, lambda c, now: c.peer_connected(nid, None, now))

    def whole(self) -> bool:
        return all(len(c.live()) == self.n - 1 for c in self.cores.values()) and len(self.cores) == self.n

    def join_all(self, gap: float, whole: bool = True, limit: float = 300.0) -> float:
        """Start the nodes ``gap`` apart; returns the seconds from the last join until
        every node sees all the others (``whole``), or until every node has its
        gossip view (enough for changes to reach everyone)."""
        rng = random.Random(self.seed)
        start = self.sim.now
        for i in range(self.n):
            self.sim.at(start + i * gap, self._join, i, rng)
        last = start + (self.n - 1) * gap
        self.sim.run(last)
        done = self.whole if whole else self.viewed
        while not done():
            if self.sim.now - last > limit:
                raise AssertionError(f"{self.n} nodes not joined {limit} s after the last join")
            self.sim.run(self.sim.now + 0.25)
        return self.sim.now - last

    def viewed(self) -> bool:
        want = min(self.n - 1, self.cores[self.ids[0]].gossip_peers)
        return len(self.cores) == self.n and all(len(c.gossip.peers()) >= want for c in self.cores.values())

    def spread(self, origin: int, value: int, limit: float = 60.0) -> float:
        """Seconds from a metadata change on ``origin`` until every node has it."""
        oid = self.ids[origin]
        self._watch, self._seen_at = (oid, value), {oid: self.sim.now}
        start = self.sim.now
        self.sim.call(oid, lambda c, now: c.set_metadata({"name": f"n{origin}", "bench": value}, now))
        while len(self._seen_at) < self.n:
            if self.sim.now - start > limit:
                raise AssertionError(f"change seen by {len(self._seen_at)} of {self.n} in {limit} s")
            self.sim.run(self.sim.now + 0.01)
        self._watch = None
        return max(self._seen_at.values()) - start

    def _on_event(self, node_id: bytes, event: Any, now: float) -> None:
        if self._watch is None or type(event) is not StateChanged or event.name != "nodes" \
                or node_id in self._seen_at:
            return
        origin, value = self._watch
        meta = self.cores[node_id].metadata(origin)
        if meta is not None and meta.get("bench") == value:
            self._seen_at[node_id] = now

    def bytes_sent(self) -> int:
        return self._sent[0]

    def messages_sent(self) -> int:
        return self._sent[1]
