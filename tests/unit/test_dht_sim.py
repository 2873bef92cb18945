"""The DHT at 1,000 nodes in the simulator, 10 % churned (the 10,000-node run is
bench/dht_sim.py). Every message goes through the wire codec."""

import pytest

from macula.sim import dht_scenario


@pytest.mark.slow
def test_1000_nodes_with_a_tenth_churned():
    r = dht_scenario.run(nodes=1000, seed=1, churn=0.1, lookups=1000, values=100)
    assert r["sim_churned"] == 100 and r["sim_nodes_joined"] == 1000
    assert r["sim_lookups"] >= 990                      # origins that died mid-lookup aside
    assert r["sim_success_rate"] >= 0.999
    assert r["sim_rounds_p99"] <= 6                     # log2(1000 / k) ~ 5.6
    assert r["sim_msgs_per_lookup_p99"] <= 80
    assert r["sim_values_expected"] >= 80
    assert r["sim_value_survival"] == 1.0               # through republish: ttl << run
    assert r["sim_virtual_s"] > 3 * r["sim_ttl_s"]
    assert r["sim_expired_returned"] == 0
    assert r["sim_codec_checked"] == r["sim_messages"] - r["sim_lost_to_dead"]


def test_same_seed_same_figures():
    small = dict(nodes=60, seed=3, lookups=50, values=5, duration=600.0, settle=60.0)
    a, b = dht_scenario.run(**small), dht_scenario.run(**small)
    for r in (a, b):
        del r["sim_wall_s"], r["sim_wall_join_churn_s"], r["sim_cpu_s"]
    assert a == b
