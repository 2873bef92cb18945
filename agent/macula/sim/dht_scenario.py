"""The DHT at scale in the simulator: join, churn, lookups and stored values.

Timeline (virtual seconds):
  join      node 0 starts alone, every other node bootstraps through the 3 seeds,
            one every ``join_gap`` s; then the mesh settles for ``settle`` s
  store     ``values`` publishers (random live nodes) store one record each, TTL ``ttl``
  churn     for ``duration`` s: ``churn`` x nodes crash at random times (seeds excepted),
            each replaced by a fresh node with a new ID that joins through the seeds;
            ``lookups`` lookups of random targets from random live nodes
  check     ``settle`` s later, every stored key is looked up from a random live node

A lookup succeeds when the live server node closest to its target (among those that
finished joining before it started) is in the result. With ``ttl`` well below
``duration`` a record outlives the run only through republishing; records whose
publisher crashed more than ``ttl`` ago must not be returned at all.
"""

from __future__ import annotations

import hashlib
import random
import time
from typing import Any, Callable

from macula.dht import Contact, DhtConfig, DhtNode, LookupDone, ValueFound, make_key
from macula.sim.sim import Sim

SIM_CONFIG = DhtConfig(rpc_timeout=2.0, maintenance_interval=120.0, replicate_interval=1200.0)
SEEDS = 3


