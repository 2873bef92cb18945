"""Property tests of the frame codec against the message registry.

Strategies are built from each field's validator description (``kind``/``params``),
so a new message type or field is covered without touching this file.
"""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from macula.errors import ErrorCode, ProtocolError
from macula.wire import (
    DEFAULT_MAX_FRAME, HEADER_SIZE, PROTOCOL_VERSION, REGISTRY, FrameDecoder, MsgType, decode_body,
    encode, encode_many, type_name,
)
from macula.wire.codec import ABSOLUTE_MAX_FRAME
from macula.wire.fields import FieldError
from macula.wire.messages import Error, Ping, Pong

FATAL = {ErrorCode.BAD_VERSION, ErrorCode.BAD_FLAGS, ErrorCode.FRAME_TOO_LARGE,
         ErrorCode.FRAME_TRUNCATED}
NON_FATAL = {ErrorCode.UNKNOWN_TYPE, ErrorCode.BAD_ENCODING, ErrorCode.BAD_FIELD}
CLASSES = {spec.cls for spec in REGISTRY.values()}
TYPES = sorted(REGISTRY)
UNREGISTERED = [t for t in range(256) if t not in REGISTRY]
EXTRA = 6  # random values go at most this far past a length's minimum (frames stay small)


# ---- strategies from validator descriptions -----------------------------------------
def strategy_for(check) -> st.SearchStrategy:
    kind, p = check.kind, check.params
    if kind == "int":
        return st.integers(p["lo"], p["hi"])
    if kind == "float":
        return st.floats(p["lo"], p["hi"], allow_nan=False)
    if kind == "bool":
        return st.booleans()
    if kind == "str":
        if p["choices"] is not None:
            return st.sampled_from(p["choices"])
        if p["pattern"] is not None:
            return st.from_regex(p["pattern"], fullmatch=True).filter(
                lambda s: p["min_len"] <= len(s) <= p["max_len"])
        return st.text(min_size=p["min_len"], max_size=min(p["max_len"], p["min_len"] + EXTRA))
    if kind == "bytes":
        return st.binary(min_size=p["min_len"], max_size=min(p["max_len"], p["min_len"] + EXTRA))
    if kind == "opt":
        return st.none() | strategy_for(p["inner"])
    if kind == "list":
        return st.lists(strategy_for(p["item"]), min_size=p["min_items"],
                        max_size=min(p["max_items"], p["min_items"] + 3)).map(tuple)
    if kind == "struct":
        return st.tuples(*(strategy_for(m) for m in p["members"]))
    if kind == "map":
        return st.dictionaries(strategy_for(p["key"]), strategy_for(p["value"]),
                               max_size=min(p["max_items"], 3))
    if kind == "any":
        return plain_values
    raise AssertionError(f"no strategy for validator kind {kind!r}")


# Values msgpack round-trips exactly with use_list=False: arrays as tuples, no NaN,
# map keys str/bytes (the decoder's strict_map_key), ints within msgpack's range.
plain_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(st.text(max_size=4) | st.binary(max_size=4), inner, max_size=3),
    max_leaves=8)


def message_of(msg_type: int) -> st.SearchStrategy:
    spec = REGISTRY[msg_type]
    return st.tuples(*(strategy_for(c) for _, c in spec.validators)).map(spec.cls._make)


any_message = st.sampled_from(TYPES).flatmap(message_of)


def max_value(check):
    """A value at every upper bound (byte strings capped at 16 KiB to keep frames sane)."""
    kind, p = check.kind, check.params
    if kind in ("int", "float"):
        return p["hi"]
    if kind == "bool":
        return True
    if kind == "str":
        if p["choices"] is not None:
            return max(p["choices"], key=len)
        return "a" * p["max_len"]
    if kind == "bytes":
        return b"\xff" * min(p["max_len"], 16384)
    if kind == "opt":
        return max_value(p["inner"])
    if kind == "list":
        return tuple(max_value(p["item"]) for _ in range(p["max_items"]))
    if kind == "struct":
        return tuple(max_value(m) for m in p["members"])
    if kind == "map":
        width = p["key"].params["max_len"]
        return {str(i).rjust(width, "k"): max_value(p["value"]) for i in range(p["max_items"])}
    if kind == "any":
        value: object = {"deepest": (2**64 - 1, -(2**63), 1.5, b"x", None)}  # 2 levels
        for _ in range(p["max_depth"] - 2):
            value = (value,)
        return value
    raise AssertionError(kind)


