"""Fuzzing at volume: the frame decoder, the CONNECT / CONNECTED handshake and the control
socket (issue "Hardening", "Fuzzing").

The property everywhere: hostile bytes give a refusal (a ProtocolError value, a session
closed with an error code, a JSON error reply), never another exception, never
unbounded buffering, never a session established with an identity that was not proved.

The suite runs a bounded number of examples (derandomized by tests/unit/conftest.py:
the same inputs on every run, no example database). scripts/fuzz.sh runs the same
properties at volume with fresh randomness (MACULA_FUZZ_EXAMPLES, HYPOTHESIS_PROFILE=
explore), then the coverage-guided atheris targets of scripts/fuzz_targets.py.
A crash found either way becomes a named example test at the end of this file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from macula.errors import ErrorCode, ProtocolError, SessionRefused, close_code
from macula.identity import TofuStore, ephemeral_dev_material, ephemeral_identity
from macula.transport.handshake import TofuTrust
from macula.transport.session import Session, SessionConfig, State
from macula.wire import DEFAULT_MAX_FRAME, REGISTRY, FrameDecoder, MsgType, decode_body, encode
from macula.wire.codec import HEADER, HEADER_SIZE, PROTOCOL_VERSION, refusal_table
from macula.wire.messages import Call, Connect, Connected, Ping, Publish, Subscribe
from test_wire_codec import TYPES, any_message, strategy_for

EXAMPLES = int(os.environ.get("MACULA_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture,
                                       HealthCheck.filter_too_much])
FEW = settings(FUZZ, max_examples=max(25, EXAMPLES // 4))  # the costlier properties
MAX_FRAME = 4096
CLASSES = {spec.cls for spec in REGISTRY.values()}
cuts_st = st.lists(st.integers(0, 1 << 16), max_size=8)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points + [len(data)]:
        out.append(data[last:p])
        last = p
    return out


def _feed_all(dec: FrameDecoder, chunks: list[bytes], end: bool = False) -> list:
    """Feed every chunk; check the decoder's invariants after each one."""
    out = []
    for c in chunks:
        got = dec.feed(c)  # never raises: errors come out as values
        assert dec.buffered < dec.max_frame + HEADER_SIZE, dec.buffered
        out += got
    if end:
        err = dec.end_of_stream()
        if err is not None:
            out.append(err)
    _assert_items(out, dec)
    return out


def _assert_items(items: list, dec: FrameDecoder) -> None:
    for i, item in enumerate(items):
        if isinstance(item, ProtocolError):
            assert type(item) is ProtocolError and isinstance(item.code, ErrorCode), repr(item)
            if item.fatal:
                assert i == len(items) - 1, "output after a fatal error"
                assert dec.buffered == 0, "a fatal error must free the partial frame"
        else:
            assert type(item) in CLASSES, item
            assert encode(item) and decode_body(item.TYPE, encode(item)[HEADER_SIZE:]) == item


def _frame(msg_type: int, body: bytes, length: int | None = None) -> bytes:
    return HEADER.pack(PROTOCOL_VERSION, msg_type, 0, 0, len(body) if length is None else length) + body


VALID = [encode(Publish("a.b", b"x" * 10)), encode(Subscribe(1, "a.*")),
         encode(Call(5, "svc.echo", b"hello", 1000, False)), encode(Ping(3))]
valid_frames = st.lists(st.sampled_from(VALID) | any_message.map(encode), min_size=1, max_size=5)

# msgpack values of every kind, ext types, non-str keys and odd nesting included
wild_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=40) | st.binary(max_size=80)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
    lambda inner: st.lists(inner, max_size=5).map(tuple)
    | st.dictionaries(st.text(max_size=4) | st.binary(max_size=4) | st.integers(-128, 2**32),
                      inner, max_size=4),
    max_leaves=20)


# -- 1. the frame decoder -------------------------------------------------------------------
@FUZZ
@given(st.binary(max_size=3 * MAX_FRAME), cuts_st, st.booleans())
def test_decoder_arbitrary_bytes_in_arbitrary_chunks_only_refuses(data, cuts, end):
    _feed_all(FrameDecoder(MAX_FRAME), _chunks(data, cuts), end)


@FUZZ
@given(st.binary(max_size=2 * MAX_FRAME), cuts_st)
def test_decoder_with_a_refusal_table_only_refuses_and_never_holds_refused_bodies(data, cuts):
    table = refusal_table((MsgType.CONNECT, MsgType.CONNECTED, MsgType.ERROR),
                          lambda t: ProtocolError(f"{t} refused", code=ErrorCode.NOT_CONNECTED))
    dec = FrameDecoder(MAX_FRAME, table)
    for item in _feed_all(dec, _chunks(data, cuts), end=True):
        if not isinstance(item, ProtocolError):
            assert item.TYPE in (MsgType.CONNECT, MsgType.CONNECTED, MsgType.ERROR)


