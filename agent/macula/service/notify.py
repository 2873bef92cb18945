"""sd_notify(3): readiness, status, watchdog pings and stopping, for Type=notify units.

systemd-python's `daemon.notify` is used when it is installed and the notifier reads the
process environment; otherwise one datagram per message goes to $NOTIFY_SOCKET directly
(a path, or an abstract name written with a leading '@'). Outside systemd every call is a
cheap no-op, so the node calls the same API when run by hand.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Callable, Mapping

log = logging.getLogger(__name__)

Sender = Callable[[str], bool]


def _socket_sender(address: str) -> Sender | None:
    if address.startswith("@"):
        target = "\0" + address[1:]      # Linux abstract namespace
    elif address.startswith("/"):
        target = address
    else:
        return None                      # e.g. vsock: (systemd >= 254 in VMs): not for us

    def send(message: str) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode(), target)
            return True
        except OSError as exc:
            log.debug("sd_notify to %s failed: %s", address, exc)
            return False
    return send


def _systemd_python_sender() -> Sender | None:
    try:
        from systemd import daemon  # type: ignore[import-not-found]
    except ImportError:
        return None
    return lambda message: bool(daemon.notify(message))


class Notifier:
    """Talks to the service manager named by $NOTIFY_SOCKET, if any.

    ``env`` defaults to the process environment; passing another mapping (tests, or a
    supervisor handing its own socket) always uses the built-in socket sender, because
    systemd-python only reads the process environment.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        own_environment = env is None
        env = os.environ if env is None else env
        self.address = env.get("NOTIFY_SOCKET", "")
        self._send: Sender | None = None
        if self.address:
            self._send = (_systemd_python_sender() if own_environment else None) \
                or _socket_sender(self.address)
            if self._send is None:
                log.warning("NOTIFY_SOCKET %r is not a Unix socket address; not notifying",
                            self.address)

    @property
    def enabled(self) -> bool:
        return self._send is not None

    def notify(self, *assignments: str) -> bool:
        """Send "KEY=value" assignments in one message; False when not sent."""
        if self._send is None or not assignments:
            return False
        return self._send("\n".join(assignments))

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([status_field(status)] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(status_field(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([status_field(status)] if status else []))


def status_field(text: str) -> str:
    # A newline would start a new assignment in the message.
    return "STATUS=" + " ".join(text.splitlines())
