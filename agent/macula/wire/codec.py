"""Frame codec: length-prefixed msgpack frames on a byte stream (sans-IO).

    0        1        2        3        4                 8
    +--------+--------+--------+--------+-----------------+---------------------+
    |version | type   | flags  |reserved| length (u32 BE) | body: msgpack array |
    +--------+--------+--------+--------+-----------------+---------------------+

``length`` counts the body only and is capped (the original had no cap). Everything a
peer sends is checked: header, msgpack encoding and every field against the
registry's schema. Errors come out as ProtocolError values with a stable code; they
are never raised out of ``FrameDecoder.feed``.
"""

from __future__ import annotations

import struct
from typing import Any, Iterable, NamedTuple, Union

import msgpack

from macula.errors import ErrorCode, ProtocolError
from macula.wire.fields import FieldError
from macula.wire.messages import REGISTRY, MsgType

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">BBBBI")
HEADER_SIZE = HEADER.size
DEFAULT_MAX_FRAME = 1 << 20  # 1 MiB body; the node's limit comes from hw -> config
ABSOLUTE_MAX_FRAME = 16 << 20

Message = NamedTuple  # every registered message is a NamedTuple with a TYPE attribute
Decoded = Union[Any, ProtocolError]

_packer = msgpack.Packer(use_bin_type=True, autoreset=True)
_pack = _packer.pack
_header_pack = HEADER.pack
_header_unpack_from = HEADER.unpack_from


def encode(msg: Any) -> bytes:
    """One frame for a registered message (a NamedTuple from wire.messages)."""
    body = _pack(msg)
    return _header_pack(PROTOCOL_VERSION, msg.TYPE, 0, 0, len(body)) + body


def encode_many(msgs: Iterable[Any]) -> bytes:
    return b"".join([encode(m) for m in msgs])


def decode_body(msg_type: int, body: bytes) -> Any:
    """Decode and validate one body. Raises ProtocolError (not fatal)."""
    spec = REGISTRY.get(msg_type)
    if spec is None:
        raise ProtocolError(f"unknown message type 0x{msg_type:02x}",
                            code=ErrorCode.UNKNOWN_TYPE, msg_type=msg_type)
    cap = spec.max_container
    try:
        # arrays and maps longer than any valid body of this type has are refused while
        # unpacking, before they are built: a 1M-element array costs nothing
        fields = msgpack.unpackb(body, use_list=False, raw=False, strict_map_key=True,
                                 max_array_len=cap, max_map_len=cap)
    except Exception as exc:  # msgpack raises several types (ExtraData, ValueError, ...)
        if type(exc) is ValueError and "exceeds max" in str(exc):
            raise ProtocolError(f"{spec.type.name}: an array or map longer than {cap}",
                                code=ErrorCode.BAD_FIELD, msg_type=msg_type) from None
        raise ProtocolError(f"{spec.type.name}: body is not one msgpack value ({type(exc).__name__})",
                            code=ErrorCode.BAD_ENCODING, msg_type=msg_type) from None
    if type(fields) is not tuple:
        raise ProtocolError(f"{spec.type.name}: body must be an array, got {type(fields).__name__}",
                            code=ErrorCode.BAD_FIELD, msg_type=msg_type)
    n = len(fields)
    if n < spec.required or n > spec.total:
        raise ProtocolError(
            f"{spec.type.name}: {n} fields, expected {spec.required}..{spec.total}",
            code=ErrorCode.BAD_FIELD, msg_type=msg_type)
    try:
        return spec.decode(fields, n)
    except FieldError as exc:
        raise ProtocolError(f"{spec.type.name}.{exc.path}: {exc.reason}",
                            code=ErrorCode.BAD_FIELD, msg_type=msg_type) from None


