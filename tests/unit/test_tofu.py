"""The TOFU store under a pin flood: pins in memory, writes batched off the event loop."""

import asyncio
import json
import logging
import shutil
import time

import pytest

from helpers import until
from macula.errors import ErrorCode, SessionRefused
from macula.identity import TofuStore
from macula.identity import tofu as tofu_mod

KEY_A, KEY_B = b"\xaa" * 32, b"\xbb" * 32


class WallClock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        self.t += 1
        return self.t


@pytest.fixture
def writes(monkeypatch):
    """Every file the store writes, as the number of peers in it."""
    seen: list[int] = []
    real = tofu_mod.write_atomic

    def counting(path, data, mode=0o600):
        seen.append(len(json.loads(data)["peers"]))
        real(path, data, mode)

    monkeypatch.setattr(tofu_mod, "write_atomic", counting)
    return seen


def key(i: int) -> bytes:
    return i.to_bytes(32, "big")


async def test_a_pin_flood_is_cheap_on_the_loop_and_written_once_per_interval(tmp_path, writes):
    path = tmp_path / "known_peers.json"
    store = TofuStore(path, 65536, flush_interval=60.0)
    store.start()
    on_loop = 0.0
    for batch in range(100):           # 10,000 dialers, the loop runs between batches
        t0 = time.perf_counter()
        for i in range(batch * 100, batch * 100 + 100):
            assert store.check_and_pin("lab", f"n{i}", key(i)) is True
        on_loop += time.perf_counter() - t0
        await asyncio.sleep(0)
    assert on_loop < 0.25, f"{on_loop * 1e3:.1f} ms on the loop for 10,000 pins"
    await until(lambda: store._inflight is None or store._inflight.done(), 2, "write in flight")
    assert len(writes) <= 1            # the first pin is written at once, the rest wait
    assert store.pending
    await store.close()
    assert len(writes) <= 2 and writes[-1] == 10_000 and store.writes == len(writes)
    reloaded = TofuStore(path, 65536)
    assert len(reloaded) == 10_000
    assert reloaded.check_and_pin("lab", "n1234", key(1234)) is False
    with pytest.raises(SessionRefused) as info:
        reloaded.check_and_pin("lab", "n1234", KEY_A)
    assert info.value.code is ErrorCode.PEER_KEY_CHANGED


async def test_writes_are_at_most_one_per_interval(tmp_path, writes):
    store = TofuStore(tmp_path / "known_peers.json", 4096, flush_interval=0.1)
    store.start()
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < 0.6:
        store.check_and_pin("lab", f"n{i}", key(i))
        i += 1
        await asyncio.sleep(0.002)
    elapsed = time.monotonic() - t0
    assert 2 <= len(writes) <= elapsed / 0.1 + 2
    await store.close()
    assert writes[-1] == i


async def test_a_flush_writes_every_pin_compactly_and_a_reload_sees_them(tmp_path):
    path = tmp_path / "known_peers.json"
    store = TofuStore(path, 100, WallClock(), flush_interval=60.0)
    store.start()
    for i in range(50):
        store.check_and_pin("lab", f"n{i}", key(i))
    assert await store.flush() is True and not store.pending
    text = path.read_text()
    assert "\n" not in text and ": " not in text
    data = json.loads(text)
    assert data["version"] == 1 and len(data["peers"]) == 50
    assert data["peers"]["lab/n7"] == {"key": key(7).hex(), "first_seen": 1_700_000_008,
                                       "last_seen": 1_700_000_008}
    assert TofuStore(path, 100).entries() == store.entries()
    await store.close()


def test_the_old_indented_file_still_loads(tmp_path):
    path = tmp_path / "known_peers.json"
    old = {"version": 1, "peers": {
        "lab/b": {"first_seen": 1.5, "key": KEY_B.hex(), "last_seen": 3.25},
        "lab/a": {"first_seen": 1.0, "key": KEY_A.hex(), "last_seen": 9.0}}}
    path.write_text(json.dumps(old, indent=1, sort_keys=True))
    store = TofuStore(path, 10)
    assert store.entries() == [("lab/b", KEY_B.hex(), 1.5, 3.25), ("lab/a", KEY_A.hex(), 1.0, 9.0)]
    with pytest.raises(SessionRefused):
        store.check_and_pin("lab", "a", KEY_B)


async def test_seeing_a_pinned_peer_again_does_not_write(tmp_path, writes):
    path = tmp_path / "known_peers.json"
    store = TofuStore(path, 10, WallClock(), flush_interval=0.01)
    store.start()
    for name in ("a", "b", "c"):
        store.check_and_pin("lab", name, KEY_A)
    await store.flush()
    before = len(writes)
    for _ in range(200):
        assert store.check_and_pin("lab", "a", KEY_A) is False
        await asyncio.sleep(0)
    await asyncio.sleep(0.1)          # ten flush intervals
    assert len(writes) == before and store.pending
    await store.close()               # the refreshed last_seen is written on stop
    assert len(writes) == before + 1
    assert [e[0] for e in TofuStore(path, 10).entries()] == ["lab/b", "lab/c", "lab/a"]


