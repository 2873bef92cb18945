"""Service registry: advertise, discover (live providers only), withdraw, realms."""

import hashlib
import random

import msgpack
import pytest

from macula.dht import Contact, DhtConfig, DhtNode, StoreDone
from macula.dht.registry import Discovered, Provider, ServiceRegistry
from macula.sim import Sim


def nid(i: int) -> bytes:
    return hashlib.sha256(b"reg-%d" % i).digest()


class Mesh:
    """Registries over DHT cores in the simulator; node i is in realms[i % len]."""

    def __init__(self, n: int, realms: tuple[str, ...] = ("home",)) -> None:
        self.sim = Sim(5, on_event=self._event)
        self.events: dict = {}
        self.ids = [nid(i) for i in range(n)]
        config = DhtConfig(k=5, rpc_timeout=2.0, maintenance_interval=20.0)
        rng = random.Random(5)
        for i, node_id in enumerate(self.ids):
            addr = ("10.0.1.%d" % i, 9443)
            dht = DhtNode(node_id, config, rng=rng, now=self.sim.now)
            self.sim.add(node_id, ServiceRegistry(dht, realms[i % len(realms)], addr),
                         Contact(node_id, *addr))
            seeds = [Contact(self.ids[0], "10.0.1.0", 9443)] if i else []
            self.sim.call(node_id, lambda h, now: h.dht.bootstrap(seeds, now))
            self.sim.run(self.sim.now + 1.0)
        self.sim.run(self.sim.now + 30.0)

    def _event(self, node_id, event, now) -> None:
        self.events[(node_id, event.op_id)] = event

    def do(self, i: int, fn, wait: float = 30.0):
        op = self.sim.call(self.ids[i], fn)
        self.sim.run(self.sim.now + wait)
        return self.events.pop((self.ids[i], op))

    def discover(self, i: int, service: str) -> tuple[Provider, ...]:
        found = self.do(i, lambda h, now: h.discover(service, now))
        assert type(found) is Discovered and found.service == service
        return found.providers


def test_discover_finds_every_live_provider():
    mesh = Mesh(25)
    for i in (3, 11):
        done = mesh.do(i, lambda h, now: h.advertise("printer", {"dpi": 600, "i": i}, 120, now))
        assert type(done) is StoreDone and done.stored == 5
    providers = sorted(mesh.discover(20, "printer"), key=lambda p: p.metadata["i"])
    assert [(p.node_id, p.host, p.port, p.metadata) for p in providers] == [
        (mesh.ids[3], "10.0.1.3", 9443, {"dpi": 600, "i": 3}),
        (mesh.ids[11], "10.0.1.11", 9443, {"dpi": 600, "i": 11}),
    ]
    assert all(p.expires > mesh.sim.now for p in providers)
    assert mesh.discover(20, "scanner") == ()


def test_a_provider_is_readvertised_until_it_stops_and_then_never_returned():
    mesh = Mesh(25)
    mesh.do(3, lambda h, now: h.advertise("printer", {}, 60, now))
    mesh.sim.run(mesh.sim.now + 300)                      # five TTLs: re-advertised
    assert [p.node_id for p in mesh.discover(20, "printer")] == [mesh.ids[3]]
    mesh.sim.kill(mesh.ids[3])                            # crashes: no withdrawal
    mesh.sim.run(mesh.sim.now + 61)
    assert mesh.discover(20, "printer") == ()             # expired copies never come back


def test_shutdown_withdraws_every_service():
    mesh = Mesh(25)
    mesh.do(3, lambda h, now: h.advertise("printer", {}, 600, now))
    mesh.do(3, lambda h, now: h.advertise("scanner", {}, 600, now))
    ops = mesh.sim.call(mesh.ids[3], lambda h, now: h.shutdown(now))
    assert len(ops) == 2
    mesh.sim.run(mesh.sim.now + 30)
    assert mesh.discover(20, "printer") == () and mesh.discover(21, "scanner") == ()


def test_realms_never_see_each_others_services():
    mesh = Mesh(30, realms=("home", "office"))       # one DHT, two realms
    mesh.do(2, lambda h, now: h.advertise("printer", {"realm": "home"}, 600, now))
    assert [p.metadata for p in mesh.discover(4, "printer")] == [{"realm": "home"}]
    assert mesh.discover(5, "printer") == ()          # an office node
    mesh.do(7, lambda h, now: h.advertise("printer", {"realm": "office"}, 600, now))
    assert [p.metadata for p in mesh.discover(9, "printer")] == [{"realm": "office"}]
    assert [p.metadata for p in mesh.discover(4, "printer")] == [{"realm": "home"}]


def test_malformed_provider_records_are_skipped():
    mesh = Mesh(20)
    mesh.do(3, lambda h, now: h.advertise("printer", {}, 600, now))
    key = mesh.sim.host(mesh.ids[0]).key("printer")
    for i, junk in ((5, b"\xc1"), (6, msgpack.packb(["host", 70000, {}]))):
        mesh.do(i, lambda h, now: h.dht.store(key, junk, 600, now))
    reader = mesh.sim.host(mesh.ids[15])
    assert [p.node_id for p in mesh.discover(15, "printer")] == [mesh.ids[3]]
    assert reader.bad_records == 2


def test_bad_input_is_refused():
    reg = ServiceRegistry(DhtNode(nid(0), rng=random.Random(1)), "home", ("h", 1))
    with pytest.raises(ValueError):
        reg.advertise("bad name!", {}, 60, 0.0)
    with pytest.raises(ValueError):
        reg.advertise("printer", {"blob": b"x" * 9000}, 60, 0.0)
    with pytest.raises(ValueError):
        reg.advertise("printer", {1: "non-string key"}, 60, 0.0)
    with pytest.raises(ValueError):
        reg.discover("", 0.0)
