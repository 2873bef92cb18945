"""Macula wire protocol (sans-IO): message registry, field schemas, frame codec."""

from macula.wire.codec import (
    DEFAULT_MAX_FRAME, HEADER_SIZE, PROTOCOL_VERSION, FrameDecoder, decode_body, encode,
    encode_many, type_name,
)
from macula.wire.messages import REGISTRY, MsgType

__all__ = ["DEFAULT_MAX_FRAME", "HEADER_SIZE", "PROTOCOL_VERSION", "REGISTRY", "FrameDecoder",
           "MsgType", "decode_body", "encode", "encode_many", "type_name"]