class FrameDecoder:
    """Turns stream bytes into messages and errors.

    After a fatal error (lost framing, wrong version, oversized frame) the decoder is
    ``broken`` and ignores further input: the caller must close the connection. A
    non-fatal error (unknown type, bad body) skips that one frame.

    ``refuse`` (set by the session, None = accept every type) maps a message type to
    None (decode it) or a ProtocolError: a frame of a refused type is judged from its
    header alone, never decoded, and its body is dropped as it arrives instead of being
    held, so a peer pays for the bytes and the node for nothing.
    """

    __slots__ = ("max_frame", "_buf", "broken", "refuse", "_skip")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME,
                 refuse: list[ProtocolError | None] | None = None) -> None:
        if not 0 < max_frame <= ABSOLUTE_MAX_FRAME:
            raise ValueError(f"max_frame must be in (0, {ABSOLUTE_MAX_FRAME}]")
        self.max_frame = max_frame
        self._buf = bytearray()
        self.broken = False
        self.refuse = refuse
        self._skip = 0  # body bytes of a refused frame still to drop

    @property
    def buffered(self) -> int:
        """Bytes of a partially received frame held here."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Decoded]:
        if self.broken:
            return []
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            if n == len(data):
                return []
            data = data[n:]
        # Whole frames usually arrive together: parse them straight from ``data`` (one
        # copy per body); only a partial frame is kept in the bytearray.
        if self._buf:
            buf = self._buf
            buf += data
        else:
            buf = data
        out: list[Decoded] = []
        pos = 0
        end = len(buf)
        max_frame = self.max_frame
        refuse = self.refuse
        while end - pos >= HEADER_SIZE:
            version, msg_type, flags, reserved, length = _header_unpack_from(buf, pos)
            if version != PROTOCOL_VERSION:
                out.append(self._fatal(f"frame version {version}, this node speaks {PROTOCOL_VERSION}",
                                       ErrorCode.BAD_VERSION))
                return out
            if flags or reserved:
                out.append(self._fatal(f"reserved header bits set (flags={flags}, reserved={reserved})",
                                       ErrorCode.BAD_FLAGS))
                return out
            if length > max_frame:
                out.append(self._fatal(f"frame body of {length} bytes exceeds the {max_frame} byte limit",
                                       ErrorCode.FRAME_TOO_LARGE))
                return out
            start = pos + HEADER_SIZE
            if refuse is not None and refuse[msg_type] is not None:
                out.append(refuse[msg_type])
                if end - start < length:  # drop the rest of the body as it comes
                    self._skip = length - (end - start)
                    pos = end
                    break
                pos = start + length
                continue
            if end - start < length:
                break
            pos = start + length
            try:
                out.append(decode_body(msg_type, buf[start:pos]))
            except ProtocolError as exc:
                out.append(exc)
        if buf is data:
            if pos < end:
                self._buf += memoryview(data)[pos:]
        elif pos:
            del buf[:pos]
        return out

    def end_of_stream(self) -> ProtocolError | None:
        """Call when the stream ends: an error if a frame was cut short."""
        if self.broken or not (self._buf or self._skip):
            return None
        n = len(self._buf)
        self.release()
        return ProtocolError(f"stream ended inside a frame ({n} bytes pending)",
                             code=ErrorCode.FRAME_TRUNCATED, fatal=True)

    def release(self) -> None:
        """Free the partial frame (the session ended): its memory goes back at once."""
        self._buf = bytearray()
        self._skip = 0

    def _fatal(self, message: str, code: ErrorCode) -> ProtocolError:
        self.broken = True
        self.release()
        return ProtocolError(message, code=code, fatal=True)


def refusal_table(accepted: Iterable[int], make: Any) -> list[ProtocolError | None]:
    """A FrameDecoder ``refuse`` table: None for ``accepted`` types, else ``make(type)``
    (a ProtocolError, built once per type and reused for every refused frame)."""
    ok = frozenset(accepted)
    return [None if t in ok else make(t) for t in range(256)]


def type_name(msg_type: int) -> str:
    try:
        return MsgType(msg_type).name
    except ValueError:
        return f"0x{msg_type:02x}"
