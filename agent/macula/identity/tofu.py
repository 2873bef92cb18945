"""Trust on first use: the first identity key seen for a (realm, node name) is pinned.

A later connection that claims the same name with another key is refused with
PEER_KEY_CHANGED until an operator runs `macula keys forget NAME`. The store is
bounded: when full, the pin seen least recently is dropped (an attacker cannot grow
the file, only push out stale pins). Writes are atomic.

Persistence. A store that has not been started (the CLI, a client, tests) writes the
file before a new pin or a forget returns, as it always did. A node calls ``start()``
on its event loop: from then on ``check_and_pin`` only touches the dict in memory and
marks the store dirty, and a flusher writes the file at most once per
``flush_interval`` seconds, serialising and fsyncing in a worker thread with a
snapshot taken on the loop. A flood of new names therefore costs one write per
interval instead of a full rewrite per name (SD-card wear, a stalled loop). A peer
seen again only refreshes ``last_seen`` in memory; that is written with the next
write, after ``touch_interval`` at the latest, and by ``close()``, which the node
awaits on a clean stop so that no pin is lost. A failing write logs one warning and
is retried at the next interval; the pins stay in force in memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from macula.errors import ErrorCode, SessionRefused, StateError
from macula.identity.files import write_atomic

TOFU_FILE = "known_peers.json"
FLUSH_INTERVAL = 5.0      # seconds between two writes at most once
TOUCH_INTERVAL = 600.0    # last_seen refreshes alone are written this often at most
_CHUNK = 2048             # entries serialised per C call: lets the loop thread take the GIL

log = logging.getLogger("macula.tofu")

# a pin: (label, identity key hex, first_seen, last_seen); immutable, and carrying its
# label, so that a snapshot is a shallow copy of the values
Pin = tuple[str, str, float, float]


def _snapshot(pins: OrderedDict[str, Pin]) -> list[Pin]:
    """A copy to write: the immutable pins, read from the dict's own storage.

    Walking the OrderedDict's LRU links costs 10-25 ms at 65,536 pins (a lookup per node,
    in an order that defeats the cache); the plain dict view is a ~0.3 ms array copy. The
    file is then in first-pinned order, not LRU order, which _load restores by sorting on
    last_seen (as it always has).
    """
    return list(dict.values(pins))


def _encode(pins: list[Pin]) -> bytes:
    """Compact JSON in the version 1 layout (old agents read it).

    Timestamps are whole seconds. Encoded in chunks so that the worker thread does not
    hold the GIL for the whole file in one C call.
    """
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode
    parts = []
    for i in range(0, len(pins), _CHUNK):
        body = dumps({label: {"key": key, "first_seen": int(first), "last_seen": int(last)}
                      for label, key, first, last in pins[i:i + _CHUNK]})
        parts.append(body[1:-1])
    return ('{"version":1,"peers":{' + ",".join(parts) + "}}").encode()


class TofuStore:
    def __init__(self, path: Path | None, capacity: int,
                 wall_clock: Callable[[], float] = time.time, *,
                 flush_interval: float = FLUSH_INTERVAL,
                 touch_interval: float = TOUCH_INTERVAL) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._closing = False
        self.path = Path(path) if path is not None else None
        self.capacity = capacity
        self.flush_interval = flush_interval
        self.touch_interval = touch_interval
        self._wall = wall_clock
        # "realm/name" -> (label, key hex, first_seen, last_seen); LRU order, oldest first
        self._pins: OrderedDict[str, Pin] = OrderedDict()
        self.writes = 0            # files written (successfully)
        self.write_failures = 0
        self._dirty = False        # a pin was added, evicted or forgotten
        self._touched = False      # only last_seen changed
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._inflight: asyncio.Future | None = None
        self._next_write = 0.0     # loop time before which the flusher does not write
        self._warned = False
        if self.path is not None and self.path.exists():
            self._load()

    def __len__(self) -> int:
        return len(self._pins)

    def _load(self) -> None:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text())
            pins = data["peers"]
            # LRU order from last_seen; equal ones (whole seconds) keep the file's order
            entries = sorted(pins.items(), key=lambda kv: float(kv[1]["last_seen"]))
            for name, pin in entries[-self.capacity:]:
                bytes.fromhex(pin["key"])
                self._pins[name] = (name, str(pin["key"]), float(pin["first_seen"]),
                                    float(pin["last_seen"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateError(f"pinned-peer store {self.path} is unreadable ({exc}); "
                             f"move it away to start pinning afresh") from None

    # -- persistence ----------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._task is not None

    @property
    def pending(self) -> bool:
        """Changes in memory that are not on disk yet."""
        return self._dirty or self._touched

    def _write(self, pins: list[Pin]) -> None:
        assert self.path is not None
        write_atomic(self.path, _encode(pins), 0o600)

    def _save(self) -> None:
        """Synchronous write (store not started)."""
        if self.path is None:
            return
        self._write(_snapshot(self._pins))
        self.writes += 1
        self._dirty = self._touched = False

    def _changed(self) -> None:
        if self.path is None:
            return
        if self._task is None:
            self._save()
        else:
            self._dirty = True
            assert self._wake is not None
            self._wake.set()

    def start(self) -> None:
        """Batch writes from now on; call on the running event loop (node start)."""
        if self._task is not None or self.path is None:
            return
        self._wake = asyncio.Event()
        self._closing = False
        if self._dirty:
            self._wake.set()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tofu-flusher")

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        # No asyncio.wait_for here: on 3.11 a cancel that lands as the wait completes is
        # swallowed, and close() then waited for this task for ever (the churn soak hung
        # in Node.stop). A timer sets the same event; the loop also checks _closing.
        wake = self._wake
        while not self._closing:
            ticked = []
            timer = loop.call_later(self.touch_interval, lambda: (ticked.append(1), wake.set()))
            try:
                await wake.wait()
            finally:
                timer.cancel()
            if self._closing:
                return
            timed_out = bool(ticked)
            if not (self._dirty or (timed_out and self._touched)):
                self._wake.clear()  # already written by an explicit flush()
                continue
            delay = self._next_write - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> bool:
        """Write pending changes now (one write in flight at most). False if it failed."""
        loop = asyncio.get_running_loop()
        while self._inflight is not None and not self._inflight.done():
            await asyncio.shield(self._inflight)
        if not self.pending or self.path is None:
            return True
        pins = _snapshot(self._pins)
        self._dirty = self._touched = False
        self._next_write = loop.time() + self.flush_interval
        fut = loop.run_in_executor(None, self._write_job, pins)
        self._inflight = fut
        fut.add_done_callback(self._written)   # runs even if the awaiting task is cancelled
        return (await asyncio.shield(fut)) is None

    def _write_job(self, pins: list[Pin]) -> BaseException | None:
        try:
            self._write(pins)
        except Exception as exc:  # reported on the loop by _written
            return exc
        return None

    def _written(self, fut: asyncio.Future) -> None:
        if fut.cancelled():
            exc: BaseException | None = asyncio.CancelledError()
        else:
            exc = fut.exception() or fut.result()
        if exc is None:
            self.writes += 1
            if self._warned:
                log.info("pinned-peer store %s written again", self.path)
            self._warned = False
            return
        self.write_failures += 1
        self._dirty = True  # retried at the next interval (or by close)
        if self._wake is not None:
            self._wake.set()
        if not self._warned:
            self._warned = True
            log.warning("cannot write the pinned-peer store %s (%s); pins stay in memory, "
                        "retrying every %.0f s", self.path, exc, self.flush_interval)
        else:
            log.debug("pinned-peer store %s still not writable: %s", self.path, exc)

    async def close(self) -> None:
        """Stop the flusher and write what is pending (node stop). Later changes are
        written synchronously again."""
        task, self._task = self._task, None
        if task is not None:
            self._closing = True
            if self._wake is not None:
                self._wake.set()
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self.path is not None and (self.pending or
                                      (self._inflight is not None and not self._inflight.done())):
            await self.flush()
        self._wake = None

    # -- pins -----------------------------------------------------------------------
    def check_and_pin(self, realm: str, name: str, identity_key: bytes) -> bool:
        """Raise SessionRefused if ``name`` is pinned to another key; pin it if new.

        Returns True when a new pin was made. Never blocks on the disk once started.
        """
        label = f"{realm}/{name}"
        key_hex = identity_key.hex()
        now = self._wall()
        pin = self._pins.get(label)
        if pin is not None:
            if pin[1] != key_hex:
                since = time.strftime("%Y-%m-%d %H:%M", time.gmtime(pin[2]))
                raise SessionRefused(
                    f"peer {name!r} presented identity key {key_hex[:16]}... but it is pinned to "
                    f"{pin[1][:16]}... since {since} UTC; if the node was reinstalled, run "
                    f"'macula keys forget {name}'", code=ErrorCode.PEER_KEY_CHANGED)
            self._pins[label] = (label, pin[1], pin[2], now)
            self._pins.move_to_end(label)
            self._touched = True   # written with the next write, never on its own account
            return False
        self._pins[label] = (label, key_hex, now, now)
        while len(self._pins) > self.capacity:
            self._pins.popitem(last=False)
        self._changed()
        return True

    def forget(self, name: str, realm: str | None = None) -> int:
        labels = [lb for lb in self._pins
                  if lb.split("/", 1)[1] == name and (realm is None or lb.split("/", 1)[0] == realm)]
        for lb in labels:
            del self._pins[lb]
        if labels:
            self._changed()
        return len(labels)

    def entries(self) -> list[tuple[str, str, float, float]]:
        return list(self._pins.values())
