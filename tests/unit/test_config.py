"""Configuration: defaults, TOML file, MACULA_* environment, and errors that say what is wrong."""

import dataclasses
import re
import tomllib

import pytest

import macula.config.load as config_load
from macula.config import load_config, parse_address, render_defaults, replace
from macula.config.schema import SECTIONS
from macula.errors import ConfigError, ErrorCode
from macula.hw import generic_limits

LIMITS = generic_limits(1024, 2)


@pytest.fixture(autouse=True)
def no_system_config(tmp_path, monkeypatch):
    """Never read the machine's /etc/macula/agent.toml."""
    monkeypatch.setattr(config_load, "DEFAULT_PATH", tmp_path / "absent" / "agent.toml")


def load(tmp_path, toml: str | None = None, env: dict | None = None, **kw):
    path = None
    if toml is not None:
        path = tmp_path / "agent.toml"
        path.write_text(toml)
    return load_config(path, env=env or {}, limits=kw.pop("limits", LIMITS), **kw)


def error(tmp_path, toml: str | None = None, env: dict | None = None, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, toml, env, **kw)
    assert info.value.code is ErrorCode.CONFIG_INVALID
    return info.value.message


# ---- defaults, file, environment ----------------------------------------------------
def test_embedded_defaults():
    cfg = load_config(env={}, limits=LIMITS)
    for name, cls in SECTIONS.items():
        if name != "limits":
            assert getattr(cfg, name) == cls()
    limits = dataclasses.asdict(cfg.limits)
    assert limits == {key: LIMITS[key] for key in limits}  # the profile may carry more keys
    assert cfg.source == "embedded defaults" and cfg.hw_profile == "custom"
    assert cfg.node.realm == "default" and cfg.network.listen_port == 9443
    assert cfg.tls.mode == "development" and cfg.network.seeds == ()


def test_default_path_is_read_when_present(tmp_path, monkeypatch):
    path = tmp_path / "agent.toml"
    path.write_text('[node]\nrealm = "from-etc"\n')
    monkeypatch.setattr(config_load, "DEFAULT_PATH", path)
    cfg = load_config(env={}, limits=LIMITS)
    assert cfg.node.realm == "from-etc" and cfg.source == str(path)


def test_file_values(tmp_path):
    cfg = load(tmp_path, """
[node]
name = "pi-kitchen"
realm = "home.lab"
log_level = "debug"
[network]
listen_port = 4433
seeds = ["seed1:4433", "[fd00::1]:9000"]
[tls]
mode = "development"
[timeouts]
connect = 3          # an int is accepted for a float key
keepalive = 2.5
[limits]
max_peers = 7
""")
    assert cfg.node.name == "pi-kitchen" and cfg.node.realm == "home.lab"
    assert cfg.node.log_level == "debug" and cfg.network.listen_port == 4433
    assert cfg.network.seeds == ("seed1:4433", "[fd00::1]:9000")
    assert cfg.seed_addresses() == [("seed1", 4433), ("fd00::1", 9000)]
    assert cfg.timeouts.connect == 3.0 and type(cfg.timeouts.connect) is float
    assert cfg.timeouts.keepalive == 2.5
    assert cfg.limits.max_peers == 7 and cfg.limits.max_clients == LIMITS["max_clients"]
    assert cfg.source == str(tmp_path / "agent.toml")


def test_config_path_from_environment(tmp_path):
    path = tmp_path / "other.toml"
    path.write_text('[node]\nrealm = "via-env"\n')
    cfg = load_config(env={"MACULA_CONFIG": str(path)}, limits=LIMITS)
    assert cfg.node.realm == "via-env"


def test_environment_overrides_file(tmp_path):
    cfg = load(tmp_path, '[node]\nrealm = "file"\n[network]\nlisten_port = 1\n', env={
        "MACULA_NODE_REALM": "env",
        "MACULA_NETWORK_LISTEN_PORT": " 5000 ",
        "MACULA_NETWORK_SEEDS": "a:1, b:2,,",
        "MACULA_TIMEOUTS_IDLE": "90.5",
        "MACULA_TLS_MODE": "development",
        "MACULA_LIMITS_MAX_PEERS": "9",
        "MACULA_UNRELATED": "ignored",
        "OTHER_NODE_REALM": "ignored",
    })
    assert cfg.node.realm == "env" and cfg.network.listen_port == 5000
    assert cfg.network.seeds == ("a:1", "b:2") and cfg.timeouts.idle == 90.5
    assert cfg.limits.max_peers == 9


