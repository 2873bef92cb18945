"""The one loop that runs a sans-IO core on asyncio (runtime/driver.py)."""

from __future__ import annotations

import asyncio

from macula.runtime.driver import CoreDriver


class EchoCore:
    """Answers each message at once; asks for the clock ``delay`` after it."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.out: list = []
        self.events: list = []
        self.timer: float | None = None
        self.fired: list[float] = []

    def handle_message(self, sender, msg, now: float) -> None:
        self.out.append((sender, msg))
        self.events.append(("got", msg))
        self.timer = now + self.delay

    def handle_timer(self, now: float) -> None:
        assert self.timer is not None and now >= self.timer   # never early
        self.fired.append(now)
        self.timer = None
        self.events.append(("timer", now))

    def get_timer(self) -> float | None:
        return self.timer

    def messages_to_send(self):
        out, self.out = self.out, []
        return out

    def next_event(self):
        return self.events.pop(0) if self.events else None


async def test_pump_sends_reports_and_fires_the_timer_once_never_early():
    loop = asyncio.get_running_loop()
    core = EchoCore(0.01)
    sent, seen = [], []
    fired = asyncio.Event()

    def on_event(event):
        seen.append(event)
        if event[0] == "timer":
            fired.set()

    driver = CoreDriver(loop, core, lambda dest, msg: sent.append((dest, msg)),
                        next_event=core.next_event, on_event=on_event)
    core.handle_message("a", "hello", loop.time())
    driver.pump()
    assert sent == [("a", "hello")] and seen == [("got", "hello")]
    await asyncio.wait_for(fired.wait(), 2)
    assert len(core.fired) == 1 and driver._timer is None


async def test_a_stopped_driver_sends_nothing_and_keeps_no_timer():
    loop = asyncio.get_running_loop()
    core = EchoCore(0.001)
    sent = []
    driver = CoreDriver(loop, core, lambda dest, msg: sent.append(msg))
    core.handle_message("a", "x", loop.time())
    driver.stop()
    driver.pump()
    assert sent == [] and driver._timer is None   # no handle: nothing can fire


async def test_an_infinite_timer_means_none():
    loop = asyncio.get_running_loop()
    core = EchoCore(0.0)
    core.timer = float("inf")
    driver = CoreDriver(loop, core, lambda *a: None)
    driver.pump()
    assert driver._timer is None


async def test_a_timer_that_comes_and_goes_per_message_arms_one_handle_and_fires_on_time():
    # an RPC call's deadline: set by the call, gone with its reply, thousands per second
    loop = asyncio.get_running_loop()
    core = EchoCore(0.05)
    driver = CoreDriver(loop, core, lambda dest, msg: None)
    arms = []
    real_call_at = loop.call_at
    loop.call_at = lambda *a, **k: arms.append(a[0]) or real_call_at(*a, **k)
    try:
        for i in range(100):
            core.handle_message("a", i, loop.time())
            driver.pump()
            core.timer = None   # answered: nothing due any more
            driver.pump()
        assert len(arms) == 1                 # not a TimerHandle per message
        loop.call_at = real_call_at
        core.handle_message("a", "last", loop.time())
        driver.pump()
        due = core.timer
        fired = asyncio.Event()
        core.events.clear()
        driver._on_event = lambda e: fired.set()
        driver._next_event = core.next_event
        await asyncio.wait_for(fired.wait(), 2)
        assert core.fired == [core.fired[0]] and core.fired[0] >= due  # on time, never early
    finally:
        loop.call_at = real_call_at
