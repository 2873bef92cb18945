"""Talk to a running node's control socket (used by the CLI)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from macula.control.server import SOCKET_NAME
from macula.errors import ErrorCode, MaculaError


class ControlError(MaculaError):
    pass


def request(runtime_dir: Path, cmd: str, timeout: float = 35.0, **args: Any) -> Any:
    path = Path(runtime_dir) / SOCKET_NAME
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"no node is running here (no control socket at {path}); "
                               f"start one with 'macula run' or 'systemctl start macula-agent'",
                               code=ErrorCode.NOT_CONNECTED) from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: run as the service user or a "
                               f"member of its group", code=ErrorCode.NOT_CONNECTED) from None
        sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ControlError("the node closed the control connection", code=ErrorCode.GOING_AWAY)
            buf += chunk
    finally:
        sock.close()
    reply = json.loads(buf)
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "failed"), code=ErrorCode(reply.get("code", 900)))
    return reply["result"]