@pytest.mark.parametrize("var,section,key,value,expected", [
    ("MACULA_REALM", "node", "realm", "lab", "lab"),
    ("MACULA_SEEDS", "network", "seeds", "h1:1,h2", ("h1:1", "h2")),
    ("MACULA_BOOTSTRAP_PEERS", "network", "seeds", "https://h:4433,https://g:4433",
     ("https://h:4433", "https://g:4433")),
])
def test_environment_aliases(tmp_path, var, section, key, value, expected):
    cfg = load(tmp_path, env={var: value})
    assert getattr(getattr(cfg, section), key) == expected


def test_full_variable_names_beat_aliases_whatever_the_order(tmp_path):
    for env in ({"MACULA_REALM": "alias", "MACULA_NODE_REALM": "full"},
                {"MACULA_NODE_REALM": "full", "MACULA_REALM": "alias"}):
        assert load(tmp_path, env=env).node.realm == "full"
    for env in ({"MACULA_SEEDS": "a:1", "MACULA_BOOTSTRAP_PEERS": "b:2"},
                {"MACULA_BOOTSTRAP_PEERS": "b:2", "MACULA_SEEDS": "a:1"}):
        assert load(tmp_path, env=env).network.seeds == ("a:1",)


def test_replace_changes_only_the_given_keys(tmp_path):
    cfg = load(tmp_path)
    new = replace(cfg, network={"listen_port": 0}, node={"name": "x"})
    assert new.network.listen_port == 0 and new.node.name == "x"
    assert new.network.listen_host == cfg.network.listen_host and cfg.network.listen_port == 9443


# ---- errors name the key and the expected value -------------------------------------
@pytest.mark.parametrize("toml,expected", [
    ('[network]\nlisten_port = "9443"', ["network.listen_port", "an integer", "'9443'"]),
    ('[network]\nlisten_port = true', ["network.listen_port", "an integer"]),
    ('[network]\nlisten_port = 1.5', ["network.listen_port", "an integer"]),
    ('[network]\nlisten_port = 70000', ["network.listen_port", "[0, 65535]", "70000"]),
    ('[timeouts]\nconnect = 0', ["timeouts.connect", "[0.1, 300]"]),
    ('[timeouts]\nidle = "60"', ["timeouts.idle", "a number"]),
    ('[node]\nlog_level = "verbose"', ["node.log_level", "'debug'", "'verbose'"]),
    ('[node]\nrealm = "no spaces"', ["node.realm", "A-Z a-z 0-9"]),
    ('[node]\nrealm = ""', ["node.realm"]),
    ('[node]\nname = 5', ["node.name", "a string"]),
    ('[tls]\nmode = "prod"', ["tls.mode", "'production'"]),
    ('[network]\nseeds = "a:1"', ["network.seeds", "a list of strings"]),
    ('[network]\nseeds = [1]', ["network.seeds", "a list of strings"]),
    ('[network]\nseeds = ["ok:1", "h:99999"]', ["network.seeds", "1..65535", "h:99999"]),
    ('[network]\nseeds = ["[::1"]', ["network.seeds", "[ipv6]"]),
    ('[limits]\nmax_frame_bytes = 100', ["limits.max_frame_bytes", "[1024, 16777216]"]),
    ('[timeouts]\nreconnect_base = 10\nreconnect_cap = 5', ["timeouts.reconnect_cap",
                                                           "timeouts.reconnect_base"]),
    ('[nod]\nrealm = "x"', ["unknown section 'nod'", "did you mean 'node'"]),
    ('[zzzz]', ["unknown section 'zzzz'", "known: " + ", ".join(sorted(SECTIONS))]),
    ('[node]\nrelam = "x"', ["[node]", "'relam'", "did you mean 'realm'"]),
    ('node = 5', ["node", "[node] table"]),
    ('[tls]\nmode = "production"\ncert_file = "/c"',
     ["production", "tls.key_file", "tls.ca_file"]),
    ('[node\nrealm = "x"', ["not valid TOML"]),
])
def test_bad_file_values(tmp_path, toml, expected):
    message = error(tmp_path, toml)
    for part in expected:
        assert part in message, (part, message)