@FUZZ
@given(valid_frames, st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6),
       st.integers(0, 1 << 16), cuts_st)
def test_decoder_mutated_valid_frames_give_errors_or_messages(frames, flips, cut, cuts):
    data = bytearray(b"".join(frames))
    for pos, val in flips:
        data[pos % len(data)] = val
    data = bytes(data[:len(data) - cut % 9])  # sometimes truncated
    _feed_all(FrameDecoder(MAX_FRAME), _chunks(data, cuts), end=True)


@FUZZ
@given(valid_frames, st.integers(0, 4), st.integers(0, 0xFFFF_FFFF) | st.integers(0, 64), cuts_st)
def test_decoder_frames_with_a_changed_length_field(frames, which, length, cuts):
    data = bytearray(b"".join(frames))
    offset = 0
    for f in frames[:which % len(frames)]:
        offset += len(f)
    struct.pack_into(">I", data, offset + 4, length)
    _feed_all(FrameDecoder(MAX_FRAME), _chunks(bytes(data), cuts), end=True)


@FUZZ
@given(st.lists(any_message, min_size=1, max_size=5), cuts_st)
def test_decoder_valid_messages_round_trip_in_any_chunking(msgs, cuts):
    data = b"".join(encode(m) for m in msgs)
    got = _feed_all(FrameDecoder(DEFAULT_MAX_FRAME), _chunks(data, cuts), end=True)
    assert got == msgs


@FUZZ
@given(st.integers(0, 255), st.integers(0, 0xFFFF_FFFF), st.binary(max_size=512),
       st.booleans())
def test_decoder_any_header_never_buffers_past_the_limit(msg_type, length, tail, refusing):
    table = refusal_table((), lambda t: ProtocolError("no", code=ErrorCode.UNKNOWN_TYPE)) \
        if refusing else None
    dec = FrameDecoder(MAX_FRAME, table)
    out = dec.feed(HEADER.pack(1, msg_type, 0, 0, length) + tail)
    assert dec.buffered < MAX_FRAME + HEADER_SIZE
    if length > MAX_FRAME:
        assert out and out[0].fatal and dec.broken and dec.buffered == 0


@FUZZ
@given(st.integers(0, 255), st.binary(max_size=2048) | wild_values.map(
    lambda v: msgpack.packb(v, use_bin_type=True)))
def test_decode_body_of_any_type_returns_a_valid_message_or_raises_protocol_error(t, body):
    try:
        msg = decode_body(t, body)
    except ProtocolError as exc:
        assert exc.code in (ErrorCode.UNKNOWN_TYPE, ErrorCode.BAD_ENCODING, ErrorCode.BAD_FIELD)
        return
    spec = REGISTRY[t]
    assert type(msg) is spec.cls
    for name, check in spec.validators:  # the generated decoder agrees with the schema
        check(getattr(msg, name))


def _mixed_fields(t: int) -> st.SearchStrategy:
    """Field arrays of the right length for type ``t``, each field either valid or wild."""
    spec = REGISTRY[t]
    per_field = [strategy_for(check) | wild_values for _, check in spec.validators]
    return st.integers(spec.required, spec.total).flatmap(
        lambda n: st.tuples(*per_field[:n]))


@FUZZ
@given(st.sampled_from(TYPES).flatmap(lambda t: st.tuples(st.just(t), _mixed_fields(t))))
def test_decoder_accepts_a_field_array_exactly_when_every_validator_does(case):
    t, fields = case
    spec = REGISTRY[t]
    try:
        body = msgpack.packb(fields, use_bin_type=True)
    except (ValueError, OverflowError, TypeError):
        return  # not encodable (e.g. a huge int): nothing a peer could send
    valid = True
    decoded = msgpack.unpackb(body, use_list=False, raw=False, strict_map_key=False)
    for (_, check), value in zip(spec.validators, decoded):
        try:
            check(value)
        except ValueError:
            valid = False
    try:
        msg = decode_body(t, body)
    except ProtocolError as exc:
        # a map with a non-str key is refused by msgpack (strict_map_key) as an encoding error
        assert not valid or exc.code is ErrorCode.BAD_ENCODING, exc
        return
    assert valid, f"accepted a field that its validator refuses: {msg!r}"


