"""One exception hierarchy with stable numeric codes (documented in docs/ERRORS.md).

A code travels in ERROR frames and as the QUIC application close code, so a peer
and an operator see the same number. Codes never change meaning; new ones are added.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    # 1xx: framing and message validation (wire)
    FRAME_TOO_LARGE = 100
    FRAME_TRUNCATED = 101
    BAD_VERSION = 102
    UNKNOWN_TYPE = 103
    BAD_FLAGS = 104
    BAD_ENCODING = 105
    BAD_FIELD = 106
    # 2xx: session and security
    NOT_CONNECTED = 200
    REALM_MISMATCH = 201
    VERSION_MISMATCH = 202
    IDENTITY_INVALID = 203
    PEER_KEY_CHANGED = 204
    CERT_REJECTED = 205
    RATE_LIMITED = 206
    OVERLOADED = 207
    GOING_AWAY = 208
    PROTOCOL_VIOLATION = 209
    TIMEOUT = 210
    DUPLICATE_SESSION = 211
    PEER_UNREACHABLE = 212
    CREDENTIAL_INVALID = 213
    # 3xx: messaging (pub/sub, RPC)
    NO_RESPONDERS = 300
    CALL_TIMEOUT = 301
    HANDLER_ERROR = 302
    CALL_OVERLOADED = 303
    BAD_TOPIC = 304
    CANCELLED = 305
    # 4xx: DHT and discovery
    NOT_FOUND = 400
    STORE_REFUSED = 401
    # 5xx: local configuration and state (never sent on the wire)
    CONFIG_INVALID = 500
    STATE_INVALID = 501
    # 9xx: the node itself
    INTERNAL = 900


# QUIC application close codes are CLOSE_CODE_BASE + ErrorCode, so they never collide
# with QUIC transport / TLS error codes (0x00-0x1ff).
CLOSE_CODE_BASE = 0x1000


def close_code(code: ErrorCode) -> int:
    return CLOSE_CODE_BASE + int(code)


class MaculaError(Exception):
    """Base of every error the agent raises on purpose; carries a stable code."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}: {self.message})"


class ProtocolError(MaculaError):
    """Bad input from the network: a frame or message that breaks the protocol.

    ``fatal`` means the byte stream cannot be trusted any more (framing lost or the
    peer is incompatible): the connection must close. Otherwise the frame is dropped,
    an ERROR frame is returned and the stream goes on.
    """

    code = ErrorCode.PROTOCOL_VIOLATION

    def __init__(self, message: str, *, code: ErrorCode | None = None, fatal: bool = False,
                 msg_type: int | None = None) -> None:
        super().__init__(message, code=code)
        self.fatal = fatal
        self.msg_type = msg_type


class SessionRefused(MaculaError):
    """A peer was refused at CONNECT: realm, version, identity, TOFU or certificate."""


class ConfigError(MaculaError):
    code = ErrorCode.CONFIG_INVALID


class StateError(MaculaError):
    code = ErrorCode.STATE_INVALID


class Overloaded(MaculaError):
    code = ErrorCode.OVERLOADED
