"""The resource drop-in generator and the first-boot config, on real files."""

from __future__ import annotations

from pathlib import Path

from macula.config import load_config
from macula.service import firstboot, generator

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hw"


def test_generator_writes_the_dropin_for_the_board(tmp_path: Path) -> None:
    normal, early, late = (tmp_path / d for d in ("normal", "early", "late"))
    assert generator.main([str(normal), str(early), str(late)], root=FIXTURES / "pi4b-2gb") == 0
    dropin = normal / "macula-agent.service.d" / "50-hw-limits.conf"
    text = dropin.read_text()
    assert "MemoryMax=896M\n" in text and "CPUQuota=300%\n" in text
    assert "'pi4b-2gb'" in text
    assert not early.exists() and not late.exists()


def test_generator_failure_is_reported_not_raised(tmp_path: Path, capsys) -> None:
    assert generator.main([str(tmp_path / "out")], root=tmp_path / "no-proc-here") == 1
    assert "no resource limits written" in capsys.readouterr().err
    assert not (tmp_path / "out" / "macula-agent.service.d" / "50-hw-limits.conf").exists()


def test_generator_needs_its_output_directory(capsys) -> None:
    assert generator.main([]) == 2


def test_boot_config_is_applied_once(tmp_path: Path) -> None:
    boot, dest = tmp_path / "boot" / "macula.toml", tmp_path / "etc" / "macula" / "agent.toml"
    boot.parent.mkdir()
    boot.write_text('[node]\nname = "pi-17"\n[network]\nseeds = ["10.0.0.2:9443"]\n')
    assert firstboot.apply_boot_config(boot, dest) == "applied"
    assert not boot.exists()
    assert dest.stat().st_mode & 0o777 == 0o644
    cfg = load_config(dest, env={}, limits=None)
    assert cfg.node.name == "pi-17" and cfg.network.seeds == ("10.0.0.2:9443",)
    assert firstboot.apply_boot_config(boot, dest) == "absent"
    assert load_config(dest, env={}).node.name == "pi-17"


def test_invalid_boot_config_keeps_the_installed_one(tmp_path: Path) -> None:
    boot, dest = tmp_path / "macula.toml", tmp_path / "agent.toml"
    dest.write_text('[node]\nname = "home"\n')
    boot.write_text('[node]\nname = "pi 17"\n')     # a space is not allowed in a name
    assert firstboot.main([str(boot), str(dest)]) == 1
    assert dest.read_text() == '[node]\nname = "home"\n'
    assert not boot.exists()
    assert (tmp_path / "macula.toml.invalid").exists()
    # Not retried at every boot: the rejected file no longer has the name the unit waits for.
    assert firstboot.main([str(boot), str(dest)]) == 0