# -- 2. the CONNECT / CONNECTED handshake ---------------------------------------------------
class _Endpoint:
    def __init__(self, loop):
        self.loop = loop

    def flush_ready(self, link):
        pass


class _Link:
    """What a Session needs of a QUIC link, without QUIC: bytes out are collected."""

    def __init__(self, loop, is_client: bool, peer_cert: bytes | None, odcid: bytes):
        self.endpoint = _Endpoint(loop)
        self.is_client = is_client
        self.remote_addr = ("127.0.0.1", 40000)
        self.odcid = odcid
        self._peer_cert = peer_cert
        self.out: list[bytes] = []
        self.buffered = 0
        self.closed = False
        self.close_code = None
        self.handshake_done = True
        self.on_transmitted = None

    def peer_cert_der(self):
        return self._peer_cert

    def queue(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def close(self, code: int = 0, reason: str = "") -> None:
        self.closed, self.close_code = True, code


def _config(name: str, realm: str = "fuzz", tofu: TofuStore | None = None):
    ident = ephemeral_identity()
    tls = ephemeral_dev_material(ident.node_id)
    return SessionConfig(ident, tls, realm, name, listen=("127.0.0.1", 9443),
                         trust=TofuTrust(tofu) if tofu is not None else None)


class _Handshake:
    """A real dialer's CONNECT and a real acceptor's CONNECTED, without QUIC."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.dialer_cfg, self.acceptor_cfg = _config("dialer"), _config("acceptor")
        self.odcid = os.urandom(8)
        link = _Link(self.loop, True, self.acceptor_cfg.tls.cert_der, self.odcid)
        Session(link, self.dialer_cfg, on_admit=_nothing, on_established=_nothing,
                on_message=_nothing, on_closed=_nothing)._timeout.cancel()
        link.on_handshake()
        self.connect = link.out[0]
        s = self.accept(self.connect)
        assert s.state is State.ESTABLISHED
        self.connected = s.link.out[0]
        self.settle()

    def session(self, dialer: bool, odcid: bytes | None = None, cfg=None) -> Session:
        peer_cert = self.acceptor_cfg.tls.cert_der if dialer else None
        link = _Link(self.loop, dialer, peer_cert, self.odcid if odcid is None else odcid)
        cfg = cfg or (self.dialer_cfg if dialer else self.acceptor_cfg)
        s = Session(link, cfg, on_admit=_nothing, on_established=_nothing,
                    on_message=_nothing, on_closed=_nothing)
        s._timeout.cancel()
        return s

    def accept(self, data: bytes, cuts=(), *, dialer: bool = False, end: bool = False,
               odcid: bytes | None = None, cfg=None) -> Session:
        s = self.session(dialer, odcid, cfg)
        for c in _chunks(data, list(cuts)):
            s.link.on_data(c, False)
        if end:
            s.link.on_data(b"", True)
        return s

    def settle(self) -> None:
        """Run the callbacks the sessions scheduled (the link closes)."""
        self.loop.call_soon(self.loop.stop)
        self.loop.run_forever()


def _nothing(*_args) -> None:
    return None


@pytest.fixture(scope="module")
def hs():
    h = _Handshake()
    yield h
    h.loop.close()


def _assert_refused_properly(h: _Handshake, s: Session) -> None:
    """A session that did not establish ends with a coded error: an ERROR frame when it
    refused a CONNECT (sent before the close) and a close code carrying the same code."""
    assert s.state is State.CLOSED, s.state
    assert isinstance(s.error, SessionRefused) and isinstance(s.error.code, ErrorCode), s.error
    h.settle()
    assert s.link.closed and s.link.close_code == close_code(s.error.code)
    for frame in s.link.out:  # anything sent back is a well-formed frame
        (msg,) = FrameDecoder().feed(frame)
        assert type(msg) is not ProtocolError


def _assert_outcome(h: _Handshake, s: Session, dialer: bool, established: list | None = None):
    if s.state is State.ESTABLISHED:
        # the only identity that can be proved is the real peer's: nobody else signed
        real = h.acceptor_cfg if dialer else h.dialer_cfg
        assert s.peer.node_id == real.identity.node_id
        assert s.peer.identity_key == real.identity.public_key
        assert hashlib.sha256(s.peer.identity_key).digest() == s.peer.node_id
        s.close()
        h.settle()
    elif s.state is State.HANDSHAKING:
        # waiting for the rest of a frame: the end of the stream must refuse it
        s.link.on_data(b"", True)
        _assert_refused_properly(h, s)
    else:
        _assert_refused_properly(h, s)


def test_the_real_connect_and_connected_are_accepted(hs):
    s = hs.accept(hs.connect)
    assert s.state is State.ESTABLISHED and s.peer.node_id == hs.dialer_cfg.identity.node_id
    (reply,) = FrameDecoder().feed(s.link.out[0])
    assert type(reply) is Connected
    d = hs.accept(hs.connected, dialer=True)
    assert d.state is State.ESTABLISHED and d.peer.node_id == hs.acceptor_cfg.identity.node_id


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=4),
       cuts_st, st.binary(max_size=64), st.booleans())
def test_a_mutated_connect_or_connected_is_refused_or_proves_the_real_identity(
        hs, flips, cuts, tail, dialer):
    data = bytearray(hs.connected if dialer else hs.connect)
    for pos, val in flips:
        data[pos % len(data)] = val
    s = hs.accept(bytes(data) + tail, cuts, dialer=dialer)
    _assert_outcome(hs, s, dialer)


@FUZZ
@given(st.binary(max_size=2048), cuts_st, st.booleans())
def test_garbage_instead_of_connect_is_refused(hs, data, cuts, dialer):
    s = hs.accept(data, cuts, dialer=dialer, end=True)
    assert s.state is State.CLOSED
    _assert_refused_properly(hs, s)


def _field_cases(template: bytes, cls, schema_only: bool = False) -> st.SearchStrategy:
    """The real message's fields, some replaced: wrong types, huge strings, forged
    signatures and keys, foreign node IDs, odd field counts."""
    (msg,) = FrameDecoder().feed(template)
    base = list(msg)
    n = len(base)
    replacement = (wild_values | st.text(min_size=200, max_size=5000)
                   | st.binary(min_size=0, max_size=20000) | st.binary(min_size=32, max_size=32)
                   | st.binary(min_size=64, max_size=64) | st.integers(0, 2**16 + 2))

    def build(changes, count):
        fields = list(base)
        for i, value in changes:
            fields[i % n] = value
        return fields[:count]

    # half the replacements pass the schema, so the semantic checks (version, realm,
    # identity, binding, trust) see them rather than the decoder alone
    schema = [strategy_for(check) for _, check in REGISTRY[cls.TYPE].validators]
    required = REGISTRY[cls.TYPE].required
    change = st.integers(0, n - 1).flatmap(
        lambda i: st.tuples(st.just(i), schema[i] if schema_only else schema[i] | replacement))
    return st.builds(build, st.lists(change, min_size=1, max_size=4),
                     st.integers(required, n) if schema_only
                     else st.just(n) | st.integers(max(1, required - 1), n))


@FUZZ
@given(st.data(), st.booleans(), st.booleans())
def test_connect_and_connected_fields_fuzzed_are_refused_or_prove_the_real_identity(
        hs, data, dialer, schema_only):
    template, cls = (hs.connected, Connected) if dialer else (hs.connect, Connect)
    fields = data.draw(_field_cases(template, cls, schema_only))
    try:
        body = msgpack.packb(tuple(fields), use_bin_type=True)
    except (ValueError, OverflowError, TypeError):
        return
    s = hs.accept(_frame(cls.TYPE, body), dialer=dialer)
    _assert_outcome(hs, s, dialer)


@FEW
@given(st.binary(min_size=0, max_size=20))
def test_a_replayed_connect_on_another_connection_is_refused(hs, odcid):
    """The binding signs the connection's original DCID: a CONNECT captured on one
    connection proves nothing on another (another nonce) nor towards another node."""
    if odcid == hs.odcid:
        odcid = odcid + b"\0"
    s = hs.accept(hs.connect, odcid=odcid)
    assert s.state is State.CLOSED and s.error.code is ErrorCode.IDENTITY_INVALID
    _assert_refused_properly(hs, s)


def test_a_replayed_connect_towards_another_node_is_refused(hs):
    other = _config("acceptor")  # same name and odcid, another certificate key
    s = hs.accept(hs.connect, cfg=other)
    assert s.state is State.CLOSED and s.error.code is ErrorCode.IDENTITY_INVALID
    _assert_refused_properly(hs, s)


def test_a_second_connect_on_an_established_session_closes_it(hs):
    s = hs.accept(hs.connect + hs.connect)
    assert s.state is State.CLOSED and s.error.code is ErrorCode.PROTOCOL_VIOLATION
    _assert_refused_properly(hs, s)


def test_a_connect_from_another_key_under_a_pinned_name_is_refused(hs):
    tofu = TofuStore(None, 16)
    cfg = SessionConfig(hs.acceptor_cfg.identity, hs.acceptor_cfg.tls, "fuzz", "acceptor",
                        listen=("127.0.0.1", 9443), trust=TofuTrust(tofu))
    assert hs.accept(hs.connect, cfg=cfg).state is State.ESTABLISHED  # pins "dialer"
    impostor_cfg = _config("dialer")  # same name, another identity
    link = _Link(hs.loop, True, hs.acceptor_cfg.tls.cert_der, hs.odcid)
    Session(link, impostor_cfg, on_admit=_nothing, on_established=_nothing,
            on_message=_nothing, on_closed=_nothing)._timeout.cancel()
    link.on_handshake()
    s = hs.accept(link.out[0], cfg=cfg)
    assert s.state is State.CLOSED and s.error.code is ErrorCode.PEER_KEY_CHANGED
    _assert_refused_properly(hs, s)


# -- 3. the control socket ------------------------------------------------------------------
class _Node:
    """Stands in for the node's operations table."""
    commands: dict = {}

    def status(self):
        return {"ok": True}


@pytest.fixture(scope="module")
def control(tmp_path_factory):
    """A real ControlServer on a Unix socket, with a stand-in node for `status`."""
    from macula.control.server import ControlServer

    loop = asyncio.new_event_loop()
    server = ControlServer(_Node(), tmp_path_factory.mktemp("run"))
    loop.run_until_complete(server.start())
    yield loop, server
    loop.run_until_complete(server.stop())
    loop.close()


def _json_requests() -> st.SearchStrategy:
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=4),
        max_leaves=20)
    cmd = st.sampled_from(["status", "nope", ""]) | st.text(max_size=10) | json_values
    shaped = st.builds(lambda c, rest: {"cmd": c, **rest}, cmd,
                       st.dictionaries(st.text(max_size=8), json_values, max_size=4))
    return (shaped | json_values).map(lambda v: json.dumps(v).encode())


