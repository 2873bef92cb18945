"""Logging: structured journald entries under systemd, plain lines on stderr otherwise.

Records may carry ``node_id``, ``peer`` and ``realm`` (``log.info(..., extra={"peer": p})``);
they become the journal fields NODE_ID, PEER and REALM, so `journalctl -u macula-agent
PEER=ab12...` finds one peer's story. `NodeFields` fills in this node's id and realm on
every record once they are known.

Entries go through systemd-python's `journal.sendv` when installed, else through the
native protocol on /run/systemd/journal/socket (with a sealed memfd for entries larger
than a datagram, as sd_journal_sendv does).
"""

from __future__ import annotations

import array
import errno
import fcntl
import logging
import os
import socket
import struct
import sys
from pathlib import Path
from typing import Callable, Mapping, TextIO

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
IDENTIFIER = "macula"
# record attribute -> journal field
FIELDS = {"node_id": "NODE_ID", "peer": "PEER", "realm": "REALM"}
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


def syslog_priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITY[level]
    return _PRIORITY[logging.DEBUG]


def encode_entry(fields: Mapping[str, str]) -> bytes:
    """The journald native protocol: KEY=value lines; values with a newline are sent as
    KEY, newline, little-endian u64 length, the bytes, newline."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class NativeJournal:
    """A sender speaking the native protocol to journald's datagram socket."""

    def __init__(self, path: Path = JOURNAL_SOCKET) -> None:
        self.path = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def __call__(self, fields: Mapping[str, str]) -> None:
        payload = encode_entry(fields)
        try:
            self._sock.sendto(payload, self.path)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(payload)

    def _send_memfd(self, payload: bytes) -> None:
        # Too big for one datagram: journald reads the entry from a sealed memfd instead.
        fd = os.memfd_create("macula-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, payload)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                        | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            self._sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                     array.array("i", [fd]))], 0, self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        self._sock.close()


def _systemd_python_sender() -> Callable[[Mapping[str, str]], None] | None:
    try:
        from systemd import journal  # type: ignore[import-not-found]
    except ImportError:
        return None
    return lambda fields: journal.sendv(*(f"{k}={v}" for k, v in fields.items()))


class JournalHandler(logging.Handler):
    def __init__(self, send: Callable[[Mapping[str, str]], None],
                 identifier: str = IDENTIFIER) -> None:
        super().__init__()
        self._send = send
        self.identifier = identifier

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {
                "MESSAGE": self.format(record),
                "PRIORITY": str(syslog_priority(record.levelno)),
                "SYSLOG_IDENTIFIER": self.identifier,
                "LOGGER": record.name,
                "CODE_FILE": record.pathname,
                "CODE_LINE": str(record.lineno),
                "CODE_FUNC": record.funcName,
            }
            for attr, field in FIELDS.items():
                value = getattr(record, attr, None)
                if value not in (None, ""):
                    fields[field] = str(value)
            self._send(fields)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        if isinstance(self._send, NativeJournal):
            self._send.close()
        super().close()


class FieldsFormatter(logging.Formatter):
    """Plain lines for a terminal, with the structured fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        # terminals get short node IDs (12 hex digits); the journal keeps them whole
        extra = [f"{attr}={str(getattr(record, attr))[:12] if attr in ('node_id', 'peer') else getattr(record, attr)}"
                 for attr in FIELDS if getattr(record, attr, None) not in (None, "")]
        return f"{text} [{' '.join(extra)}]" if extra else text


class NodeFields(logging.Filter):
    """Puts this node's id and realm on records that do not name their own."""

    def __init__(self) -> None:
        super().__init__()
        self.node_id = ""
        self.realm = ""

    def filter(self, record: logging.LogRecord) -> bool:
        for attr in ("node_id", "realm"):
            if not getattr(record, attr, None) and getattr(self, attr):
                setattr(record, attr, getattr(self, attr))
        return True


def under_journald(env: Mapping[str, str], stderr: TextIO | None = None) -> bool:
    """True when systemd runs us: INVOCATION_ID is set, or JOURNAL_STREAM names our stderr."""
    if env.get("INVOCATION_ID"):
        return True
    dev, _, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat((stderr or sys.stderr).fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


_OURS = "_macula_handler"


def setup_logging(level: str = "info", *, env: Mapping[str, str] | None = None,
                  stream: TextIO | None = None,
                  journal_socket: Path = JOURNAL_SOCKET) -> NodeFields:
    """Install the one root handler (replacing one installed earlier) and return the
    filter the node fills with its id and realm once its identity is loaded."""
    env = os.environ if env is None else env
    handler: logging.Handler
    if under_journald(env, stream) and journal_socket.exists():
        send = (_systemd_python_sender() if journal_socket == JOURNAL_SOCKET else None) \
            or NativeJournal(journal_socket)
        handler = JournalHandler(send)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(FieldsFormatter())
    fields = NodeFields()
    handler.addFilter(fields)
    setattr(handler, _OURS, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    return fields
