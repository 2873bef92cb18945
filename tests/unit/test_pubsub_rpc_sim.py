"""The real pub/sub and RPC cores on 1,000 simulated nodes, under churn
(macula.sim.pubsub_rpc_scenario; `python bench/run pubsub_rpc_sim` prints the figures)."""

import pytest

from macula.sim import pubsub_rpc_scenario as scenario


@pytest.mark.slow
def test_1000_nodes_publishes_and_calls_with_a_tenth_churned():
    r = scenario.run(nodes=1000, seed=1, churn=0.1)
    assert r["sim_nodes"] == 1000 and r["sim_crashes"] == 100
    assert r["sim_publishes"] >= 2500 and r["sim_delivery_expected"] >= 100_000
    assert r["sim_delivery_ratio"] >= 0.999
    assert r["sim_out_of_order"] == 0 and r["sim_group_duplicates"] == 0
    assert r["sim_calls"] >= 1800 and r["sim_call_success"] >= 0.99
    assert r["sim_to_dead"] > 0          # churn did hit the traffic


def test_heavy_churn_small_mesh_keeps_order_and_fails_calls_over():
    r = scenario.run(nodes=200, seed=2, churn=0.4, publishes=400, bursts=20, calls=400,
                     duration=10.0, codec=1.0)
    assert r["sim_delivery_ratio"] >= 0.99 and r["sim_out_of_order"] == 0
    assert r["sim_call_success"] >= 0.98
    assert r["sim_encoded"] == r["sim_messages"] - r["sim_to_dead"]  # every frame's schema


def test_same_seed_same_figures():
    small = dict(nodes=50, seed=3, publishes=100, bursts=5, calls=100, duration=5.0)
    a, b = scenario.run(**small), scenario.run(**small)
    for r in (a, b):
        del r["sim_wall_s"]
    assert a == b
