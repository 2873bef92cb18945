"""One loop for every sans-IO core on the event loop (DHT, cluster, and the next ones).

A core is fed messages and timer expiries with the time, and is asked afterwards what to
send (``messages_to_send()``), what happened (an event queue) and when it next needs the
clock (``get_timer()``). After every input the driver *pumps*: sends, hands events on,
arms one TimerHandle. Nothing polls. As aioquic does, a timer that fires a clock tick
early (asyncio may run a handle just before its time) is given its due time, so the core
always sees it due.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Iterable, Protocol


class Core(Protocol):
    def handle_timer(self, now: float) -> Any: ...
    def get_timer(self) -> float | None: ...
    def messages_to_send(self) -> Iterable[tuple[Any, Any]]: ...


class CoreDriver:
    def __init__(self, loop: asyncio.AbstractEventLoop, core: Core,
                 send: Callable[[Any, Any], None], *,
                 next_event: Callable[[], Any] | None = None,
                 on_event: Callable[[Any], None] | None = None) -> None:
        """``send(destination, message)`` for what the core produces; ``next_event()``
        (None when empty) and ``on_event(event)`` for what it reports."""
        self.loop = loop
        self.core = core
        self._send = send
        self._next_event = next_event
        self._on_event = on_event
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.stopped = False

    def pump(self) -> None:
        if self.stopped:
            return
        core, send, next_event, on_event = self.core, self._send, self._next_event, self._on_event
        while True:  # a send or an event handler may feed the core again: send that too
            msgs = core.messages_to_send()
            for dest, msg in msgs:
                send(dest, msg)
            if next_event is not None:
                event = next_event()
                if event is not None:
                    while event is not None:
                        if on_event is not None:
                            on_event(event)
                        event = next_event()
                    continue
            if not msgs:
                break
        self._arm()

    def _arm(self) -> None:
        """Arm for the core's next timer, lazily: a timer already armed earlier is kept
        (when it fires and nothing is due, it costs one ``get_timer`` and is re-armed),
        so a core whose timer comes and goes with every message (a call's deadline)
        does not create and cancel a TimerHandle per message."""
        if self.stopped:
            return
        at = self.core.get_timer()
        if at is None or at == float("inf"):
            return
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._fire)

    def _fire(self) -> None:
        due = self._timer_at or 0.0
        self._timer = self._timer_at = None
        if self.stopped:
            return
        at = self.core.get_timer()
        now = self.loop.time()
        if at is not None and at <= max(now, due):
            self.core.handle_timer(max(now, at))  # a tick early is still its time
            self.pump()
        else:
            self._arm()  # armed early for a timer that moved later, or went

    def stop(self) -> None:
        """No more sends or timers (what the core produces from now on is dropped)."""
        self.stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
