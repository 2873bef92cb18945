"""The Kademlia core: scripted exchanges, and small meshes in the simulator."""

import hashlib
import random

import pytest

from macula.dht import Contact, DhtConfig, DhtNode, LookupDone, StoreDone, ValueFound, distance
from macula.errors import ErrorCode, Overloaded
from macula.sim import Sim
from macula.wire import encode
from macula.wire.messages import (
    DHT_VALUE_MAX, DhtPing, DhtPong, FindNode, FindNodeReply, FindValue, FindValueReply,
    Store, StoreReply,
)

KEY = hashlib.sha256(b"key").digest()


def nid(i: int) -> bytes:
    return hashlib.sha256(b"node-%d" % i).digest()


def contact(node_id: bytes) -> Contact:
    return Contact(node_id, "10.0.0.%d" % node_id[0], 9443)


def core(node_id: bytes, client: bool = False, **cfg) -> DhtNode:
    return DhtNode(node_id, DhtConfig(**cfg), rng=random.Random(7), client=client)


def drain(node: DhtNode) -> list:
    events = []
    while (e := node.next_event()) is not None:
        events.append(e)
    return events


class Net:
    """A small mesh on the simulator; every message goes through the wire codec."""

    def __init__(self, n: int, seed: int = 1, clients: tuple = (), **cfg) -> None:
        cfg.setdefault("rpc_timeout", 2.0)
        self.config = DhtConfig(**cfg)
        self.sim = Sim(seed, on_event=self._event)
        self.rng = random.Random(seed)
        self.events: dict[tuple[bytes, int], object] = {}
        self.clients = {nid(i) for i in clients}
        self.ids = [nid(i) for i in range(n)]
        for i, node_id in enumerate(self.ids):
            self.sim.at(i * 0.5, self.add, node_id)
        self.sim.run(n * 0.5 + 30)

    def add(self, node_id: bytes) -> None:
        client = node_id in self.clients
        self.sim.add(node_id, DhtNode(node_id, self.config, rng=self.rng, now=self.sim.now,
                                      client=client),
                     node_id if client else contact(node_id))
        seeds = [] if node_id == self.ids[0] else [contact(self.ids[0])]
        self.sim.call(node_id, lambda h, now: h.bootstrap(seeds, now))

    def _event(self, node_id: bytes, event, now: float) -> None:
        self.events[(node_id, event.op_id)] = event

    def node(self, node_id: bytes) -> DhtNode:
        return self.sim.host(node_id)

    def do(self, node_id: bytes, fn, wait: float = 30.0):
        op = self.sim.call(node_id, fn)
        self.sim.run(self.sim.now + wait)
        return self.events.pop((node_id, op))

    def servers(self) -> list[bytes]:
        return [n for n in self.ids if self.sim.alive(n) and n not in self.clients]

    def closest(self, target: bytes, n: int, exclude: bytes | None = None) -> list[bytes]:
        return sorted((s for s in self.servers() if s != exclude),
                      key=lambda s: distance(s, target))[:n]

    def holders(self, key: bytes) -> set[bytes]:
        now = self.sim.now
        return {n for n in self.ids if self.sim.alive(n) and self.node(n).records.get(key, now)}


# ---- scripted exchanges on one core -------------------------------------------------
def test_a_node_without_seeds_runs_alone():
    a = core(nid(0))
    op = a.bootstrap([], 0.0)
    assert drain(a) == [LookupDone(op, nid(0), (), 0, 0)]
    assert a.messages_to_send() == []


def test_a_silent_node_is_asked_twice_then_fails_and_leaves_the_table():
    a, b = core(nid(0), rpc_timeout=5.0, lookup_retries=1), nid(1)
    a.peer_connected(b, ("10.0.0.1", 9443), 0.0)
    assert b in a.table
    op = a.lookup_node(KEY, 1.0)
    [(dest, msg)] = a.messages_to_send()
    assert dest.node_id == b and type(msg) is FindNode and msg.target == KEY
    assert a.get_timer() == 6.0
    a.handle_timer(5.9)
    assert drain(a) == [] and a.messages_to_send() == []
    a.handle_timer(6.0)
    [(dest, retry)] = a.messages_to_send()               # one retry
    assert dest.node_id == b and retry.req_id != msg.req_id
    assert b not in a.table and drain(a) == []
    a.handle_message(contact(b), FindNodeReply(msg.req_id, ()), 6.5)   # too late: ignored
    assert drain(a) == []
    a.handle_timer(11.0)
    [done] = drain(a)
    assert done.op_id == op and done.nodes == () and done.messages == 2
    assert a.rpc_failures == 2 and a.stats()["pending_rpcs"] == 0