async def test_last_seen_refreshes_are_written_after_the_touch_interval(tmp_path, writes):
    store = TofuStore(tmp_path / "known_peers.json", 10, flush_interval=0.01,
                      touch_interval=0.05)
    store.start()
    store.check_and_pin("lab", "a", KEY_A)
    await asyncio.sleep(0.03)
    assert len(writes) == 1
    store.check_and_pin("lab", "a", KEY_A)
    await asyncio.sleep(0.2)
    assert len(writes) == 2 and not store.pending
    await store.close()


async def test_a_full_store_evicts_the_least_recently_seen(tmp_path):
    path = tmp_path / "known_peers.json"
    store = TofuStore(path, 3, WallClock(), flush_interval=60.0)
    store.start()
    for name in ("a", "b", "c"):
        store.check_and_pin("lab", name, KEY_A)
    store.check_and_pin("lab", "a", KEY_A)          # a seen again: b is now the oldest
    store.check_and_pin("lab", "d", KEY_A)
    assert [e[0] for e in store.entries()] == ["lab/c", "lab/a", "lab/d"]
    await store.close()
    assert len(json.loads(path.read_text())["peers"]) == 3
    assert [e[0] for e in TofuStore(path, 3).entries()] == ["lab/c", "lab/a", "lab/d"]
    assert store.check_and_pin("lab", "b", KEY_B) is True   # an evicted pin is a stranger again


async def test_close_writes_the_pins_still_pending(tmp_path, writes):
    path = tmp_path / "known_peers.json"
    store = TofuStore(path, 100, flush_interval=3600.0)
    store.start()
    store.check_and_pin("lab", "first", KEY_A)
    await until(lambda: writes == [1], 2, "first pin written")  # at once: the store was idle
    for i in range(20):
        store.check_and_pin("lab", f"n{i}", key(i))
    assert store.forget("first") == 1
    await asyncio.sleep(0.05)
    assert writes == [1]                            # the rest waits for the interval
    await store.close()
    assert writes == [1, 20] and not store.started
    assert len(TofuStore(path, 100)) == 20
    store.check_and_pin("lab", "late", KEY_A)       # after close: written at once again
    assert writes == [1, 20, 21]


async def test_a_failing_write_warns_once_and_the_loop_carries_on(tmp_path, caplog):
    state = tmp_path / "state"
    state.mkdir()
    store = TofuStore(state / "known_peers.json", 100, flush_interval=0.02)
    store.start()
    shutil.rmtree(state)                            # e.g. the SD card went away
    with caplog.at_level(logging.DEBUG, logger="macula.tofu"):
        for i in range(10):
            assert store.check_and_pin("lab", f"n{i}", key(i)) is True
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot write the pinned-peer store" in warnings[0].message
    assert store.write_failures >= 2 and store.writes == 0 and store.pending
    assert store.check_and_pin("lab", "n3", key(3)) is False      # pins hold in memory
    assert store.started and not store._task.done()
    state.mkdir()                                   # back: the retry succeeds
    await asyncio.sleep(0.1)
    assert store.writes >= 1 and not store.pending
    await store.close()
    assert len(TofuStore(state / "known_peers.json", 100)) == 10


async def test_close_with_a_failing_disk_does_not_raise(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    store = TofuStore(state / "known_peers.json", 100, flush_interval=60.0)
    store.start()
    store.check_and_pin("lab", "a", KEY_A)
    shutil.rmtree(state)
    await store.close()
    assert store.pending and store.write_failures >= 1


async def test_a_store_without_a_file_never_writes(writes):
    store = TofuStore(None, 10, flush_interval=0.0)
    store.start()
    assert store.check_and_pin("lab", "a", KEY_A) is True
    await store.close()
    assert writes == []


async def test_close_never_hangs_whatever_moment_it_lands_on(tmp_path):
    # The flusher once waited in asyncio.wait_for, which on 3.11 can swallow a cancel that
    # lands as its wait completes: Node.stop() then hung in close() (the churn soak).
    for i in range(300):
        store = TofuStore(tmp_path / f"k{i % 3}.json", 64, touch_interval=0.0005,
                          flush_interval=0.0005)
        store.start()
        store.check_and_pin("r", f"n{i}", bytes([i % 256]) * 32)
        for _ in range(i % 4):
            await asyncio.sleep(0)
        await asyncio.wait_for(store.close(), 2)