def wrong_type(check):
    """A msgpack-encodable value of a type ``check`` never accepts."""
    kind = check.kind
    if kind == "opt":
        return wrong_type(check.params["inner"])
    return {"int": "7", "float": "1.5", "bool": 1, "str": b"text", "bytes": "bytes",
            "list": 7, "struct": 7, "map": (1, 2), "any": msgpack.ExtType(7, b"ext")}[kind]


def out_of_bounds(check):
    """A value of the right type just past one of the bounds of ``check``, or None."""
    kind, p = check.kind, check.params
    if kind == "int":
        return p["lo"] - 1 if p["lo"] > -(2**63) else (p["hi"] + 1 if p["hi"] < 2**64 - 1 else None)
    if kind == "str":
        if p["choices"] is not None:
            return "not-a-choice"
        if p["min_len"] > 0:
            return ""
        return "a" * (p["max_len"] + 1)
    if kind == "bytes":
        if p["min_len"] > 0:
            return b"\0" * (p["min_len"] - 1)
        return b"\0" * (p["max_len"] + 1) if p["max_len"] <= 65536 else None
    if kind == "opt":
        return out_of_bounds(p["inner"])
    if kind == "list":
        return (max_value(p["item"]),) * (p["max_items"] + 1)
    if kind == "struct":
        return tuple(max_value(m) for m in p["members"]) + (0,)
    if kind == "map":
        return out_of_bounds_map(p)
    if kind == "any":
        value: object = ()
        for _ in range(p["max_depth"]):
            value = (value,)
        return value
    return None


def out_of_bounds_map(p):
    return {f"k{i}": max_value(p["value"]) for i in range(p["max_items"] + 1)}


# ---- helpers ------------------------------------------------------------------------
def frame(msg_type: int, body: bytes, *, version: int = PROTOCOL_VERSION, flags: int = 0,
          reserved: int = 0, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return struct.pack(">BBBBI", version, msg_type, flags, reserved, n) + body


def fields_frame(msg_type: int, fields) -> bytes:
    return frame(msg_type, msgpack.packb(tuple(fields), use_bin_type=True))


def decode_all(data: bytes, cuts=(), max_frame: int = DEFAULT_MAX_FRAME):
    """Feed ``data`` cut at ``cuts``; return (items, decoder)."""
    decoder = FrameDecoder(max_frame)
    items, start = [], 0
    for cut in sorted(cuts) + [len(data)]:
        items += decoder.feed(data[start:cut])
        start = cut
    return items, decoder


def assert_well_formed(items) -> None:
    """Only messages or typed errors; nothing after a fatal error."""
    for i, item in enumerate(items):
        if isinstance(item, ProtocolError):
            assert isinstance(item.code, ErrorCode)
            assert item.code in FATAL | NON_FATAL, item
            assert item.fatal == (item.code in FATAL), item
            if item.fatal:
                assert i == len(items) - 1, "output after a fatal error"
            # the session answers a non-fatal error with an ERROR frame: it must be valid
            reply = Error(int(item.code), item.message[:1024], item.msg_type)
            assert decode_all(encode(reply))[0] == [reply]
        else:
            assert type(item) in CLASSES, item


def only_error(items, code: ErrorCode) -> ProtocolError:
    assert len(items) == 1 and isinstance(items[0], ProtocolError), items
    assert items[0].code is code, items[0]
    return items[0]


# ---- round trips --------------------------------------------------------------------
@pytest.mark.parametrize("msg_type", TYPES, ids=type_name)
@settings(max_examples=60)
@given(data=st.data())
def test_every_message_type_round_trips(msg_type, data):
    msg = data.draw(message_of(msg_type))
    wire = encode(msg)
    assert wire[:4] == bytes([PROTOCOL_VERSION, msg_type, 0, 0])
    assert int.from_bytes(wire[4:8], "big") == len(wire) - HEADER_SIZE
    items, decoder = decode_all(wire)
    assert items == [msg] and type(items[0]) is type(msg)
    assert decoder.buffered == 0 and decoder.end_of_stream() is None


@pytest.mark.parametrize("msg_type", TYPES, ids=type_name)
def test_every_message_type_round_trips_at_its_upper_bounds(msg_type):
    spec = REGISTRY[msg_type]
    msg = spec.cls._make(max_value(c) for _, c in spec.validators)
    for name, check in spec.validators:
        check(getattr(msg, name))  # the builder itself stays within the schema
    items, _ = decode_all(encode(msg), max_frame=ABSOLUTE_MAX_FRAME)
    assert items == [msg]


@pytest.mark.parametrize("msg_type", TYPES, ids=type_name)
def test_trailing_defaults_may_be_omitted(msg_type):
    spec = REGISTRY[msg_type]
    full = spec.cls._make(max_value(c) for _, c in spec.validators)
    for n in range(spec.required, spec.total + 1):
        items, _ = decode_all(fields_frame(msg_type, full[:n]), max_frame=ABSOLUTE_MAX_FRAME)
        expected = spec.cls._make(tuple(full[:n]) + spec.defaults[n - spec.required:])
        assert items == [expected]


@settings(max_examples=150)
@given(st.lists(any_message, min_size=1, max_size=4))
def test_every_split_point_gives_the_same_messages(msgs):
    stream = encode_many(msgs)
    assert decode_all(stream)[0] == msgs
    for cut in range(len(stream) + 1):
        items, decoder = decode_all(stream, [cut])
        assert items == msgs, cut
        assert decoder.buffered == 0


@settings(max_examples=50)
@given(st.lists(any_message, min_size=1, max_size=3))
def test_byte_at_a_time(msgs):
    stream = encode_many(msgs)
    assert decode_all(stream, range(len(stream)))[0] == msgs


# ---- random input -------------------------------------------------------------------
def cuts_for(data: bytes):
    return st.lists(st.integers(0, len(data)), max_size=6)


@settings(max_examples=400)
@given(st.binary(max_size=600), st.data())
def test_random_bytes_never_raise(data, draw):
    items, decoder = decode_all(data, draw.draw(cuts_for(data)))
    assert_well_formed(items)
    tail = decoder.end_of_stream()
    assert tail is None or tail.code is ErrorCode.FRAME_TRUNCATED


@settings(max_examples=400)
@given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=80)), min_size=1, max_size=4),
       st.data())
