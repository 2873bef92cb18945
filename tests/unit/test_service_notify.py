"""sd_notify against real AF_UNIX datagram sockets bound by the test, and watchdog timing."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from macula.service import Notifier, run_watchdog, start_watchdog, watchdog_interval

AGENT = Path(__file__).resolve().parents[2] / "agent"


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = str(tmp_path / "notify")
    sock.bind(address)
    sock.settimeout(5)
    yield sock, address
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, str]]:
    name = f"macula-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    yield sock, "@" + name
    sock.close()


def test_fallback_sends_each_message_to_a_path_socket(path_socket) -> None:
    sock, address = path_socket
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    assert notifier.ready("listening on 0.0.0.0:9443, 2 of 3 seeds reached")
    assert notifier.status("5 peers\n2 clients")
    assert notifier.watchdog()
    assert notifier.stopping()
    received = [sock.recv(4096).decode() for _ in range(4)]
    assert received == ["READY=1\nSTATUS=listening on 0.0.0.0:9443, 2 of 3 seeds reached",
                        "STATUS=5 peers 2 clients",      # a newline would be a new assignment
                        "WATCHDOG=1",
                        "STOPPING=1"]


def test_fallback_reaches_an_abstract_socket(abstract_socket) -> None:
    sock, address = abstract_socket
    assert Notifier({"NOTIFY_SOCKET": address}).notify("READY=1", "STATUS=up")
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready() and not notifier.watchdog() and not notifier.stopping()


def test_unsupported_address_disables_notification() -> None:
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_send_to_a_vanished_socket_returns_false(tmp_path: Path) -> None:
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).watchdog()


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no Debian python3")
def test_systemd_python_is_used_when_installed(path_socket) -> None:
    check = subprocess.run(["/usr/bin/python3", "-c", "import systemd.daemon"], capture_output=True)
    if check.returncode:
        pytest.skip("python3-systemd is not installed")
    sock, address = path_socket
    code = ("from macula.service import Notifier\n"
            "n = Notifier()\n"
            "print(n._send.__qualname__)\n"
            "assert n.ready('via libsystemd')\n")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(AGENT), "NOTIFY_SOCKET": address}
    out = subprocess.run(["/usr/bin/python3", "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "_systemd_python_sender.<locals>.<lambda>"
    assert sock.recv(4096) == b"READY=1\nSTATUS=via libsystemd"


@pytest.mark.parametrize("env, pid, expected", [
    ({"WATCHDOG_USEC": "30000000"}, 1, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 42, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 43, None),   # meant for another process
    ({"WATCHDOG_USEC": "0"}, 1, None),
    ({"WATCHDOG_USEC": "-5"}, 1, None),
    ({"WATCHDOG_USEC": "soon"}, 1, None),
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "x"}, 1, None),
    ({}, 1, None),
    ({"WATCHDOG_USEC": "500"}, 1, 0.00025),
])
def test_watchdog_interval(env: dict, pid: int, expected: float | None) -> None:
    assert watchdog_interval(env, pid=pid) == expected


def test_watchdog_interval_defaults_to_this_process() -> None:
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(env) == 1.0


async def test_watchdog_pings_from_the_loop_and_sends_status_on_change(path_socket) -> None:
    sock, address = path_socket
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    status = ["3 peers"]
    task = loop.create_task(run_watchdog(Notifier({"NOTIFY_SOCKET": address}), 0.001,
                                         lambda: status[0]))

    async def recv() -> bytes:
        return await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)

    try:
        assert await recv() == b"WATCHDOG=1\nSTATUS=3 peers"
        assert await recv() == b"WATCHDOG=1"          # unchanged status is not repeated
        status[0] = "4 peers"
        while (message := await recv()) == b"WATCHDOG=1":
            pass
        assert message == b"WATCHDOG=1\nSTATUS=4 peers"
    finally:
        task.cancel()


async def test_watchdog_task_starts_only_when_systemd_asks(path_socket) -> None:
    _, address = path_socket
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert start_watchdog(notifier, env={}) is None
    assert start_watchdog(Notifier({}), env={"WATCHDOG_USEC": "1000000"}) is None
    task = start_watchdog(notifier, env={"WATCHDOG_USEC": "1000000"})
    assert task is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
