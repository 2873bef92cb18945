"""Operator-facing errors without a node (hardening issue, items 6 and 7): config files
that broke the TOML parser's assumptions, CLI arguments refused locally, and the docs
that state what the code does."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from macula.cli.main import main
from macula.config import load_config
from macula.errors import ConfigError, ErrorCode, ProtocolError
from macula.wire.codec import decode_body
from macula.wire.messages import MsgType

DOCS = Path(__file__).resolve().parents[2] / "docs"


# -- config files -------------------------------------------------------------------------

def _one_config_error_line(capsys, argv) -> str:
    assert main(argv) == 78
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_non_utf8_config_is_a_config_error_naming_the_file(tmp_path, capsys):
    path = tmp_path / "agent.toml"
    path.write_bytes(b'[node]\nname = "caf\xe9"\n')  # latin-1, as some editors save it
    with pytest.raises(ConfigError, match=f"config file {path} is not valid TOML: not UTF-8"):
        load_config(path, env={}, limits={})
    err = _one_config_error_line(capsys, ["config", "check", str(path)])
    assert str(path) in err and "not UTF-8 (byte 0xe9 at offset 18)" in err


def test_deeply_nested_config_is_a_config_error_naming_the_file(tmp_path, capsys):
    path = tmp_path / "agent.toml"
    path.write_text("[node]\nx = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(path, env={}, limits={})
    err = _one_config_error_line(capsys, ["config", "check", str(path)])
    assert str(path) in err and "nested too deeply" in err


def test_macula_run_with_a_non_utf8_config_exits_78(tmp_path, capsys):
    path = tmp_path / "agent.toml"
    path.write_bytes(b"\xff\xfe[node]\n")
    assert str(path) in _one_config_error_line(capsys, ["run", "--config", str(path)])


# -- CLI arguments ------------------------------------------------------------------------

@pytest.mark.parametrize("argv, says", [
    (["pub", "--count", "-5", "t", "m"], "--count: expected an integer >= 1, got -5"),
    (["pub", "--count", "0", "t", "m"], "--count: expected an integer >= 1, got 0"),
    (["sub", "--count", "-1", "t"], "--count: expected an integer >= 0, got -1"),
    (["sub", "--group", "g g", "t"], "--group: queue group 'g g' does not match"),
    (["sub", "--group", "x" * 65, "t"], "--group: queue group length 65 not in [1, 64]"),
    (["pub", "--node", "host:notaport", "t", "m"],
     "--node: 'host:notaport': expected host:port with a port in 1..65535"),
    (["pub", "--node", "nonsense.invalid", "t", "m"],
     "--node: 'nonsense.invalid': cannot resolve 'nonsense.invalid'"),
])
def test_bad_client_arguments_are_refused_before_connecting(argv, says, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_good_client_arguments_still_parse():
    from macula.cli.main import build_parser

    args = build_parser().parse_args(["sub", "--group", "workers-1.a", "--count", "0",
                                      "--node", "localhost:9443", "t.>"])
    assert (args.group, args.count, args.node) == ("workers-1.a", 0, "localhost:9443")
    assert build_parser().parse_args(["pub", "t", "m"]).count == 1


# -- docs match the code ------------------------------------------------------------------

def test_timestamp_extension_is_bad_field_as_the_docs_say():
    body = msgpack.packb([msgpack.Timestamp(1, 0), b"x"])
    with pytest.raises(ProtocolError) as info:
        decode_body(MsgType.PUBLISH, body)
    assert info.value.code is ErrorCode.BAD_FIELD
    errors = (DOCS / "ERRORS.md").read_text()
    bad_field = next(ln for ln in errors.splitlines() if ln.startswith("| 106 |"))
    bad_encoding = next(ln for ln in errors.splitlines() if ln.startswith("| 105 |"))
    assert "timestamp extension" in bad_field and "extension" not in bad_encoding
    protocol = (DOCS / "PROTOCOL.md").read_text()
    assert "timestamp extension) are never accepted: they decode,\n  but no field accepts " \
           "them, so the body is `BAD_FIELD`" in protocol
