"""The [cluster] section, the gossip limits and the settings the node derives from them."""

from __future__ import annotations

import pytest

from macula.cluster import cluster_cap, reachable_address
from macula.config import load_config
from macula.errors import ConfigError
from macula.hw import generic_limits
from macula.settings import cluster_settings
from macula.wire.fields import FieldError
from macula.wire.messages import Caps

LIMITS = generic_limits(1024, 2)


def load(tmp_path, toml: str = "", env: dict | None = None, limits: dict | None = None):
    path = tmp_path / "agent.toml"
    path.write_text(toml)
    return load_config(path, env=env or {}, limits={**LIMITS, **(limits or {})})


def test_defaults_come_from_the_section_and_the_hardware_profile(tmp_path):
    cfg = load(tmp_path)
    assert cfg.cluster.name == "" and cfg.cluster.max_members == 10
    assert (cfg.limits.gossip_fanout, cfg.limits.gossip_interval) == (3, 0.5)   # generic profile
    s = cluster_settings(cfg)
    assert (s.gossip_fanout, s.gossip_interval, s.max_message_bytes) == (3, 0.5, 64 * 1024)


def test_file_and_environment_set_the_keys(tmp_path):
    cfg = load(tmp_path, '[cluster]\nname = "kitchen"\nprobe_interval = 2.0\n[limits]\ngossip_fanout = 2',
               env={"MACULA_CLUSTER_MAX_MEMBERS": "12"})
    assert (cfg.cluster.name, cfg.cluster.probe_interval, cfg.cluster.max_members) == ("kitchen", 2.0, 12)
    assert cluster_settings(cfg).gossip_fanout == 2


@pytest.mark.parametrize("toml, expected", [
    ('[cluster]\nname = "a-name-longer-than-24-chars"', "cluster.name"),
    ('[cluster]\nname = "-bad"', "cluster.name"),
    ("[cluster]\nmax_members = 1", "[2, 4096]"),
    ("[cluster]\nprobe_timeout = 1.0", "cluster.probe_timeout: expected < cluster.probe_interval"),
    ("[limits]\ngossip_fanout = 0", "limits.gossip_fanout"),
    ("[limits]\ngossip_interval = 0.001", "limits.gossip_interval"),
])
def test_bad_values_are_refused_with_the_key_named(tmp_path, toml, expected):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, toml)
    assert expected in info.value.message


def test_the_cluster_capability_fits_the_connect_field_at_the_longest_name():
    check = Caps.__metadata__[0]
    check(("node", cluster_cap("x" * 24)))
    with pytest.raises(FieldError):   # why the name is capped at 24 characters
        check(("node", cluster_cap("x" * 25)))


def test_members_are_capped_by_the_peer_pool_and_messages_by_the_frame_size(tmp_path):
    cfg = load(tmp_path, limits={"max_peers": 8, "max_frame_bytes": 32768})
    s = cluster_settings(cfg)
    assert s.max_members == 9 and s.max_message_bytes == 32768
    with pytest.raises(ConfigError) as info:
        cluster_settings(load(tmp_path, limits={"max_frame_bytes": 4096}))
    assert "limits.max_frame_bytes" in info.value.message


def test_a_wildcard_listen_address_is_replaced_by_the_route_to_a_seed():
    assert reachable_address(("0.0.0.0", 9443), [("127.0.0.1", 4433)]) == ("127.0.0.1", 9443)
    assert reachable_address(("0.0.0.0", 9443), []) == ("0.0.0.0", 9443)
    assert reachable_address(("192.0.2.7", 9443), [("127.0.0.1", 4433)]) == ("192.0.2.7", 9443)
