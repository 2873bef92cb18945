"""The control socket: newline-delimited JSON requests and replies on a Unix socket.

``{"cmd": "status"}`` -> ``{"ok": true, "result": {...}}`` or
``{"ok": false, "error": "...", "code": 500}``. The socket is 0660 in the runtime
directory (0700 for a user run), so only the service user and its group (operators
added to it) may use it. Requests and connections are bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from macula.errors import ConfigError, ErrorCode, MaculaError
from macula.operations import Command

if TYPE_CHECKING:
    from macula.operations import Operations

log = logging.getLogger("macula.control")

SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 << 10
MAX_CONNECTIONS = 16
REQUEST_TIMEOUT = 30.0
# a connection may wait this long for its next request line (or for us to write a reply):
# idle clients must not hold the slots `macula status` needs
IDLE_TIMEOUT = 5.0
# connecting to a socket file tells a live node (accepts) from a crashed one's leftover
# (refused at once); a live node's backlog may hold a connect this long
PROBE_TIMEOUT = 2.0


class ControlServer:
    def __init__(self, ops: "Operations", runtime_dir: Path) -> None:
        self.ops = ops
        self.path = Path(runtime_dir) / SOCKET_NAME
        self._server: asyncio.base_events.Server | None = None
        self._owned: tuple[int, int, int] | None = None  # (dev, inode, ctime) of our socket
        self._conns: set[asyncio.StreamWriter] = set()
        self._idle: dict[asyncio.StreamWriter, None] = {}  # waiting for a request, oldest first
        self.commands: dict[str, Command] = {"status": self._status, **ops.commands}

    async def _status(self, _req: dict[str, Any]) -> Any:
        return self.ops.status()

    async def start(self) -> None:
        """Bind the socket. One that a live node answers on is refused (ConfigError naming
        ``node.runtime_dir``: each node on a host needs its own); one nobody answers on is
        left over from a crash and replaced."""
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        self._clear_stale()
        old_umask = os.umask(0o117)  # socket file created 0660
        try:
            # asyncio would unlink a socket file at the path itself: bind our own socket
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(str(self.path))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:  # another node bound it since the probe
                    raise self._taken() from None
                raise
        finally:
            os.umask(old_umask)
        self._owned = _identity(self.path)  # what stop() may remove: this file, no other
        self._server = await asyncio.start_unix_server(self._client, sock=sock,
                                                       limit=MAX_REQUEST)

    def _clear_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"node.runtime_dir = {str(self.path.parent)!r}: {self.path} "
                              "exists and is not a socket; remove it or pick another "
                              "runtime_dir")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(PROBE_TIMEOUT)
        try:
            probe.connect(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # nobody listens: a stale socket from a crash; bind would fail on it
        except OSError:
            # it exists but we cannot tell (permission, a node too busy to accept):
            # never take over a socket that may be live
            raise self._taken() from None
        else:
            raise self._taken()
        finally:
            probe.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _taken(self) -> ConfigError:
        return ConfigError(f"node.runtime_dir = {str(self.path.parent)!r}: another node is "
                           f"running with this control socket ({self.path}); give each node "
                           "on this host its own runtime_dir")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # remove the socket only if it is still the one we bound: after an operator or
        # another node replaced it, it is theirs
        if self._owned is not None and _identity(self.path) == self._owned:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._owned = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._conns) >= MAX_CONNECTIONS and not self._evict_idle():
            writer.close()  # every slot is running a command
            return
        self._conns.add(writer)
        try:
            while True:
                self._idle[writer] = None
                try:
                    line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
                except (ValueError, asyncio.LimitOverrunError):
                    await self._reply(writer, {"ok": False, "code": int(ErrorCode.BAD_FIELD),
                                               "error": f"request longer than {MAX_REQUEST} bytes"})
                    return
                finally:
                    self._idle.pop(writer, None)
                if not line:
                    return
                await self._reply(writer, await self._handle(line))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass
        finally:
            self._conns.discard(writer)
            self._idle.pop(writer, None)
            writer.close()

    def _evict_idle(self) -> bool:
        """At the cap, close the connection that has waited longest for a request, so a
        new one is served; False if none is idle."""
        if not self._idle:
            return False
        oldest = next(iter(self._idle))
        del self._idle[oldest]
        self._conns.discard(oldest)
        oldest.close()  # its readline sees EOF and the handler ends
        return True

    async def _handle(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                raise ValueError
        except RecursionError:  # json recurses per level; 32k brackets fit in MAX_REQUEST
            return {"ok": False, "code": int(ErrorCode.BAD_ENCODING),
                    "error": "request nested too deeply"}
        except ValueError:
            return {"ok": False, "code": int(ErrorCode.BAD_ENCODING),
                    "error": 'expected one JSON object per line: {"cmd": "...", ...}'}
        command = self.commands.get(req["cmd"])
        if command is None:
            return {"ok": False, "code": int(ErrorCode.UNKNOWN_TYPE),
                    "error": f"unknown command {req['cmd']!r}; known: {', '.join(sorted(self.commands))}"}
        try:
            result = await asyncio.wait_for(command(req), REQUEST_TIMEOUT)
            return {"ok": True, "result": result}
        except MaculaError as exc:
            return {"ok": False, "code": int(exc.code), "error": exc.message}
        except asyncio.TimeoutError:
            return {"ok": False, "code": int(ErrorCode.TIMEOUT), "error": "command timed out"}
        except Exception as exc:
            log.exception("control command %s failed", req["cmd"])
            return {"ok": False, "code": int(ErrorCode.INTERNAL), "error": str(exc)}

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        writer.write(json.dumps(body, separators=(",", ":")).encode() + b"\n")
        await asyncio.wait_for(writer.drain(), IDLE_TIMEOUT)  # a client that never reads


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)
