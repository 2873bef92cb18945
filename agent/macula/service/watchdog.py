"""The systemd watchdog: WATCHDOG=1 pings sent from the node's event loop.

The ping is a task on the same loop as everything else, so a loop that hangs (a blocking
call, a busy callback, SIGSTOP) stops pinging and systemd restarts the unit after
WatchdogSec=. The same message carries STATUS= when the status line changed.
"""

from __future__ import annotations

import asyncio
import os
from typing import Callable, Mapping

from macula.service.notify import Notifier, status_field


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between pings (half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises), or
    None when the watchdog is off or meant for another process (WATCHDOG_PID)."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2_000_000


async def run_watchdog(notifier: Notifier, interval: float,
                       status: Callable[[], str] | None = None) -> None:
    """Ping every ``interval`` seconds until cancelled; add STATUS= when ``status()`` changed."""
    last = None
    while True:
        fields = ["WATCHDOG=1"]
        if status is not None:
            text = status()
            if text != last:
                fields.append(status_field(text))
                last = text
        notifier.notify(*fields)
        await asyncio.sleep(interval)


def start_watchdog(notifier: Notifier, status: Callable[[], str] | None = None,
                   env: Mapping[str, str] | None = None) -> asyncio.Task[None] | None:
    """Start pinging on the running loop if systemd asked for it; the caller cancels the task."""
    interval = watchdog_interval(env)
    if interval is None or not notifier.enabled:
        return None
    return asyncio.get_running_loop().create_task(run_watchdog(notifier, interval, status),
                                                  name="systemd-watchdog")
