"""Profiles: their shape, their budgets, which board gets which, and cgroup capping."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import pytest

from macula.hw import detect, detect_limits
from macula.hw.probe import MIB, Facts, PiRevision, probe
from macula.hw.profiles import (COSTS, IDLE_MIB, PROFILE_DIR, derive, estimate_agent_mib,
                                load_profiles, scaled_limits)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "hw"
MODEL, BOARDS = load_profiles()

PROFILE_OF = {
    "zero2w": "zero2w", "pi3bplus": "pi3bplus", "pi4b-2gb": "pi4b-2gb", "pi4b-4gb": "pi4b-4gb",
    "pi4b-8gb": "pi4b-8gb", "pi5-4gb": "pi5-4gb", "pi5-8gb": "pi5-8gb", "cm4-2gb": "cm4",
    "cm4-8gb": "cm4", "pi4b-1gb": "generic", "pi4b-4gb-debian": "pi4b-4gb",
    "pi4b-8gb-model-only": "pi4b-8gb", "x86-vm-unit": "generic", "container-v1": "generic",
}


def test_top_level_hw_is_the_package_profile_dir() -> None:
    # One copy: the package data is canonical (wheels and the .deb see real files) and
    # the repository's hw/ is a symlink to it.
    assert (REPO / "hw").is_symlink()
    assert (REPO / "hw").resolve() == PROFILE_DIR.resolve()


def test_required_boards_have_profiles() -> None:
    names = {p.name for p in BOARDS}
    assert names == {"zero2w", "pi3bplus", "pi4b-2gb", "pi4b-4gb", "pi4b-8gb", "pi5-4gb",
                     "pi5-8gb", "cm4"}


def test_every_scaled_key_has_a_cost() -> None:
    assert set(MODEL.scaled) == set(COSTS)


@pytest.mark.parametrize("profile", BOARDS, ids=lambda p: p.name)
def test_board_pins_every_key_for_one_ram_size_or_no_memory_key(profile) -> None:
    keys = set(profile.limits)
    assert keys <= set(MODEL.keys), keys - set(MODEL.keys)
    if profile.ram_mib is not None:
        assert keys == set(MODEL.keys)
    else:
        # Sold with several RAM sizes: memory-bound limits must scale, not be pinned.
        assert not keys & MODEL.memory_keys


@pytest.mark.parametrize("profile", BOARDS, ids=lambda p: p.name)
def test_board_budget_overrides_only_known_budget_keys(profile) -> None:
    assert set(profile.budget) <= set(MODEL.budget)
    if profile.ram_mib is not None:
        assert not profile.budget          # its budget is pinned in [limits]


@pytest.mark.parametrize("profile", BOARDS, ids=lambda p: p.name)
def test_board_values_have_the_generic_types(profile) -> None:
    reference = scaled_limits(MODEL, 1024, 4)
    for key, value in profile.limits.items():
        assert type(value) is type(reference[key]), key
        assert value > 0, key


@pytest.mark.parametrize("profile", [p for p in BOARDS if p.ram_mib], ids=lambda p: p.name)
def test_board_tables_fit_the_agent_budget_and_the_comment_says_so(profile) -> None:
    estimate = estimate_agent_mib(profile.limits)
    assert estimate <= profile.limits["agent_memory_mib"] * 0.8  # headroom for what is not modelled
    stated = re.search(r"estimate at these bounds ~(\d+) MiB", profile.path.read_text())
    assert stated and int(stated.group(1)) == round(estimate)


@pytest.mark.parametrize("fixture", sorted(PROFILE_OF))
def test_fixture_gets_its_profile(fixture: str) -> None:
    name, limits = detect_limits(FIXTURES / fixture)
    assert name == PROFILE_OF[fixture]
    assert set(limits) == set(MODEL.keys)
    assert estimate_agent_mib(limits) <= limits["agent_memory_mib"]


@pytest.mark.parametrize("fixture", [f for f in PROFILE_OF if f.startswith(("zero", "pi", "cm"))])
def test_agent_and_apps_leave_the_os_its_share(fixture: str) -> None:
    facts = probe(FIXTURES / fixture)
    limits = detect(FIXTURES / fixture).derivation.limits
    assert limits["agent_memory_mib"] + limits["apps_memory_mib"] <= 0.55 * facts.ram_mib


def test_profiles_never_overlap() -> None:
    types = sorted({t for p in BOARDS for t in p.pi_types})
    for type_id in types:
        for ram in (256, 512, 1024, 2048, 4096, 8192, 16384):
            facts = Facts("", PiRevision(0, type_id, ram, "", 0), ram * MIB, 4, None, None, True)
            assert sum(p.matches(facts) for p in BOARDS) <= 1, (hex(type_id), ram)


def test_unprofiled_pi_says_why_it_is_generic() -> None:
    der = detect(FIXTURES / "pi4b-1gb").derivation
    assert der.profile is None
    assert der.notes == ["no profile for Raspberry Pi 4B with 1024 MiB: generic scaling"]


def test_cm4_memory_bounds_scale_with_its_ram_and_cpu_bounds_stay() -> None:
    small = detect_limits(FIXTURES / "cm4-2gb")[1]
    large = detect_limits(FIXTURES / "cm4-8gb")[1]
    assert large["agent_memory_mib"] > small["agent_memory_mib"]
    assert large["agent_memory_mib"] == 512          # cm4.toml caps it as for pi4b-8gb
    assert large["apps_memory_mib"] > 4 * small["apps_memory_mib"]
    assert large["max_peers"] > small["max_peers"]
    assert large["handshakes_per_second"] == small["handshakes_per_second"] == 30


@pytest.mark.parametrize("ram_mib", [128, 256, 400, 512, 1000, 2048, 3800, 8000, 16000, 65536])
@pytest.mark.parametrize("cpus", [1, 2, 4, 16])
def test_generic_scaling_fits_its_budget_everywhere(ram_mib: int, cpus: int) -> None:
    facts = Facts("", None, ram_mib * MIB, cpus, None, None, None)
    limits = derive(facts, MODEL, BOARDS).limits
    assert estimate_agent_mib(limits) <= limits["agent_memory_mib"]
    assert limits["agent_memory_mib"] + limits["apps_memory_mib"] <= max(64, ram_mib * 0.3)
    assert limits["cpu_quota_percent"] == max(80, (cpus - 1) * 100)


def test_generic_limits_grow_with_ram() -> None:
    def limits(ram: int) -> dict:
        return derive(Facts("", None, ram * MIB, 4, None, None, None), MODEL, BOARDS).limits
    small, large = limits(1024), limits(8192)
    for key in MODEL.scaled:
        assert small[key] <= large[key], key
    assert small["max_peers"] < large["max_peers"]


def test_cgroup_limit_caps_the_budget_but_not_board_cpu_bounds() -> None:
    facts = dataclasses.replace(probe(FIXTURES / "pi5-8gb"), cgroup_memory_bytes=256 * MIB)
    der = derive(facts, MODEL, BOARDS)
    assert der.profile_name == "pi5-8gb"
    assert der.limits["agent_memory_mib"] + der.limits["apps_memory_mib"] == 256
    assert der.limits["handshakes_per_second"] == 60          # still a Pi 5's CPU
    assert der.limits["max_peers"] < 512
    assert estimate_agent_mib(der.limits) <= der.limits["agent_memory_mib"]
    assert "cgroup memory limit 256 MiB" in der.notes[0]


def test_cgroup_cpu_quota_caps_cpu_quota() -> None:
    facts = dataclasses.replace(probe(FIXTURES / "pi4b-4gb"), cgroup_cpu_percent=150.0)
    assert derive(facts, MODEL, BOARDS).limits["cpu_quota_percent"] == 150


def _with_unit_cgroup(src: Path, dst: Path, memory_max_mib: int, cpu_quota: int) -> Path:
    shutil.copytree(src, dst)
    (dst / "proc/self/cgroup").write_text("0::/system.slice/macula-agent.service\n")
    unit = dst / "sys/fs/cgroup/system.slice/macula-agent.service"
    unit.mkdir(parents=True, exist_ok=True)
    (unit / "memory.max").write_text(f"{memory_max_mib * MIB}\n")
    (unit / "cpu.max").write_text(f"{cpu_quota * 1000} 100000\n")
    return dst


@pytest.mark.parametrize("fixture", sorted(PROFILE_OF))
def test_limits_are_the_same_inside_the_units_own_cgroup(fixture: str, tmp_path: Path) -> None:
    # The drop-in's MemoryMax=/CPUQuota= become the agent's cgroup limits; detecting again
    # inside them must not shrink anything (no feedback loop across restarts).
    outside = detect(FIXTURES / fixture)
    inside_root = _with_unit_cgroup(FIXTURES / fixture, tmp_path / fixture,
                                    outside.memory_max_mib,
                                    outside.derivation.limits["cpu_quota_percent"])
    inside = detect(inside_root)
    assert inside.derivation.limits == outside.derivation.limits
    assert inside.derivation.profile_name == outside.derivation.profile_name


def test_idle_base_matches_the_memory_target() -> None:
    assert 35 <= IDLE_MIB <= 48     # limits.md: idle node <= 35 MiB RSS, plus slack