def test_random_bodies_behind_valid_headers_never_raise(frames, draw):
    """Gets past the header checks, so msgpack parsing and every schema are exercised."""
    data = b"".join(frame(t, body) for t, body in frames)
    items, decoder = decode_all(data, draw.draw(cuts_for(data)))
    assert_well_formed(items)
    assert len(items) == len(frames)
    assert not decoder.broken and decoder.end_of_stream() is None


@settings(max_examples=300)
@given(st.sampled_from(TYPES), st.lists(plain_values, max_size=14))
def test_random_field_arrays_decode_or_fail_with_bad_field(msg_type, fields):
    items, _ = decode_all(fields_frame(msg_type, fields))
    assert_well_formed(items)
    item = items[0]
    if isinstance(item, ProtocolError):
        assert item.code is ErrorCode.BAD_FIELD and item.msg_type == msg_type
    else:
        assert item.TYPE == msg_type


@settings(max_examples=300)
@given(st.lists(any_message, min_size=2, max_size=4), st.data())
def test_bit_flips_never_raise_and_body_flips_never_kill_the_stream(msgs, draw):
    stream = bytearray(encode_many(msgs))
    first_len = len(encode(msgs[0]))
    bit = draw.draw(st.integers(0, first_len * 8 - 1))
    stream[bit // 8] ^= 1 << (bit % 8)
    items, decoder = decode_all(bytes(stream), draw.draw(cuts_for(stream)))
    assert_well_formed(items)
    if bit // 8 >= HEADER_SIZE:  # inside the first body: that frame only is affected
        assert items[1:] == msgs[1:]
        first = items[0]
        assert (isinstance(first, ProtocolError) and first.code in NON_FATAL) or \
            type(first) is type(msgs[0])


# ---- targeted mutations -------------------------------------------------------------
@settings(max_examples=200)
@given(any_message, st.data())
def test_truncated_frame_waits_then_fails_at_end_of_stream(msg, draw):
    wire = encode(msg)
    cut = draw.draw(st.integers(1, len(wire) - 1))
    items, decoder = decode_all(wire[:cut])
    assert items == [] and decoder.buffered == cut
    err = decoder.end_of_stream()
    assert err.code is ErrorCode.FRAME_TRUNCATED and err.fatal
    assert decoder.buffered == 0 and decoder.end_of_stream() is None


@settings(max_examples=200)
@given(any_message, plain_values)
def test_body_extended_past_its_value_is_bad_encoding(msg, extra):
    wire = encode(msg)
    body = wire[HEADER_SIZE:] + msgpack.packb(extra)
    only_error(decode_all(frame(msg.TYPE, body))[0], ErrorCode.BAD_ENCODING)


@settings(max_examples=200)
@given(any_message, st.data())
def test_body_cut_short_inside_a_consistent_frame_is_bad_encoding(msg, draw):
    body = encode(msg)[HEADER_SIZE:]
    cut = draw.draw(st.integers(0, len(body) - 1))
    only_error(decode_all(frame(msg.TYPE, body[:cut]))[0], ErrorCode.BAD_ENCODING)


@settings(max_examples=300)
@given(any_message, st.data())
def test_field_of_the_wrong_type_is_bad_field_naming_it(msg, draw):
    spec = REGISTRY[msg.TYPE]
    i = draw.draw(st.integers(0, spec.total - 1))
    name, check = spec.validators[i]
    fields = list(msg)
    fields[i] = wrong_type(check)
    items, decoder = decode_all(fields_frame(msg.TYPE, fields) + encode(Ping(1)))
    err = only_error(items[:1], ErrorCode.BAD_FIELD)
    assert f"{spec.type.name}.{name}" in err.message and err.msg_type == msg.TYPE
    assert items[1:] == [Ping(1)] and not decoder.broken


@pytest.mark.parametrize("msg_type", TYPES, ids=type_name)
def test_field_past_its_bound_is_bad_field(msg_type):
    spec = REGISTRY[msg_type]
    base = [max_value(c) for _, c in spec.validators]
    for i, (name, check) in enumerate(spec.validators):
        bad = out_of_bounds(check)
        if bad is None:
            continue
        with pytest.raises(FieldError):
            check(bad)
        fields = list(base)
        fields[i] = bad
        items, _ = decode_all(fields_frame(msg_type, fields), max_frame=ABSOLUTE_MAX_FRAME)
        err = only_error(items, ErrorCode.BAD_FIELD)
        assert f"{spec.type.name}.{name}" in err.message


@settings(max_examples=200)
@given(any_message, plain_values, st.data())
def test_extra_or_missing_fields_are_bad_field(msg, extra, draw):
    spec = REGISTRY[msg.TYPE]
    fields = tuple(msg)
    only_error(decode_all(fields_frame(msg.TYPE, fields + (extra,)))[0], ErrorCode.BAD_FIELD)
    n = draw.draw(st.integers(0, spec.required - 1))
    only_error(decode_all(fields_frame(msg.TYPE, fields[:n]))[0], ErrorCode.BAD_FIELD)


@settings(max_examples=100)
@given(any_message, plain_values.filter(lambda v: type(v) is not tuple))
def test_body_that_is_not_an_array_is_bad_field(msg, value):
    only_error(decode_all(frame(msg.TYPE, msgpack.packb(value)))[0], ErrorCode.BAD_FIELD)


@settings(max_examples=100)
@given(any_message, st.sampled_from(UNREGISTERED))
def test_unknown_type_is_skipped(msg, unknown):
    wire = bytearray(encode(msg))
    wire[1] = unknown
    items, decoder = decode_all(bytes(wire) + encode(msg))
    err = items[0]
    assert isinstance(err, ProtocolError) and err.code is ErrorCode.UNKNOWN_TYPE
    assert not err.fatal and err.msg_type == unknown
    assert items[1:] == [msg] and not decoder.broken


@settings(max_examples=100)
@given(any_message, st.integers(0, 255).filter(lambda v: v != PROTOCOL_VERSION))
def test_wrong_version_is_fatal(msg, version):
    wire = bytearray(encode(msg))
    wire[0] = version
    items, decoder = decode_all(bytes(wire) + encode(msg))
    err = only_error(items, ErrorCode.BAD_VERSION)
    assert err.fatal and decoder.broken


@settings(max_examples=100)
@given(any_message, st.sampled_from([2, 3]), st.integers(1, 255))
def test_flags_or_reserved_set_is_fatal(msg, offset, value):
    wire = bytearray(encode(msg))
    wire[offset] = value
    items, decoder = decode_all(bytes(wire) + encode(msg))
    assert only_error(items, ErrorCode.BAD_FLAGS).fatal and decoder.broken


@pytest.mark.parametrize("max_frame", [1024, DEFAULT_MAX_FRAME, ABSOLUTE_MAX_FRAME])
def test_frame_size_limit_is_exact_and_checked_from_the_header(max_frame):
    # body of exactly max_frame bytes: accepted (a PUBLISH whose payload fills it)
    for bin_header in (2, 3, 5):  # bin8 / bin16 / bin32, after fixarray and fixstr "t"
        payload_len = max_frame - 3 - bin_header
        body = msgpack.packb(("t", b"\0" * payload_len), use_bin_type=True)
        if len(body) == max_frame:
            break
    assert len(body) == max_frame
    items, _ = decode_all(frame(MsgType.PUBLISH, body), max_frame=max_frame)
    assert items == [REGISTRY[MsgType.PUBLISH].cls("t", b"\0" * payload_len)]
    # one more byte is refused from the header alone, before the body arrives
    decoder = FrameDecoder(max_frame)
    out = decoder.feed(frame(MsgType.GOSSIP_PULL, b"", length=max_frame + 1))
    err = only_error(out, ErrorCode.FRAME_TOO_LARGE)
    assert err.fatal and decoder.broken and decoder.buffered == 0


def test_decoder_limits_are_validated():
    for bad in (0, -1, ABSOLUTE_MAX_FRAME + 1):
        with pytest.raises(ValueError):
            FrameDecoder(bad)
    assert ABSOLUTE_MAX_FRAME == 16 << 20 and DEFAULT_MAX_FRAME == 1 << 20


def test_recovers_after_non_fatal_errors():
    good = encode(Ping(1))
    bad = [frame(0xEE, b"\x90"), frame(MsgType.PING, b"\xc1"), fields_frame(MsgType.PING, ["x"])]
    items, decoder = decode_all(b"".join(b + good for b in bad))
    codes = [i.code for i in items if isinstance(i, ProtocolError)]
    assert codes == [ErrorCode.UNKNOWN_TYPE, ErrorCode.BAD_ENCODING, ErrorCode.BAD_FIELD]
    assert [i for i in items if not isinstance(i, ProtocolError)] == [Ping(1)] * 3
    assert not decoder.broken and decoder.feed(encode(Pong(2))) == [Pong(2)]


@pytest.mark.parametrize("poison,code", [
    (frame(MsgType.PING, b"", version=2), ErrorCode.BAD_VERSION),
    (frame(MsgType.PING, b"", flags=1), ErrorCode.BAD_FLAGS),
    (frame(MsgType.PING, b"", reserved=0x80), ErrorCode.BAD_FLAGS),
    (frame(MsgType.PING, b"", length=DEFAULT_MAX_FRAME + 1), ErrorCode.FRAME_TOO_LARGE),
])
def test_stays_broken_after_a_fatal_error(poison, code):
    good = encode(Ping(1))
    decoder = FrameDecoder()
    out = decoder.feed(good + poison + good)
    assert out[0] == Ping(1) and out[1].code is code and out[1].fatal and len(out) == 2
    assert decoder.broken and decoder.buffered == 0
    assert decoder.feed(good) == [] and decoder.feed(b"\x01" * 100) == []
    assert decoder.end_of_stream() is None


def test_end_of_stream_on_a_clean_boundary_is_silent():
    decoder = FrameDecoder()
    assert decoder.feed(encode(Ping(1)) * 3) == [Ping(1)] * 3
    assert decoder.end_of_stream() is None
    assert decoder.feed(b"\x01\x03") == []
    assert decoder.end_of_stream().code is ErrorCode.FRAME_TRUNCATED


def test_decode_body_raises_typed_non_fatal_errors():
    assert decode_body(MsgType.PING, msgpack.packb((7,))) == Ping(7)
    for msg_type, body, code in ((0xEE, b"\x90", ErrorCode.UNKNOWN_TYPE),
                                 (MsgType.PING, b"\x92\x01", ErrorCode.BAD_ENCODING),
                                 (MsgType.PING, b"\x90", ErrorCode.BAD_FIELD)):
        with pytest.raises(ProtocolError) as info:
            decode_body(msg_type, body)
        assert info.value.code is code and not info.value.fatal and info.value.msg_type == msg_type


def test_type_name():
    assert type_name(MsgType.CONNECT) == "CONNECT" and type_name(0xEE) == "0xee"
