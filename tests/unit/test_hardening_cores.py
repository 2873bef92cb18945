"""The bounds behind the hardening, without I/O: `any` values, array lengths, refusal
from the header, the node-wide partial-frame budget, metering after the fact."""

from __future__ import annotations

import msgpack
import pytest

from macula.errors import ErrorCode, ProtocolError
from macula.runtime.ratelimit import TokenBucket
from macula.transport.budget import ReceiveBudget
from macula.wire import FrameDecoder, MsgType, decode_body, encode
from macula.wire.codec import HEADER, refusal_table
from macula.wire.fields import ANY_MAX_ITEMS
from macula.wire.messages import BridgeRpc, Publish


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    __call__ = now


def test_an_any_value_of_a_million_elements_is_refused_before_validation():
    body = msgpack.packb([1, 0, "op", list(range(1_000_000))])
    with pytest.raises(ProtocolError) as info:
        decode_body(MsgType.BRIDGE_RPC, body)
    assert info.value.code is ErrorCode.BAD_FIELD
    assert "longer than" in info.value.message


def test_nested_any_values_are_bounded_in_total_elements_not_per_level():
    wide = [list(range(300)) for _ in range(300)]  # 90,300 elements, each list short
    with pytest.raises(ProtocolError) as info:
        decode_body(MsgType.BRIDGE_RPC, msgpack.packb([1, 0, "op", wide]))
    assert info.value.code is ErrorCode.BAD_FIELD
    ok = [list(range(100)) for _ in range(100)]
    assert decode_body(MsgType.BRIDGE_RPC, msgpack.packb([1, 0, "op", ok])).args[99][99] == 99
    assert ANY_MAX_ITEMS >= 10_100


def test_a_refused_type_is_judged_from_its_header_and_its_body_never_held():
    refuse = refusal_table([MsgType.PUBLISH], lambda t: ProtocolError(
        "not served", code=ErrorCode.UNKNOWN_TYPE, msg_type=t))
    dec = FrameDecoder(1 << 20, refuse)
    body = msgpack.packb([1, 0, "op", list(range(1000))]) + b"\x00" * 500_000
    first = HEADER.pack(1, MsgType.BRIDGE_RPC, 0, 0, len(body))
    out = dec.feed(first + body[:1000])
    assert [e.code for e in out] == [ErrorCode.UNKNOWN_TYPE]
    assert dec.buffered == 0
    for i in range(1000, len(body), 65536):  # the rest is dropped as it arrives
        assert dec.feed(body[i:i + 65536]) == []
        assert dec.buffered == 0
    pub = Publish("t", b"x")
    assert dec.feed(encode(pub)) == [pub]  # framing intact after the refused frame


def test_receive_budget_closes_the_least_recently_progressed_holders():
    budget = ReceiveBudget(1000)
    assert budget.update("a", 400) == []
    assert budget.update("b", 400) == []
    assert budget.update("a", 500) == []      # a made progress: now the most recent
    assert budget.update("c", 300) == ["b"]   # b progressed least recently
    assert budget.used == 800 and budget.evicted == 1
    assert budget.update("a", 0) == []        # a's frame completed
    assert budget.used == 300
    assert budget.update("d", 2000) == ["c", "d"]  # one holder alone over the limit
    assert budget.used == 0 and len(budget) == 0


def test_token_bucket_charge_meters_after_the_fact_at_most_one_burst_in_debt():
    clock = FakeClock()
    bucket = TokenBucket(100.0, 100.0, clock)
    assert bucket.charge(60) is True
    assert bucket.charge(60) is False          # 20 in debt
    assert bucket.charge(10_000) is False      # debt capped at one burst
    clock.t += 1.0                             # refills 100: back to 0
    assert bucket.charge(0) is True
    clock.t += 0.5
    assert bucket.charge(50) is True


def test_bridge_rpc_with_a_bounded_any_value_round_trips():
    msg = BridgeRpc(7, 1, "lookup", {"k": (1, 2, 3)})
    assert decode_body(MsgType.BRIDGE_RPC, encode(msg)[8:]) == msg


def test_one_read_serves_small_established_batches_first_and_handshakes_later():
    """A request read behind a flooder's burst is handled before the burst; new
    connections (milliseconds of handshake CPU each) wait for turns of their own."""
    from types import SimpleNamespace

    from macula.transport.quic import Endpoint

    done: list = []
    deferred: list = []
    fake = SimpleNamespace(_deliver=lambda link, addr, items: done.append(link.name),
                           _defer_handshake=lambda link, batch: deferred.append(link.name))

    class Link:
        def __init__(self, name: str, half_open: bool = False) -> None:
            self.name, self._half_open = name, half_open

    flood, new, honest, other = Link("flood"), Link("new", True), Link("honest"), Link("other")
    batches = {flood: ["a", *["burst"] * 30], new: ["a", "hello"],
               honest: ["a", "call"], other: ["a", "x", "y"]}
    Endpoint._deliver_fairly(fake, batches)
    assert done == ["honest", "other", "flood"] and deferred == ["new"]


async def test_new_connections_get_one_loop_turn_each_and_a_bounded_wait():
    import asyncio

    from macula.identity import ephemeral_dev_material, ephemeral_identity
    from macula.transport import quic
    from macula.transport.quic import Endpoint

    ep = Endpoint(ephemeral_dev_material(ephemeral_identity().node_id))
    ep.bind("127.0.0.1", 0)
    turns: list = []
    ep._deliver = lambda link, addr, items: turns.append(link)
    ep._flush = lambda: None
    try:
        links = [object() for _ in range(quic.DEFERRED_HANDSHAKES + 5)]
        for link in links:
            ep._defer_handshake(link, [("127.0.0.1", 1), b"x"])
        assert ep.stats["handshake_datagrams_dropped"] == 5    # past the bound
        for i in range(3):   # one link per loop turn, in order
            await asyncio.sleep(0)
            assert turns == links[:i + 1]
    finally:
        ep.close()