def test_a_lookup_moves_on_past_a_dead_node():
    a = core(nid(0), rpc_timeout=5.0)
    alive, dead, far = nid(1), nid(2), nid(3)
    for n in (alive, dead):
        a.peer_connected(n, ("h", 1), 0.0)
    a.lookup_node(KEY, 0.0)
    sent = {dest.node_id: msg for dest, msg in a.messages_to_send()}
    assert set(sent) == {alive, dead}
    a.handle_message(contact(alive), FindNodeReply(sent[alive].req_id, (contact(far),)), 0.1)
    [(dest, msg)] = a.messages_to_send()
    assert dest.node_id == far                       # learned from the reply
    a.handle_message(contact(far), FindNodeReply(msg.req_id, ()), 0.2)
    assert drain(a) == []                            # still waiting on the dead one
    a.handle_timer(5.0)
    a.handle_timer(10.0)                             # and on its retry
    [done] = drain(a)
    assert {c.node_id for c in done.nodes} == {alive, far}
    assert done.rounds == 2 and done.messages == 6   # 4 requests, 2 replies
    assert dead not in a.table and alive in a.table and far in a.table


def test_unreachable_and_disconnected_fail_requests_at_once():
    for hint in ("handle_unreachable", "peer_disconnected"):
        a, b = core(nid(0)), nid(1)
        a.peer_connected(b, ("h", 1), 0.0)
        op = a.lookup_node(KEY, 0.0)
        a.messages_to_send()
        getattr(a, hint)(b, 0.5)
        [done] = drain(a)
        assert done.op_id == op and done.nodes == ()
        assert b not in a.table


def test_a_reply_from_a_node_not_asked_is_ignored():
    a, b, mallory = core(nid(0)), nid(1), nid(2)
    a.peer_connected(b, ("h", 1), 0.0)
    a.lookup_node(KEY, 0.0)
    [(_, msg)] = a.messages_to_send()
    a.handle_message(contact(mallory), FindNodeReply(msg.req_id, (contact(nid(3)),)), 0.1)
    assert a.messages_to_send() == [] and drain(a) == []
    a.handle_message(contact(b), FindNodeReply(msg.req_id, ()), 0.2)
    [done] = drain(a)
    assert [c.node_id for c in done.nodes] == [b]


def test_full_bucket_pings_the_oldest_and_replaces_it_only_if_silent():
    for answers in (True, False):
        a = core(bytes(32), k=2, probe_after=0.0, rpc_timeout=5.0)
        far = [bytes([0x80 + i]) + bytes(31) for i in range(3)]   # all in bucket 0
        a.peer_connected(bytes(31) + b"\x01", ("h", 1), 0.0)      # near: bucket 0 is far-only
        for n in far[:2]:
            a.handle_message(contact(n), FindNode(1, KEY), 0.0)
        a.messages_to_send()
        a.handle_message(contact(far[2]), FindNode(2, KEY), 1.0)
        out = a.messages_to_send()
        [ping] = [(d, m) for d, m in out if type(m) is DhtPing]
        assert ping[0].node_id == far[0]                          # the oldest
        assert far[2] not in a.table
        if answers:
            a.handle_message(contact(far[0]), DhtPong(ping[1].req_id), 1.1)
            a.handle_timer(10.0)
            assert far[0] in a.table and far[2] not in a.table
        else:
            a.handle_timer(6.0)
            assert far[0] not in a.table and far[2] in a.table


def test_store_refusals_carry_a_code():
    a = core(nid(0), max_records_per_publisher=1)
    p = contact(nid(1))
    a.handle_message(p, Store(1, KEY, ((p.node_id, b"v", 60),)), 0.0)
    a.handle_message(p, Store(2, bytes(32), ((p.node_id, b"v", 60),)), 0.0)
    replies = [m for _, m in a.messages_to_send() if type(m) is StoreReply]
    assert replies == [StoreReply(1, True, None),
                       StoreReply(2, False, int(ErrorCode.STORE_REFUSED))]


