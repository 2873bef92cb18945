"""Detection from recorded /proc and /sys trees (tests/fixtures/hw/<board>/) and live."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from macula.hw.probe import MIB, decode_revision, probe

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hw"

# fixture: (model, revision, cpus, nominal RAM MiB, cgroup memory MiB, cgroup CPU %, memcg)
EXPECTED = {
    "zero2w": ("Raspberry Pi Zero 2 W Rev 1.0", 0x902120, 4, 512, None, None, False),
    "pi3bplus": ("Raspberry Pi 3 Model B Plus Rev 1.3", 0xA020D3, 4, 1024, None, None, False),
    "pi4b-2gb": ("Raspberry Pi 4 Model B Rev 1.5", 0xB03115, 4, 2048, None, None, True),
    "pi4b-4gb": ("Raspberry Pi 4 Model B Rev 1.4", 0xC03114, 4, 4096, None, None, True),
    "pi4b-8gb": ("Raspberry Pi 4 Model B Rev 1.4", 0xD03114, 4, 8192, None, None, True),
    "pi5-4gb": ("Raspberry Pi 5 Model B Rev 1.0", 0xC04170, 4, 4096, None, None, True),
    "pi5-8gb": ("Raspberry Pi 5 Model B Rev 1.0", 0xD04170, 4, 8192, None, None, True),
    "cm4-2gb": ("Raspberry Pi Compute Module 4 Rev 1.1", 0xB03141, 4, 2048, None, None, True),
    "cm4-8gb": ("Raspberry Pi Compute Module 4 Rev 1.1", 0xD03141, 4, 8192, None, None, True),
    "pi4b-1gb": ("Raspberry Pi 4 Model B Rev 1.1", 0xA03111, 4, 1024, None, None, True),
    "pi4b-4gb-debian": ("Raspberry Pi 4 Model B Rev 1.1", 0xC03111, 4, 4096, None, None, True),
    "pi4b-8gb-model-only": ("Raspberry Pi 4 Model B Rev 1.4", None, 4, 8192, None, None, True),
    "x86-vm-unit": ("", None, 2, 4096, 256, 150.0, True),
    "container-v1": ("", None, 8, 16384, 128, None, True),
}


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()) == sorted(EXPECTED)


@pytest.mark.parametrize("board", sorted(EXPECTED))
def test_probe_recorded_board(board: str) -> None:
    model, revision, cpus, nominal, cg_mem, cg_cpu, memcg = EXPECTED[board]
    facts = probe(FIXTURES / board)
    assert facts.model == model
    assert (facts.revision.code if facts.revision else None) == revision
    assert facts.cpus == cpus
    assert facts.nominal_ram_mib == nominal
    assert (None if facts.cgroup_memory_bytes is None else facts.cgroup_memory_bytes // MIB) == cg_mem
    assert facts.cgroup_cpu_percent == cg_cpu
    assert facts.memory_controller is memcg


@pytest.mark.parametrize("code, type_name, ram, processor, pcb", [
    (0x902120, "Zero 2 W", 512, "BCM2837", 0),
    (0xA020D3, "3B+", 1024, "BCM2837", 3),
    (0xB03115, "4B", 2048, "BCM2711", 5),
    (0xD03114, "4B", 8192, "BCM2711", 4),
    (0xC03141, "CM4", 4096, "BCM2711", 1),
    (0xC04170, "5", 4096, "BCM2712", 0),
    (0xE04171, "5", 16384, "BCM2712", 1),
    (0x2A020D3, "3B+", 1024, "BCM2837", 3),   # warranty bit set (over-volted board)
])
def test_decode_revision(code: int, type_name: str, ram: int, processor: str, pcb: int) -> None:
    rev = decode_revision(code)
    assert rev is not None
    assert (rev.type_name, rev.memory_mib, rev.processor, rev.pcb_revision) == (type_name, ram, processor, pcb)


def test_old_style_revision_is_not_decoded() -> None:
    assert decode_revision(0x000E) is None       # Pi 1 B, before the bit-field scheme


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    base = {"proc/meminfo": "MemTotal:  2000000 kB\n", "proc/cpuinfo": "processor\t: 0\n"}
    for rel, text in {**base, **files}.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_cgroup_v2_smallest_limit_on_the_path_wins(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "proc/self/cgroup": "0::/machine.slice/box.scope\n",
        "sys/fs/cgroup/machine.slice/memory.max": f"{300 * MIB}\n",
        "sys/fs/cgroup/machine.slice/box.scope/memory.max": "max\n",
        "sys/fs/cgroup/machine.slice/cpu.max": "50000 100000\n",
        "sys/fs/cgroup/machine.slice/box.scope/cpu.max": "200000 100000\n",
    })
    facts = probe(root)
    assert facts.cgroup_memory_bytes == 300 * MIB
    assert facts.cgroup_cpu_percent == 50.0


def test_cgroup_v1_unlimited_is_none(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "proc/self/cgroup": "4:memory:/user.slice\n0::/\n",
        "sys/fs/cgroup/memory/user.slice/memory.limit_in_bytes": "9223372036854771712\n",
        "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
    })
    assert probe(root).cgroup_memory_bytes is None


def test_cpus_fall_back_to_cpuinfo_without_sysfs(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"proc/cpuinfo": "processor\t: 0\n\nprocessor\t: 1\n\nprocessor\t: 2\n"})
    assert probe(root).cpus == 3


def test_online_cpu_ranges(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"sys/devices/system/cpu/online": "0-3,6,8-9\n"})
    assert probe(root).cpus == 7


def test_missing_meminfo_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        probe(tmp_path)


def test_live_machine_agrees_with_psutil() -> None:
    facts = probe("/")
    assert facts.ram_bytes == psutil.virtual_memory().total
    assert facts.cpus == psutil.cpu_count()
