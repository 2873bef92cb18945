"""Pub/sub and RPC at scale in the simulator: the real ``PubSubCore`` and ``RpcCore`` on
every node, publishes and calls under churn.

Each simulated node runs both cores. Its subscribers, publishers, callers and
providers are in-process handles (as the HTTP gateway's and deployed apps' will be): a
local provider answers at once, a delivery to a local subscriber is counted. What goes
between nodes (PUBSUB_ROUTE, CALL, REPLY) is carried by the ``Sim``, in order per pair
of nodes (one stream, as a session), through the wire codec for a sampled fraction.

Remote interest and providers come from a DIRECTORY MODEL, not the DHT core (that has
its own scenario, dht_scenario.py): a lookup answers after a random delay of a few
hops, from a directory that lists a node's subscriptions and procedures while it runs
and for ``record_ttl`` seconds after it crashed (a DHT record outliving its node);
answers are cached per node for ``cache_ttl`` seconds. So the cores see what they see
on a real mesh: lookups that take time, stale providers, nodes that are gone.

Timeline (virtual seconds): ``nodes`` nodes start and subscribe / register; ``settle``
s later, for ``duration`` s: ``publishes`` publishes, ``bursts`` bursts of 20
back-to-back publishes of one topic, and ``calls`` calls from random running nodes at
random times, while ``churn`` x nodes crash at random times and come
back (same node id, same subscriptions and procedures) ``downtime`` s later. Every
procedure has ``per_procedure`` providers; a call is idempotent with probability 1/2.

Measured:
- delivery ratio: of the (publish, subscriber) pairs where both the publisher's and
  the subscriber's node ran from the publish until ``grace`` s after it,
  the share delivered; a queue group counts once per publish, and a second delivery
  to the same group is counted as a duplicate, a subscriber that gets one publisher's
  publishes of a topic out of order is counted too;
- call success: of the calls whose caller ran until their timeout, the share answered
  ok, with the failures by error code.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import time
from collections import Counter
from typing import Any

from macula.errors import ErrorCode
from macula.interest import RemotePattern
from macula.pubsub.core import Hold, NeedInterest, PubSubCore
from macula.pubsub.router import PubSubRouter
from macula.rpc.core import Discover, RpcCore
from macula.rpc.local import LocalProcedures
from macula.sim.sim import Sim
from macula.transport.outbox import ByteBudget
from macula.wire.messages import Call, Deliver, PubsubRoute, Reply

INF = float("inf")


class Directory:
    """Who subscribes to which topic and serves which procedure, with record expiry."""

    def __init__(self, topics: list[str], record_ttl: float) -> None:
        self.topics = topics
        self.record_ttl = record_ttl
        self.patterns: dict[bytes, tuple[RemotePattern, ...]] = {}
        self.by_topic: dict[str, set[bytes]] = {t: set() for t in topics}
        self.by_procedure: dict[str, set[bytes]] = {}
        self.expires: dict[bytes, float] = {}     # node -> when its records go (INF: running)

    def publish(self, node_id: bytes, patterns: list[RemotePattern], procedures: set[str]) -> None:
        from macula.pubsub.topics import matches, validate_pattern, validate_topic
        self.patterns[node_id] = tuple(patterns)
        self.expires[node_id] = INF
        for topic in self.topics:
            tokens = validate_topic(topic)
            if any(matches(validate_pattern(p.pattern), tokens) for p in patterns):
                self.by_topic[topic].add(node_id)
        for proc in procedures:
            self.by_procedure.setdefault(proc, set()).add(node_id)

    def crashed(self, node_id: bytes, now: float) -> None:
        self.expires[node_id] = now + self.record_ttl

    def interest(self, topic: str, now: float) -> list[bytes]:
        exp = self.expires
        return [n for n in self.by_topic.get(topic, ()) if exp[n] > now]

    def providers(self, procedure: str, now: float) -> list[bytes]:
        exp = self.expires
        return [n for n in self.by_procedure.get(procedure, ()) if exp[n] > now]


class _Interest:
    """InterestView over the directory: answers cached for ``cache_ttl``."""

    def __init__(self, node: "SimNode") -> None:
        self.node = node
        self.fresh: dict[str, float] = {}

    def ready(self, topic: str) -> bool:
        return self.fresh.get(topic, 0.0) > self.node.now

    def direct_nodes(self) -> frozenset[bytes]:
        return frozenset()

    def local_changed(self) -> None:
        pass  # the scenario publishes to the directory when the node starts


class _Providers:
    """ProviderView over the directory: answers cached for ``cache_ttl``; a provider
    that could not be reached is not offered again until discovery finds it again."""

    def __init__(self, node: "SimNode") -> None:
        self.node = node
        self.cache: dict[str, tuple[float, list[bytes]]] = {}
        self.gone: set[bytes] = set()

    def cached(self, procedure: str) -> list[bytes] | None:
        entry = self.cache.get(procedure)
        if entry is None or entry[0] <= self.node.now:
            return None
        return [n for n in entry[1] if n not in self.gone]

    def local_changed(self, procedure: str, served: bool) -> None:
        pass

    def forget(self, node_id: bytes) -> None:
        self.gone.add(node_id)

    def returned(self, node_id: bytes) -> None:
        self.gone.discard(node_id)


class Subscriber:
    __slots__ = ("node_id", "pattern", "group", "incarnation")

    def __init__(self, node_id: bytes, pattern: str, group: str | None, incarnation: int) -> None:
        self.node_id, self.pattern, self.group, self.incarnation = (node_id, pattern, group,
                                                                    incarnation)


class SimNode:
    """Both cores of one node, with in-process handles, in the Sim's host shape."""

    def __init__(self, run: "_Run", node_id: bytes, incarnation: int) -> None:
        self.run = run
        self.node_id = node_id
        self.incarnation = incarnation
        self.now = run.sim.now
        self.router = PubSubRouter(max_subscriptions=1024, max_per_owner=64,
                                   rng=random.Random(run.rng.getrandbits(64)))
        self.interest = _Interest(self)
        self.pubsub = PubSubCore(node_id, self.router, self.interest, ByteBudget(8 << 20),
                                 queue_bytes=256 << 10)
        self.local = LocalProcedures()
        self.providers = _Providers(self)
        self.rpc = RpcCore(node_id, self.local, self.providers, max_pending=1024,
                           rng=random.Random(run.rng.getrandbits(64)))
        self.clients: set[bytes] = set()            # in-process provider handles
        self._lookups: list[tuple[float, int, str, str]] = []   # (due, seq, kind, name)
        self._seq = 0
        self._out: list[tuple[bytes, Any]] = []

    # -- the Sim's host shape --------------------------------------------------------------
    def handle_message(self, sender: bytes, msg: Any, now: float) -> None:
        self.now = now
        kind = type(msg)
        if kind is PubsubRoute:
            self.pubsub.handle_route(sender, msg)
        elif kind is Call:
            self.rpc.call(sender, msg.call_id, msg.procedure, msg.args, msg.timeout_ms,
                          msg.idempotent, True, now)
        elif kind is Reply:
            self.rpc.handle_reply(sender, msg, now)

    def handle_unreachable(self, node_id: bytes, now: float) -> None:
        """A send to ``node_id`` failed (it is down): its calls go elsewhere."""
        self.now = now
        self.providers.forget(node_id)
        for call in self.rpc.table.calls_to(node_id):
            self.rpc.not_delivered(node_id, call.call_id, now)

    def get_timer(self) -> float | None:
        t = self.rpc.get_timer()
        if self._lookups and (t is None or self._lookups[0][0] < t):
            t = self._lookups[0][0]
        return t

    def handle_timer(self, now: float) -> None:
        self.now = now
        run = self.run
        while self._lookups and self._lookups[0][0] <= now:
            _, _, kind, name = heapq.heappop(self._lookups)
            if kind == "topic":
                known = set(run.directory.interest(name, now)) - {self.node_id}
                expires = run.directory.expires
                for node_id in self.router.remote_nodes():
                    if expires[node_id] <= now:   # its records are gone from the DHT
                        self.router.forget_remote(node_id)
                for node_id in known:
                    self.router.set_remote(node_id, run.directory.patterns[node_id])
                self.interest.fresh[name] = now + run.cache_ttl
                self.pubsub.interest_known(name)
            else:
                found = [n for n in run.directory.providers(name, now) if n != self.node_id]
                self.providers.cache[name] = (now + run.cache_ttl, found)
                self.providers.gone.difference_update(found)
                self.rpc.discovered(name, found, now)
        deadline = self.rpc.get_timer()
        if deadline is not None and deadline <= now:
            self.rpc.handle_timer(now)

    def next_event(self) -> Any:
        return None  # the cores' events are handled here, in messages_to_send

    def messages_to_send(self) -> list[tuple[bytes, Any]]:
        run, out = self.run, self._out
        while True:
            busy = False
            while (event := self.pubsub.next_event()) is not None:
                busy = True
                if type(event) is NeedInterest:
                    self._lookup("topic", event.topic)
                elif type(event) is Hold:
                    run.holds += 1
            while (event := self.rpc.next_event()) is not None:
                busy = True
                if type(event) is Discover:
                    self._lookup("procedure", event.procedure)
            for dest, msg, _ in self.pubsub.messages_to_send():
                busy = True
                if type(msg) is Deliver:
                    run.delivered(dest, msg, self.now)
                else:
                    out.append((dest, msg))
            for dest, msg in self.rpc.messages_to_send():
                busy = True
                if type(msg) is Call:
                    if dest in self.clients:   # an in-process provider answers at once
                        self.rpc.handle_reply(dest, Reply(msg.call_id, True, msg.args), self.now)
                    else:
                        out.append((dest, msg))
                elif type(dest) is bytes:
                    out.append((dest, msg))    # the reply to a calling node
                else:
                    run.replied(dest, msg, self.now)
            if not busy:
                break
        self._out = []
        return out

    # -- what the scenario does on this node -----------------------------------------------
    def _lookup(self, kind: str, name: str) -> None:
        self._seq += 1
        heapq.heappush(self._lookups, (self.now + self.run.lookup_delay(), self._seq, kind, name))

    def subscribe(self, handle: Subscriber) -> None:
        self.pubsub.subscribe(handle, 1, handle.pattern, handle.group)

    def register(self, procedure: str) -> None:
        client = self.node_id[:16] + b"client"
        self.clients.add(client)
        self.rpc.register(client, procedure)

    def publish(self, topic: str, payload: bytes, now: float) -> None:
        self.now = now
        self.pubsub.publish(topic, payload, source=self)

    def call(self, handle: Any, procedure: str, idempotent: bool, timeout_ms: int,
             now: float) -> None:
        self.now = now
        self.rpc.call(handle, 1, procedure, b"x", timeout_ms, idempotent, False, now)