def test_a_client_stores_nothing_and_stays_out_of_tables():
    c = core(nid(0), client=True)
    p = contact(nid(1))
    c.handle_message(p, Store(1, KEY, ((p.node_id, b"v", 60),)), 0.0)
    assert c.messages_to_send()[-1][1] == StoreReply(1, False, int(ErrorCode.STORE_REFUSED))
    assert len(c.records) == 0
    server = core(nid(2))
    server.handle_message(nid(0), FindNode(5, KEY), 0.0)    # bare ID: a client session
    [(dest, reply)] = server.messages_to_send()
    assert dest == nid(0) and type(reply) is FindNodeReply   # answered over the session
    assert nid(0) not in server.table
    server.peer_connected(nid(3), ("h", 1), 0.0, client=True)
    assert nid(3) not in server.table


def test_find_value_reply_keeps_to_the_byte_budget():
    budget = 2 * (DHT_VALUE_MAX + 48)
    a = core(nid(0), max_message_bytes=budget, max_bytes_per_publisher=1 << 20)
    for i in range(10):
        p = nid(100 + i)
        a.handle_message(contact(p), Store(i, KEY, ((p, bytes(DHT_VALUE_MAX), 60),)), 0.0)
    a.messages_to_send()
    a.handle_message(contact(nid(1)), FindValue(99, KEY), 1.0)
    [(_, reply)] = a.messages_to_send()
    assert type(reply) is FindValueReply and len(reply.records) == 2
    assert len(encode(reply._replace(nodes=()))) <= budget


def test_operation_bound():
    a = core(nid(0), max_ops=2)
    a.peer_connected(nid(1), ("h", 1), 0.0)     # never answers: ops stay open
    a.lookup_node(KEY, 0.0)
    a.find_value(KEY, 0.0)
    with pytest.raises(Overloaded):
        a.lookup_node(KEY, 0.0)
    a.handle_timer(5.0)                          # both time out, are retried,
    a.handle_timer(10.0)                         # time out again: room again
    assert a.stats()["ops"] == 0 and a.stats()["pending_rpcs"] == 0
    a.lookup_node(KEY, 10.0)


def test_published_bound_and_value_checks():
    a = core(nid(0), max_published=1, max_ttl=100.0)
    a.store(KEY, b"v", 60, 0.0)
    with pytest.raises(Overloaded):
        a.store(bytes(32), b"v", 60, 0.0)
    a.store(KEY, b"v2", 60, 0.0)                 # an update needs no new room
    with pytest.raises(ValueError):
        a.store(KEY, bytes(DHT_VALUE_MAX + 1), 60, 0.0)
    with pytest.raises(ValueError):
        a.store(KEY, b"v", 101, 0.0)
    with pytest.raises(ValueError):
        a.find_value(b"short", 0.0)


def test_undrained_events_are_bounded():
    a = core(nid(0), max_events=2)
    ops = [a.lookup_node(KEY, 0.0) for _ in range(3)]   # alone: each finishes at once
    assert [e.op_id for e in drain(a)] == ops[1:]
    assert a.events_dropped == 1


def test_stale_buckets_are_refreshed():
    a = core(nid(0), refresh_interval=100.0, maintenance_interval=10.0)
    a.peer_connected(nid(1), ("h", 1), 0.0)
    a.handle_timer(50.0)
    assert a.messages_to_send() == []
    t = a.get_timer()
    while t < 100.0:
        a.handle_timer(t)
        t = a.get_timer()
    a.handle_timer(t)
    sent = a.messages_to_send()
    assert [type(m) for _, m in sent] == [FindNode]


def test_expired_records_are_swept_on_the_tick():
    a = core(nid(0), maintenance_interval=10.0)
    p = contact(nid(1))
    a.handle_message(p, Store(1, KEY, ((p.node_id, b"v", 30),)), 0.0)
    assert len(a.records) == 1
    a.handle_timer(31.0)
    while a.get_timer() <= 45.0:
        a.handle_timer(a.get_timer())
    assert len(a.records) == 0 and a.stats()["records"] == 0


