"""The CLI's options (issue 19, point 3): every option says what it takes, with its unit;
durations of 0 or below and negative counts are refused before anything connects; the
light-client commands take --config / MACULA_CONFIG for the node's address and realm."""

from __future__ import annotations

import argparse

import pytest

from macula.cli.main import build_parser, main, node_target
from macula.config import load_config, replace
from macula.errors import ConfigError

CLIENT_COMMANDS = ("pub", "sub", "call", "serve-echo")


def _subparsers(parser: argparse.ArgumentParser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sp in action.choices.items():
                yield path + (name,), sp
                yield from _subparsers(sp, path + (name,))


def test_every_option_and_argument_has_help_text():
    missing = []
    for path, sp in _subparsers(build_parser()):
        for action in sp._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                missing.append(f"{' '.join(path)} {action.dest}")
    assert missing == []


def test_durations_name_their_unit():
    for path, sp in _subparsers(build_parser()):
        for action in sp._actions:
            if action.dest in ("timeout", "duration", "ttl"):
                assert "seconds" in action.help, (path, action.dest, action.help)


@pytest.mark.parametrize("argv, says", [
    (["call", "--timeout", "0", "p"], "--timeout: expected a number of seconds > 0, got '0'"),
    (["call", "--timeout", "-1", "p"], "--timeout: expected a number of seconds > 0, got '-1'"),
    (["call", "--timeout", "nan", "p"], "--timeout: expected a number of seconds > 0, got 'nan'"),
    (["call", "--timeout", "inf", "p"], "--timeout: expected a number of seconds > 0, got 'inf'"),
    (["sub", "--timeout", "0", "t"], "--timeout: expected a number of seconds > 0, got '0'"),
    (["sub", "--timeout", "soon", "t"], "--timeout: expected a number of seconds > 0"),
    (["sub", "--count", "-3", "t"], "--count: expected an integer >= 0, got -3"),
    (["pub", "--count", "-1", "t", "m"], "--count: expected an integer >= 1, got -1"),
    (["advertise", "--ttl", "0", "svc"], "--ttl: expected an integer in 1..86400, got 0"),
    (["advertise", "--ttl", "-5", "svc"], "--ttl: expected an integer in 1..86400, got -5"),
    (["demo", "--duration", "0"], "--duration: expected a number of seconds > 0"),
    (["demo", "--nodes", "0"], "--nodes: expected an integer in 1..200, got 0"),
    (["pub", "--realm", "bad realm!", "t", "m"], "--realm: realm 'bad realm!' does not match"),
])
def test_bad_values_are_refused_with_one_line_naming_the_option(argv, says, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err


def test_sub_without_timeout_runs_until_stopped():
    args = build_parser().parse_args(["sub", "t.>"])
    assert args.timeout is None and args.count == 0


def _cfg(**network):
    base = load_config(system_file=False, env={})
    return replace(base, network=network)


@pytest.mark.parametrize("host, port, target", [
    ("0.0.0.0", 9443, "127.0.0.1:9443"), ("::", 9500, "[::1]:9500"),
    ("10.0.0.5", 9443, "10.0.0.5:9443"), ("fd00::5", 9443, "[fd00::5]:9443"),
])
def test_the_node_target_of_a_config_is_reachable_from_this_machine(host, port, target):
    assert node_target(_cfg(listen_host=host, listen_port=port)) == target


def test_a_config_with_port_0_asks_for_node(tmp_path, capsys, monkeypatch):
    conf = tmp_path / "agent.toml"
    conf.write_text("[network]\nlisten_port = 0\n")
    with pytest.raises(ConfigError, match="network.listen_port = 0 in .*pass --node"):
        node_target(load_config(conf, env={}))
    monkeypatch.setenv("MACULA_CONFIG", str(conf))
    assert main(["pub", "t", "m"]) == 78
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "network.listen_port = 0" in err


def test_a_missing_config_file_is_one_line_naming_it(tmp_path, capsys):
    missing = tmp_path / "nope.toml"
    assert main(["sub", "--config", str(missing), "t"]) == 78
    err = capsys.readouterr().err.strip()
    assert err == f"macula: error 500 CONFIG_INVALID: config file {missing} does not exist"
