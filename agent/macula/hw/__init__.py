"""Hardware detection and the limits that follow from it.

`detect_limits()` gives the defaults of the [limits] config section; `hw_report()` is
`macula hw`; `systemd_dropin()` is the MemoryMax=/CPUQuota= drop-in the generator writes.
Profiles live in macula/hw/profiles/ (the repository's top-level hw/ links there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from macula.hw.report import Detection, detect, hw_report, systemd_dropin


def detect_limits(root: Path | str = "/") -> tuple[str, dict[str, Any]]:
    """(profile name, limits) for this machine; ``root`` lets tests feed a recorded tree."""
    derivation = detect(root).derivation
    return derivation.profile_name, dict(derivation.limits)


def generic_limits(ram_mib: int, cpus: int) -> dict[str, Any]:
    """The generic profile's limits for a machine with this much RAM and these CPUs."""
    from macula.hw.probe import MIB, Facts
    from macula.hw.profiles import derive, load_profiles

    model, boards = load_profiles()
    return dict(derive(Facts("", None, ram_mib * MIB, cpus, None, None, None), model,
                       boards).limits)


__all__ = ["Detection", "detect", "detect_limits", "generic_limits", "hw_report",
           "systemd_dropin"]
