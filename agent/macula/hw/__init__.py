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


__all__ = ["Detection", "detect", "detect_limits", "hw_report", "systemd_dropin"]