def _hostile_lines() -> st.SearchStrategy:
    deep = st.tuples(st.integers(1, 40_000), st.sampled_from([b"[", b'{"a":'])).map(
        lambda p: p[1] * p[0] + (b"]" if p[1] == b"[" else b"}") * p[0])
    deep_cmd = st.integers(1, 30_000).map(
        lambda n: b'{"cmd":"status","x":' + b"[" * n + b"]" * n + b"}")
    junk = st.binary(max_size=4096)
    numbers = st.integers(1, 6000).map(lambda n: b'{"cmd":"status","n":' + b"9" * n + b"}")
    return st.one_of(deep, deep_cmd, junk, numbers, _json_requests())


def _check_reply(reply: dict) -> None:
    assert isinstance(reply, dict) and type(reply.get("ok")) is bool, reply
    if not reply["ok"]:
        assert int(reply["code"]) in {int(c) for c in ErrorCode}, reply
        assert isinstance(reply["error"], str)
    json.dumps(reply)  # the server can write it


@FUZZ
@given(_hostile_lines())
def test_control_request_parser_answers_every_line_with_a_json_reply(control, line):
    loop, server = control
    reply = loop.run_until_complete(server._handle(line + b"\n"))
    _check_reply(reply)


async def _ask(path, data: bytes) -> list[bytes]:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 20)
    try:
        try:
            writer.write(data)
            await writer.drain()
            writer.write_eof()
        except (ConnectionError, OSError):
            pass  # the server may close early (a line past its limit)
        out = b""
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 16), 10)
            except ConnectionError:
                break
            if not chunk:
                break
            out += chunk
        return out.splitlines()
    finally:
        writer.close()


@FEW
@given(st.lists(_hostile_lines(), min_size=1, max_size=3),
       st.sampled_from([b"\n", b"\r\n", b""]),
       st.sampled_from([0, 0, 70_000, 200_000]))
def test_control_socket_answers_hostile_requests_and_keeps_serving(control, lines, sep, huge):
    loop, server = control
    data = sep.join(lines) + sep
    if huge:
        data += b"x" * huge + b"\n"  # past MAX_REQUEST
    for raw in loop.run_until_complete(_ask(server.path, data)):
        _check_reply(json.loads(raw))  # an error reply or a close, never a crash
    reply = loop.run_until_complete(_ask(server.path, b'{"cmd": "status"}\n'))
    assert [json.loads(r) for r in reply] == [{"ok": True, "result": {"ok": True}}], \
        "the control socket stopped answering"


# -- crashes found by fuzzing, kept as examples -----------------------------------------------
# (none in product code so far: add each new one here as a named example test)