@pytest.mark.parametrize("env,expected", [
    ({"MACULA_NETWORK_LISTEN_PORT": "abc"}, ["network.listen_port", "int", "'abc'", "environment"]),
    ({"MACULA_NETWORK_LISTEN_PORT": "-1"}, ["network.listen_port", "[0, 65535]"]),
    ({"MACULA_TIMEOUTS_CONNECT": "nan"}, ["timeouts.connect", "[0.1, 300]"]),
    ({"MACULA_TIMEOUTS_CONNECT": "fast"}, ["timeouts.connect", "float", "'fast'"]),
    ({"MACULA_NODE_NAEM": "x"}, ["MACULA_NODE_NAEM", "did you mean 'name'"]),
    ({"MACULA_LIMITS_MAX_PEER": "5"}, ["MACULA_LIMITS_MAX_PEER", "did you mean 'max_peers'"]),
    ({"MACULA_SEEDS": "good:1,bad:0"}, ["network.seeds", "1..65535"]),
    ({"MACULA_REALM": "bad realm"}, ["node.realm"]),
    ({"MACULA_TLS_MODE": "production"}, ["tls.cert_file", "tls.key_file", "tls.ca_file"]),
])
def test_bad_environment_values(tmp_path, env, expected):
    message = error(tmp_path, env=env)
    for part in expected:
        assert part in message, (part, message)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={}, limits=LIMITS)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path, env={}, limits=LIMITS)  # a directory


def test_hardware_profile_must_cover_every_limit(tmp_path):
    partial = dict(LIMITS)
    del partial["pinned_peers"]
    assert "limits.pinned_peers" in error(tmp_path, limits=partial)
    # a file value stands in for the missing hardware default
    cfg = load(tmp_path, "[limits]\npinned_peers = 64", limits=partial)
    assert cfg.limits.pinned_peers == 64


def test_production_mode_with_all_files_named(tmp_path):
    cfg = load(tmp_path, '[tls]\nmode = "production"\ncert_file = "/c"\nkey_file = "/k"\n'
                         'ca_file = "/ca"')
    assert cfg.tls.mode == "production" and cfg.tls.ca_file == "/ca"


# ---- addresses ----------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("seed", ("seed", 9443)),
    ("seed:4433", ("seed", 4433)),
    (" seed:1 ", ("seed", 1)),
    ("10.0.0.1:65535", ("10.0.0.1", 65535)),
    ("[fd00::1]:9000", ("fd00::1", 9000)),
    ("[fd00::1]", ("fd00::1", 9443)),
    ("fd00::1", ("fd00::1", 9443)),
    ("quic://seed:4433", ("seed", 4433)),
    ("quic://[::1]:5/", ("::1", 5)),
    ("https://seed:4433", ("seed", 4433)),
    ("macula://seed", ("seed", 9443)),
])
def test_parse_address_forms(text, expected):
    assert parse_address(text, 9443) == expected


@pytest.mark.parametrize("text", [
    "", "   ", "quic://", ":4433", "[]:1", "seed:0", "seed:65536", "seed:", "seed:x", "seed:+5",
    "seed:²", "seed:\u0661\u0662", "[::1", "[::1]x", "[::1]:", "[::1]:0", "two words:1",
    "seed:1/path",
])
def test_parse_address_refuses(text):
    with pytest.raises(ValueError):
        parse_address(text, 9443)


# ---- the rendered conffile ----------------------------------------------------------
KEY_LINE = re.compile(r"^# ([a-z_]+) = (.*)$")


def test_render_defaults_parses_and_mentions_every_key(tmp_path):
    text = render_defaults(LIMITS)
    assert tomllib.loads(text) == {name: {} for name in SECTIONS}  # every key commented
    for name, cls in SECTIONS.items():
        section = text.split(f"[{name}]\n", 1)[1].split("\n[", 1)[0]
        for f in dataclasses.fields(cls):
            assert re.search(rf"^# {f.name} = ", section, re.M), (name, f.name)
            assert f.metadata["doc"] and f"# {f.metadata['doc']}" in section


def test_render_defaults_uncommented_is_the_default_config(tmp_path):
    text = render_defaults(LIMITS)
    uncommented = "\n".join(KEY_LINE.sub(r"\1 = \2", line) for line in text.splitlines())
    path = tmp_path / "agent.toml"
    path.write_text(uncommented)
    from_file = load_config(path, env={}, limits=generic_limits(512, 1))  # other hw defaults
    defaults = load_config(env={}, limits=LIMITS)
    for name in SECTIONS:
        assert getattr(from_file, name) == getattr(defaults, name), name
