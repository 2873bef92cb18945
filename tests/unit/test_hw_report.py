"""`macula hw [--json]` output and the systemd drop-in, from recorded boards."""

from __future__ import annotations

import json
from pathlib import Path

from macula.config import load_config
from macula.hw import detect, detect_limits, hw_report, systemd_dropin

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hw"


def test_json_report_names_board_profile_and_every_limit() -> None:
    data = json.loads(hw_report(as_json=True, root=FIXTURES / "pi4b-8gb"))
    assert data["board"] == {"model": "Raspberry Pi 4 Model B Rev 1.4", "revision": "d03114",
                             "type": "4B", "processor": "BCM2711", "nominal_ram_mib": 8192}
    assert data["profile"] == "pi4b-8gb"
    assert data["profile_file"].endswith("pi4b-8gb.toml")
    assert data["limits"] == detect_limits(FIXTURES / "pi4b-8gb")[1]
    assert data["systemd"] == {"MemoryMax": "4096M", "CPUQuota": "300%"}
    assert data["warnings"] == []
    assert 0 < data["estimated_agent_mib"] <= data["limits"]["agent_memory_mib"]


def test_text_report_lists_every_limit_and_warns_about_disabled_memcg() -> None:
    text = hw_report(root=FIXTURES / "zero2w")
    assert "profile:  zero2w" in text
    assert "Raspberry Pi Zero 2 W Rev 1.0 (revision 902120: Zero 2 W, BCM2837, 512 MiB)" in text
    for key, value in detect_limits(FIXTURES / "zero2w")[1].items():
        assert f"  {key} " in text and text.split(f"  {key} ")[1].split("\n")[0].strip() == str(value)
    assert "memory controller DISABLED" in text
    assert "WARNING:  the memory cgroup controller is disabled" in text


def test_text_report_of_a_capped_vm_explains_the_cap() -> None:
    text = hw_report(root=FIXTURES / "x86-vm-unit")
    assert "board:    no board model" in text
    assert "cgroup limit 256 MiB" in text and "cgroup quota 150 %" in text
    assert "note:     cgroup memory limit 256 MiB < budget" in text


def test_dropin_holds_agent_plus_apps_and_the_cpu_quota() -> None:
    text = systemd_dropin(detect(FIXTURES / "zero2w"))
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == ["[Service]", "MemoryMax=160M", "CPUQuota=300%"]


def test_detected_limits_feed_the_config_loader(tmp_path: Path) -> None:
    # The loader takes the hardware limits as the defaults of [limits]; the file wins.
    path = tmp_path / "agent.toml"
    path.write_text("[limits]\nmax_peers = 7\n")
    name, limits = detect_limits(FIXTURES / "pi5-4gb")
    cfg = load_config(path, env={}, limits=limits, hw_profile=name)
    assert cfg.hw_profile == "pi5-4gb"
    assert cfg.limits.max_peers == 7
    assert cfg.limits.max_clients == limits["max_clients"] == 768
    assert cfg.limits.send_buffer_bytes == limits["send_buffer_bytes"]


def test_live_detection_runs() -> None:
    name, limits = detect_limits()
    assert name and limits["max_peers"] > 0
    assert json.loads(hw_report(as_json=True))["profile"] == name
