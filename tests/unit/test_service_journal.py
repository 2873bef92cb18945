"""journald native protocol against a real datagram socket; stderr outside systemd."""

from __future__ import annotations

import array
import fcntl
import io
import logging
import mmap
import os
import socket
import struct
from pathlib import Path
from typing import Iterator

import pytest

from macula.service.journal import (JournalHandler, NativeJournal, encode_entry, setup_logging,
                                    syslog_priority, under_journald)


def parse_entry(data: bytes) -> dict[str, str]:
    """A reader of the native protocol, written from its description, to check the writer."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            i = end + 1
        else:
            (size,) = struct.unpack("<Q", data[end + 1:end + 9])
            fields[line.decode()] = data[end + 9:end + 9 + size].decode()
            assert data[end + 9 + size:end + 10 + size] == b"\n"
            i = end + 10 + size
    return fields


@pytest.fixture
def journal_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "journal.socket"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, path
    sock.close()


@pytest.fixture
def clean_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def test_encode_uses_the_binary_form_only_for_multiline_values() -> None:
    data = encode_entry({"MESSAGE": "line one\nline two", "PEER": "ab12"})
    assert data == (b"MESSAGE\n" + struct.pack("<Q", 17) + b"line one\nline two\n" + b"PEER=ab12\n")
    assert parse_entry(data) == {"MESSAGE": "line one\nline two", "PEER": "ab12"}


def test_priorities_follow_syslog() -> None:
    assert [syslog_priority(level) for level in (5, 10, 20, 25, 30, 40, 50)] == [7, 7, 6, 6, 4, 3, 2]


def test_structured_fields_reach_the_socket(journal_socket, clean_root_logger) -> None:
    sock, path = journal_socket
    fields = setup_logging("debug", env={"INVOCATION_ID": "0123"}, journal_socket=path)
    fields.node_id, fields.realm = "c0ffee", "street-7"
    logging.getLogger("macula.transport").warning("peer %s is slow", "ab12", extra={"peer": "ab12"})
    entry = parse_entry(sock.recv(65536))
    assert entry["MESSAGE"] == "peer ab12 is slow"
    assert entry["PRIORITY"] == "4"
    assert entry["SYSLOG_IDENTIFIER"] == "macula"
    assert entry["LOGGER"] == "macula.transport"
    assert (entry["NODE_ID"], entry["PEER"], entry["REALM"]) == ("c0ffee", "ab12", "street-7")
    assert entry["CODE_FILE"].endswith("test_service_journal.py")


def test_a_traceback_travels_in_message(journal_socket, clean_root_logger) -> None:
    sock, path = journal_socket
    setup_logging("info", env={"INVOCATION_ID": "0123"}, journal_socket=path)
    try:
        raise ValueError("bad frame")
    except ValueError:
        logging.getLogger("macula").exception("handler failed")
    entry = parse_entry(sock.recv(65536))
    assert entry["MESSAGE"].startswith("handler failed\nTraceback")
    assert "ValueError: bad frame" in entry["MESSAGE"]
    assert entry["PRIORITY"] == "3"
    assert "NODE_ID" not in entry          # unknown until the node sets it


def test_an_entry_larger_than_a_datagram_goes_through_a_sealed_memfd(journal_socket) -> None:
    sock, path = journal_socket
    sender = NativeJournal(path)
    big = "x" * (4 << 20)
    sender({"MESSAGE": big, "PRIORITY": "6"})
    data, ancdata, _, _ = sock.recvmsg(1024, socket.CMSG_SPACE(4))
    assert data == b""
    fds = array.array("i")
    fds.frombytes(ancdata[0][2][:4])
    with os.fdopen(fds[0], "rb") as fh:
        # journald refuses a memfd that is not sealed, then maps it from offset 0.
        seals = fcntl.fcntl(fh.fileno(), fcntl.F_GET_SEALS)
        wanted = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
        assert seals & wanted == wanted
        with mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as view:
            assert parse_entry(bytes(view)) == {"MESSAGE": big, "PRIORITY": "6"}
    sender.close()


def test_outside_systemd_lines_go_to_stderr_with_fields(journal_socket, clean_root_logger) -> None:
    _, path = journal_socket
    stream = io.StringIO()
    fields = setup_logging("info", env={}, stream=stream, journal_socket=path)
    fields.node_id = "c0ffee"
    logging.getLogger("macula.dht").info("stored %d values", 3, extra={"peer": "ab12"})
    logging.getLogger("macula.dht").debug("not shown at info")
    line = stream.getvalue().strip()
    assert line.endswith("INFO    macula.dht: stored 3 values [node_id=c0ffee peer=ab12]")
    assert "not shown" not in stream.getvalue()


def test_setup_logging_replaces_its_own_handler_only(journal_socket, clean_root_logger) -> None:
    _, path = journal_socket
    foreign = logging.NullHandler()
    logging.getLogger().addHandler(foreign)
    setup_logging("info", env={}, stream=io.StringIO(), journal_socket=path)
    setup_logging("info", env={"INVOCATION_ID": "1"}, journal_socket=path)
    root = logging.getLogger()
    assert foreign in root.handlers
    assert sum(isinstance(h, JournalHandler) for h in root.handlers) == 1
    assert not any(type(h) is logging.StreamHandler for h in root.handlers)
    root.removeHandler(foreign)


def test_missing_journal_socket_falls_back_to_stderr(tmp_path: Path, clean_root_logger) -> None:
    stream = io.StringIO()
    setup_logging("info", env={"INVOCATION_ID": "1"}, stream=stream,
                  journal_socket=tmp_path / "absent")
    logging.getLogger("macula").info("still logged")
    assert "still logged" in stream.getvalue()


def test_journal_stream_must_name_our_stderr(tmp_path: Path) -> None:
    with open(tmp_path / "err", "w") as err:
        st = os.fstat(err.fileno())
        assert under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, err)
        assert not under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, err)
        assert not under_journald({"JOURNAL_STREAM": "garbage"}, err)
        assert not under_journald({}, err)
        assert under_journald({"INVOCATION_ID": "abc"}, err)