# ---- meshes in the simulator ------------------------------------------------------------
def test_lookups_converge_on_the_true_k_closest():
    net = Net(60, k=8)
    rng = random.Random(3)
    for _ in range(20):
        origin = rng.choice(net.ids)
        target = rng.randbytes(32)
        done = net.do(origin, lambda h, now: h.lookup_node(target, now))
        assert [c.node_id for c in done.nodes] == net.closest(target, 8, exclude=origin)
        assert 1 <= done.rounds <= 4


def test_store_reaches_the_k_closest_and_find_value_gets_it():
    net = Net(40, k=5)
    publisher = net.ids[7]
    done = net.do(publisher, lambda h, now: h.store(KEY, b"hello", 600, now))
    assert type(done) is StoreDone and (done.stored, done.refused) == (5, 0)
    assert net.holders(KEY) == set(net.closest(KEY, 5))
    found = net.do(net.ids[30], lambda h, now: h.find_value(KEY, now))
    assert type(found) is ValueFound
    assert [(r.publisher, r.value) for r in found.records] == [(publisher, b"hello")]
    assert found.records[0].expires > net.sim.now


def test_find_value_stops_at_the_quorum():
    net = Net(40, k=5, value_quorum=1)
    net.do(net.ids[7], lambda h, now: h.store(KEY, b"v", 600, now))
    one = net.do(net.ids[30], lambda h, now: h.find_value(KEY, now))
    full = net.do(net.ids[30], lambda h, now: h.lookup_node(KEY, now))
    assert one.records and one.messages < full.messages


def test_clients_look_up_and_publish_but_are_never_routed_to():
    net = Net(30, k=5, clients=(3, 4, 5))
    client = nid(4)
    for n in net.servers():
        assert not any(c in net.node(n).table for c in net.clients)
    done = net.do(client, lambda h, now: h.lookup_node(KEY, now))
    assert [c.node_id for c in done.nodes] == net.closest(KEY, 5)
    stored = net.do(client, lambda h, now: h.store(KEY, b"from a client", 600, now))
    assert stored.stored == 5
    assert not (net.holders(KEY) & net.clients)
    found = net.do(nid(20), lambda h, now: h.find_value(KEY, now))
    assert [r.publisher for r in found.records] == [client]


def test_republish_keeps_a_record_past_its_ttl_and_only_while_the_publisher_lives():
    net = Net(30, k=5, maintenance_interval=20.0)
    publisher = net.ids[9]
    net.do(publisher, lambda h, now: h.store(KEY, b"v", 100, now))
    net.sim.run(net.sim.now + 400)                    # four TTLs
    found = net.do(net.ids[21], lambda h, now: h.find_value(KEY, now))
    assert [r.publisher for r in found.records] == [publisher]
    net.sim.kill(publisher)
    died = net.sim.now
    net.sim.run(died + 101)                            # every copy expires by died + ttl
    found = net.do(net.ids[21], lambda h, now: h.find_value(KEY, now))
    assert found.records == ()
    net.sim.run(net.sim.now + 40)                      # and the sweep reclaims them
    assert all(len(net.node(n).records) == 0 for n in net.servers())


def test_replication_restores_the_copies_after_holders_die():
    net = Net(40, k=5, maintenance_interval=20.0, replicate_interval=200.0)
    publisher = net.ids[0] if net.ids[0] not in net.closest(KEY, 5) else net.ids[1]
    net.do(publisher, lambda h, now: h.store(KEY, b"v", 5000, now))
    net.sim.kill(publisher)                            # nobody republishes any more
    holders = sorted(net.holders(KEY))
    assert len(holders) == 5
    for h in holders[:3]:
        net.sim.kill(h)
    assert len(net.holders(KEY)) == 2
    net.sim.run(net.sim.now + 260)
    assert net.holders(KEY) == set(net.closest(KEY, 5))


def test_withdraw_deletes_and_stops_republishing():
    net = Net(30, k=5, maintenance_interval=20.0)
    publisher = net.ids[9]
    net.do(publisher, lambda h, now: h.store(KEY, b"v", 100, now))
    done = net.do(publisher, lambda h, now: h.withdraw(KEY, now))
    assert type(done) is StoreDone and done.stored >= 5
    found = net.do(net.ids[21], lambda h, now: h.find_value(KEY, now))
    assert found.records == ()
    sent_before = net.sim.stats.sent
    net.sim.run(net.sim.now + 200)
    assert net.node(publisher).stats()["published"] == 0
    assert net.sim.stats.sent - sent_before < 200      # maintenance only, no STOREs