class _Run:
    def __init__(self, nodes: int, seed: int, churn: float, publishes: int, bursts: int,
                 calls: int,
                 topics: int, procedures: int, per_procedure: int, duration: float, settle: float, grace: float,
                 downtime: tuple[float, float], record_ttl: float, cache_ttl: float,
                 call_timeout: float, codec: float, loss: float) -> None:
        self.rng = random.Random(f"pubsub-rpc-scenario-{seed}")
        self.sim = Sim(seed, codec=codec, loss=loss, unreachable_delay=0.2, fifo=True)
        self.n, self.churn, self.n_publishes, self.n_calls = nodes, churn, publishes, calls
        self.duration, self.settle, self.grace, self.downtime = duration, settle, grace, downtime
        self.cache_ttl, self.call_timeout = cache_ttl, call_timeout
        self.per_procedure, self.n_bursts = per_procedure, bursts
        self.topics = [f"site.{k}.temp" for k in range(topics)]
        self.procedures = [f"svc.{j}" for j in range(procedures)]
        self.directory = Directory(self.topics, record_ttl)
        self.ids: list[bytes] = [hashlib.sha256(b"node-%d" % i).digest() for i in range(nodes)]
        self.plan: dict[bytes, tuple[list[tuple[str, str | None]], set[str]]] = {}
        self.incarnation: dict[bytes, int] = {}
        self.up: dict[bytes, list[tuple[float, float]]] = {n: [] for n in self.ids}  # run spans
        self.subscribers: dict[str, list[tuple[bytes, str | None]]] = {t: [] for t in self.topics}
        self.holds = 0
        self.sent: dict[int, tuple[str, float, bytes]] = {}           # publish id -> topic, t, node
        self.got: set[tuple[int, bytes, str | None]] = set()
        self.group_dupes = 0
        self.out_of_order = 0
        self.last_seen: dict[tuple, int] = {}
        self.calls: dict[int, tuple[float, bytes]] = {}
        self.replies: dict[int, Reply] = {}

    def lookup_delay(self) -> float:
        return 0.02 + self.rng.expovariate(1 / 0.08)   # a few hops of a city mesh

    # -- population -------------------------------------------------------------------------
    def make_plan(self) -> None:
        rng = self.rng
        from macula.pubsub.topics import matches, validate_pattern, validate_topic
        for node_id in self.ids:
            subs: list[tuple[str, str | None]] = []
            for topic in rng.sample(self.topics, 2):
                subs.append((topic, None))
            r = rng.random()
            if r < 0.02:
                subs.append(("site.*.temp", None))
            elif r < 0.12:
                subs.append((rng.choice(self.topics), "workers"))
            self.plan[node_id] = (subs, set())
            for topic in self.topics:
                toks = validate_topic(topic)
                for pattern, group in subs:
                    if matches(validate_pattern(pattern), toks):
                        self.subscribers[topic].append((node_id, group))
        serving = rng.sample(self.ids, min(len(self.ids), len(self.procedures) * self.per_procedure))
        for i, node_id in enumerate(serving):  # every procedure has per_procedure providers
            self.plan[node_id][1].add(self.procedures[i % len(self.procedures)])

    def start(self, node_id: bytes) -> None:
        inc = self.incarnation[node_id] = self.incarnation.get(node_id, 0) + 1
        host = SimNode(self, node_id, inc)
        host.now = self.sim.now
        subs, procs = self.plan[node_id]
        for pattern, group in subs:
            host.subscribe(Subscriber(node_id, pattern, group, inc))
        for proc in procs:
            host.register(proc)
        counts = Counter(subs)
        self.directory.publish(node_id, [RemotePattern(p, g, n) for (p, g), n in counts.items()],
                               procs)
        self.sim.add(node_id, host)
        self.up[node_id].append((self.sim.now, INF))

    def crash(self, node_id: bytes) -> None:
        if not self.sim.alive(node_id):
            return
        self.sim.kill(node_id)
        self.directory.crashed(node_id, self.sim.now)
        start, _ = self.up[node_id][-1]
        self.up[node_id][-1] = (start, self.sim.now)
        lo, hi = self.downtime
        self.sim.at(self.sim.now + lo + self.rng.random() * (hi - lo), self.start, node_id)

    def ran(self, node_id: bytes, start: float, end: float) -> bool:
        return any(a <= start and end <= b for a, b in self.up[node_id])

    # -- measurements -----------------------------------------------------------------------
    def do_publish(self, pub_id: int, burst: int = 1) -> None:
        """``burst`` publishes of one topic from one node, back to back."""
        node_id = self.rng.choice(self.ids)
        if not self.sim.alive(node_id):
            return
        topic = self.rng.choice(self.topics)
        ids = [pub_id] if burst == 1 else [(1 << 24) + pub_id * burst + k for k in range(burst)]
        for i in ids:
            self.sent[i] = (topic, self.sim.now, node_id, len(self.sent))

        def publish(host: SimNode, now: float) -> None:
            for i in ids:
                host.publish(topic, i.to_bytes(4, "big"), now)
        self.sim.call(node_id, publish)

    def delivered(self, handle: Subscriber, msg: Deliver, now: float) -> None:
        if handle.incarnation != self.incarnation.get(handle.node_id):
            return
        pub_id = int.from_bytes(msg.payload, "big")
        key = (pub_id, handle.node_id if handle.group is None else b"", handle.group)
        if handle.group is not None and key in self.got:
            self.group_dupes += 1
        elif handle.group is None:  # from one publisher, a topic's publishes in order
            topic, _, origin, order = self.sent[pub_id]
            stream = (handle.node_id, handle.incarnation, origin, topic)
            if self.last_seen.get(stream, -1) > order:
                self.out_of_order += 1
            self.last_seen[stream] = order
        self.got.add(key)

    def do_call(self, call_id: int) -> None:
        node_id = self.rng.choice(self.ids)
        if not self.sim.alive(node_id):
            return
        procedure = self.rng.choice(self.procedures)
        idempotent = self.rng.random() < 0.5
        self.calls[call_id] = (self.sim.now, node_id)
        self.sim.call(node_id, lambda h, now: h.call(call_id, procedure, idempotent,
                                                      int(self.call_timeout * 1000), now))

    def replied(self, handle: int, msg: Reply, now: float) -> None:
        self.replies.setdefault(handle, msg)

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.make_plan()
        for node_id in self.ids:
            self.start(node_id)
        start = self.settle
        end = start + self.duration
        rng = self.rng
        for i in range(self.n_publishes):
            self.sim.at(start + rng.random() * self.duration, self.do_publish, i)
        for i in range(self.n_bursts):
            self.sim.at(start + rng.random() * self.duration, self.do_publish, i, 20)
        for i in range(self.n_calls):
            self.sim.at(start + rng.random() * self.duration, self.do_call, i)
        for node_id in rng.sample(self.ids, int(self.churn * self.n)):
            self.sim.at(start + rng.random() * self.duration, self.crash, node_id)
        self.sim.run(end + max(self.grace, self.call_timeout) + 1.0)

        expected = delivered = 0
        for pub_id, (topic, t, origin, _) in self.sent.items():
            if not self.ran(origin, t, t + self.grace):
                continue  # its publishes still waiting for a lookup died with it
            groups_seen: set[str] = set()
            for node_id, group in self.subscribers[topic]:
                if not self.ran(node_id, t, t + self.grace):
                    continue
                if group is None:
                    expected += 1
                    delivered += (pub_id, node_id, None) in self.got
                elif group not in groups_seen:
                    groups_seen.add(group)
                    expected += 1
                    delivered += (pub_id, b"", group) in self.got
        counted = ok = 0
        failures: Counter[str] = Counter()
        for call_id, (t, caller) in self.calls.items():
            if not self.ran(caller, t, t + self.call_timeout):
                continue
            counted += 1
            reply = self.replies.get(call_id)
            if reply is not None and reply.ok:
                ok += 1
            else:
                failures["no reply" if reply is None else
                         ErrorCode(reply.error_code).name] += 1
        s = self.sim.stats
        return {
            "sim_nodes": self.n, "sim_publishes": len(self.sent), "sim_calls": counted,
            "sim_delivery_expected": expected, "sim_delivery_ratio": round(delivered / max(1, expected), 4),
            "sim_group_duplicates": self.group_dupes, "sim_out_of_order": self.out_of_order,
            "sim_call_success": round(ok / max(1, counted), 4),
            "sim_call_failures": dict(sorted(failures.items())),
            "sim_crashes": int(self.churn * self.n), "sim_holds": self.holds,
            "sim_messages": s.sent, "sim_to_dead": s.to_dead, "sim_encoded": s.encoded,
            "sim_wall_s": round(time.perf_counter() - t0, 2),
        }


def run(nodes: int = 1000, seed: int = 1, churn: float = 0.1, publishes: int = 2000,
        bursts: int = 50, calls: int = 2000, topics: int = 50, procedures: int = 20, per_procedure: int = 3,
        duration: float = 30.0,
        settle: float = 2.0, grace: float = 2.0, downtime: tuple[float, float] = (1.0, 4.0),
        record_ttl: float = 10.0, cache_ttl: float = 3.0, call_timeout: float = 2.0,
        codec: float = 0.05, loss: float = 0.0) -> dict[str, Any]:
    """One scenario (module docstring); returns the measurements as a flat dict."""
    return _Run(nodes, seed, churn, publishes, bursts, calls, topics, procedures, per_procedure, duration, settle,
                grace, downtime, record_ttl, cache_ttl, call_timeout, codec, loss).run()