class _Run:
    def __init__(self, nodes: int, seed: int, churn: float, lookups: int, values: int,
                 clients: float, ttl: int, duration: float, join_gap: float, settle: float,
                 codec: float, loss: float, config: DhtConfig) -> None:
        self.n, self.churn, self.n_lookups, self.n_values = nodes, churn, lookups, values
        self.clients, self.ttl, self.duration = clients, ttl, duration
        self.join_gap, self.settle, self.config = join_gap, settle, config
        self.rng = random.Random(f"dht-scenario-{seed}")
        self.core_rng = random.Random(self.rng.getrandbits(64))   # shared by all cores
        self.sim = Sim(seed, codec=codec, loss=loss, on_event=self._on_event)
        self.waiting: dict[tuple[bytes, int], Callable[[bytes, Any, float], None]] = {}
        self.live: list[bytes] = []              # running nodes, for random picks
        self.live_pos: dict[bytes, int] = {}
        self.joined: dict[bytes, float] = {}     # running nodes that finished joining
        self.servers: dict[int, bytes] = {}      # int ID -> ID of running server nodes
        self.dead_at: dict[bytes, float] = {}
        self.seeds: list[Contact] = []
        self.spawned = 0
        self.lookup_rounds: list[int] = []
        self.lookup_msgs: list[int] = []
        self.lookup_ok = self.lookup_exact = 0
        self.join_rounds: list[int] = []
        self.published: list[tuple[bytes, bytes, bytes]] = []  # publisher, key, value
        self.value_found = self.value_expected = self.expired_returned = 0
        self.value_rounds: list[int] = []

    # ---- population ---------------------------------------------------------------------
    def spawn(self) -> bytes:
        i = self.spawned
        seeds = self.seeds[:]
        self.spawned += 1
        node_id = hashlib.sha256(self.rng.randbytes(32)).digest()   # SHA-256(identity key)
        client = i >= SEEDS and self.rng.random() < self.clients
        core = DhtNode(node_id, self.config, rng=self.core_rng, now=self.sim.now, client=client)
        contact = Contact(node_id, f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 9443)
        self.sim.add(node_id, core, node_id if client else contact)
        self.live_pos[node_id] = len(self.live)
        self.live.append(node_id)
        if not client:
            self.servers[int.from_bytes(node_id, "big")] = node_id
        if i < SEEDS:
            self.seeds.append(contact)
        op = self.sim.call(node_id, lambda h, now: h.bootstrap(seeds, now))
        self.waiting[(node_id, op)] = self._joined
        return node_id

    def _joined(self, node_id: bytes, ev: LookupDone, now: float) -> None:
        self.joined[node_id] = now
        self.join_rounds.append(ev.rounds)

    def kill_one(self) -> None:
        seeds = {c.node_id for c in self.seeds}
        while True:
            victim = self.rng.choice(self.live)
            if victim not in seeds:
                break
        self.sim.kill(victim)
        pos = self.live_pos.pop(victim)
        last = self.live.pop()
        if last != victim:
            self.live[pos] = last
            self.live_pos[last] = pos
        self.joined.pop(victim, None)
        self.servers.pop(int.from_bytes(victim, "big"), None)
        self.dead_at[victim] = self.sim.now
        self.spawn()

    def pick_joined(self) -> bytes:
        while True:
            node_id = self.rng.choice(self.live)
            if node_id in self.joined:
                return node_id

    def _on_event(self, node_id: bytes, ev: Any, now: float) -> None:
        done = self.waiting.pop((node_id, ev.op_id), None)
        if done is not None:
            done(node_id, ev, now)

    # ---- measurements -------------------------------------------------------------------
    def start_lookup(self) -> None:
        origin = self.pick_joined()
        target = self.rng.randbytes(32)
        started = self.sim.now
        op = self.sim.call(origin, lambda h, now: h.lookup_node(target, now))

        def done(node_id: bytes, ev: LookupDone, now: float) -> None:
            t = int.from_bytes(target, "big")
            joined = self.joined
            best = self.servers[min(self.servers, key=t.__xor__)]
            if joined.get(best, now + 1) > started:   # too new to be known: the next one
                best = self.servers[min((x for x, nid in self.servers.items()
                                         if joined.get(nid, now + 1) <= started),
                                        key=t.__xor__)]
            found = [c.node_id for c in ev.nodes]
            if int.from_bytes(origin, "big") in self.servers:   # a node is not in its own result
                found.insert(0, origin)
                found.sort(key=lambda n: int.from_bytes(n, "big") ^ t)
            self.lookup_ok += best in found
            self.lookup_exact += bool(found) and found[0] == best
            self.lookup_rounds.append(ev.rounds)
            self.lookup_msgs.append(ev.messages)

        self.waiting[(origin, op)] = done

    def publish(self, j: int) -> None:
        publisher = self.pick_joined()
        key = make_key("sim", f"service-{j}")
        value = f"provider-{j}".encode()
        self.sim.call(publisher, lambda h, now: h.store(key, value, self.ttl, now))
        self.published.append((publisher, key, value))

    def check_value(self, publisher: bytes, key: bytes, value: bytes) -> None:
        origin = self.pick_joined()
        op = self.sim.call(origin, lambda h, now: h.find_value(key, now))

        def done(node_id: bytes, ev: ValueFound, now: float) -> None:
            got = any(r.publisher == publisher and r.value == value for r in ev.records)
            self.value_rounds.append(ev.rounds)
            if publisher not in self.dead_at:
                self.value_expected += 1
                self.value_found += got
            elif self.dead_at[publisher] + self.ttl <= now:
                self.expired_returned += got

        self.waiting[(origin, op)] = done

    # ---- the run ------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        sim, rng = self.sim, self.rng
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(self.n):
            sim.at(i * self.join_gap, self.spawn)
        t_store = self.n * self.join_gap + self.settle
        for j in range(self.n_values):
            sim.at(t_store + j * 0.01, self.publish, j)
        t_churn = t_store + 60.0
        t_end = t_churn + self.duration
        for _ in range(round(self.churn * self.n)):
            sim.at(rng.uniform(t_churn, t_end), self.kill_one)
        for _ in range(self.n_lookups):
            sim.at(rng.uniform(t_churn, t_end), self.start_lookup)
        t_check = t_end + self.settle
        sim.run(t_check)
        joined_at_check = len(self.joined)
        wall_join_churn = time.perf_counter() - wall
        for publisher, key, value in self.published:
            self.check_value(publisher, key, value)
        sim.run(t_check + 60.0)
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        st = sim.stats
        done = len(self.lookup_rounds)
        return {
            "sim_nodes": self.n,
            "sim_loss": self.sim.loss,
            "sim_churned": round(self.churn * self.n),
            "sim_lookups": done,
            "sim_lookups_aborted": self.n_lookups - done,
            "sim_success_rate": self.lookup_ok / done if done else 0.0,
            "sim_exact_rate": self.lookup_exact / done if done else 0.0,
            "sim_rounds_p50": _pct(self.lookup_rounds, 50),
            "sim_rounds_p99": _pct(self.lookup_rounds, 99),
            "sim_rounds_max": max(self.lookup_rounds, default=0),
            "sim_rounds_hist": _hist(self.lookup_rounds),
            "sim_msgs_per_lookup_p50": _pct(self.lookup_msgs, 50),
            "sim_msgs_per_lookup_p99": _pct(self.lookup_msgs, 99),
            "sim_msgs_per_lookup_mean": round(sum(self.lookup_msgs) / done, 1) if done else 0.0,
            "sim_join_rounds_p50": _pct(self.join_rounds, 50),
            "sim_nodes_joined": joined_at_check,
            "sim_values": len(self.published),
            "sim_values_expected": self.value_expected,
            "sim_value_survival": self.value_found / self.value_expected if self.value_expected else 0.0,
            "sim_expired_returned": self.expired_returned,
            "sim_value_rounds_p50": _pct(self.value_rounds, 50),
            "sim_ttl_s": self.ttl,
            "sim_virtual_s": round(sim.now),
            "sim_messages": st.sent,
            "sim_lost_to_dead": st.to_dead,
            "sim_codec_checked": st.encoded,
            "sim_wall_s": round(wall, 1),
            "sim_cpu_s": round(cpu, 1),
            "sim_wall_join_churn_s": round(wall_join_churn, 1),
        }


def _pct(xs: list[int], p: int) -> int:
    if not xs:
        return 0
    s = sorted(xs)
    return s[min(len(s) - 1, (len(s) * p) // 100)]


def _hist(xs: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for x in sorted(xs):
        out[x] = out.get(x, 0) + 1
    return out


def run(nodes: int = 1000, seed: int = 1, churn: float = 0.1, lookups: int = 1000,
        values: int = 100, clients: float = 0.05, ttl: int = 1200, duration: float = 3600.0,
        join_gap: float = 0.05, settle: float = 300.0, codec: float | None = None,
        loss: float = 0.0, config: DhtConfig = SIM_CONFIG) -> dict[str, Any]:
    """One scenario; returns the figures (see the module docstring). ``codec``
    defaults to every message up to 2,000 nodes and 1 % above; ``loss`` is the
    chance that a message is dropped."""
    if codec is None:
        codec = 1.0 if nodes <= 2000 else 0.01
    return _Run(nodes, seed, churn, lookups, values, clients, ttl, duration, join_gap,
                settle, codec, loss, config).run()
