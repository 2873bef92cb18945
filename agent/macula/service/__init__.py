"""systemd glue: sd_notify readiness and watchdog, journald logging, the resource
drop-in generator and the first-boot config. Nothing here is needed outside systemd:
every call degrades to a no-op or to stderr.

Exports load on first use: the generator (macula.service.generator) runs at every boot
and must not pay for asyncio and the logging machinery it never uses.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Notifier": "macula.service.notify",
    "NodeFields": "macula.service.journal",
    "setup_logging": "macula.service.journal",
    "run_watchdog": "macula.service.watchdog",
    "start_watchdog": "macula.service.watchdog",
    "watchdog_interval": "macula.service.watchdog",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'macula.service' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
