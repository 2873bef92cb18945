"""1,000 cluster cores on the simulator: they join, and every change reaches every node."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("macula.sim")   # the shared simulator; bench/gossip_sim.py drives it
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from gossip_sim import GossipSim  # noqa: E402
from macula.crdt import digest  # noqa: E402


@pytest.mark.slow
def test_a_thousand_nodes_converge_on_every_change() -> None:
    sim = GossipSim(1000, seed=7, metadata=False, codec=0.05)
    sim.join_all(0.01, whole=False)
    times = [sim.spread(origin, value) for value, origin in enumerate((0, 499, 999))]
    print(f"\n1,000 simulated nodes: changes reached all in {', '.join(f'{t:.2f}' for t in times)} s")
    assert max(times) < 10.0
    sim.sim.run(sim.sim.now + 5.0)   # acks and the last pushes settle
    assert len({digest(core.gossip.replica("nodes")) for core in sim.cores.values()}) == 1


def test_with_loss_the_state_still_converges() -> None:
    sim = GossipSim(100, seed=8, loss=0.02, codec=0.2)
    sim.join_all(0.01)
    times = [sim.spread(origin, value) for value, origin in enumerate((3, 50, 75, 99))]
    print(f"\n100 simulated nodes, 2% loss: changes reached all in {', '.join(f'{t:.2f}' for t in times)} s")
    sim.sim.run(sim.sim.now + 10.0)
    for name in ("nodes", "procedures", "subscriptions"):
        assert len({digest(core.gossip.replica(name)) for core in sim.cores.values()}) == 1, name
    assert all(len(core.live()) == 99 for core in sim.cores.values())
