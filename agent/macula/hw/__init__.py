"""Hardware detection and the limits that follow from it.

Placeholder generic profile; board profiles and detection are filled in by the edge
service work (hw/ profiles, /proc/device-tree/model, cgroup limits).
"""

from __future__ import annotations

from typing import Any


def generic_limits(ram_mib: int, cores: int) -> dict[str, Any]:
    """Limits that scale with RAM: a 512 MiB board gets small tables, a 8 GiB one large."""
    scale = max(1, min(16, ram_mib // 512))
    return {
        "max_peers": 64 * scale,
        "max_clients": 128 * scale,
        "max_frame_bytes": 1 << 20 if ram_mib >= 1024 else 256 << 10,
        "send_buffer_bytes": (256 << 10) * min(scale, 8),
        "pinned_peers": 1024 * scale,
        "bad_frames_per_minute": 60,
        "subscriber_queue": 256 * min(scale, 8),
        "max_subscriptions": 4096 * scale,
        "max_subscriptions_per_client": 1024,
        "max_pending_calls": 2048 * scale,
    }


def detect_limits() -> tuple[str, dict[str, Any]]:
    import os

    import psutil

    ram_mib = psutil.virtual_memory().total // (1 << 20)
    return "generic", generic_limits(ram_mib, os.cpu_count() or 1)
