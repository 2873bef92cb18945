"""A minimal HTTP/1.1 server for GET /metrics, on the node's event loop.

Not prometheus_client's start_http_server: that serves from its own thread, which would
read the node's tables while the event loop changes them. Here a scrape runs between
loop callbacks like everything else. One request per connection; connections, request
size and the time to send a request are bounded.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from macula.metrics.collector import NodeCollector

log = logging.getLogger("macula.metrics")

MAX_CONNECTIONS = 8
MAX_REQUEST = 8 << 10
REQUEST_TIMEOUT = 5.0
PATHS = ("/metrics", "/")


class MetricsServer:
    def __init__(self, collector: NodeCollector) -> None:
        self.collector = collector
        self._server: asyncio.base_events.Server | None = None
        self._active = 0
        self.address: tuple[str, int] | None = None
        self.scrapes = 0

    @property
    def url_host(self) -> str:
        assert self.address is not None
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._client, host, port, limit=MAX_REQUEST)
        self.address = self._server.sockets[0].getsockname()[:2]
        return self.address

    async def stop(self) -> None:
        self.collector.detach()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._active >= MAX_CONNECTIONS:
            writer.close()
            return
        self._active += 1
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            except asyncio.LimitOverrunError:
                await self._respond(writer, 431, b"request header too large\n")
                return
            except (asyncio.IncompleteReadError, asyncio.TimeoutError):
                return
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
                await self._respond(writer, 400, b"bad request\n")
            elif parts[0] not in (b"GET", b"HEAD"):
                await self._respond(writer, 405, b"only GET\n", extra=b"Allow: GET, HEAD\r\n")
            elif parts[1].split(b"?", 1)[0].decode("latin-1") not in PATHS:
                await self._respond(writer, 404, b"metrics are at /metrics\n")
            else:
                body = generate_latest(self.collector.registry)
                self.scrapes += 1
                await self._respond(writer, 200, body, CONTENT_TYPE_LATEST.encode(),
                                    head_only=parts[0] == b"HEAD")
        except (ConnectionError, asyncio.TimeoutError):
            pass
        except Exception:  # a scrape bug must not surface as an unhandled task error
            log.exception("metrics request failed")
        finally:
            self._active -= 1
            writer.close()

    async def _respond(self, writer: asyncio.StreamWriter, code: int, body: bytes,
                       content_type: bytes = b"text/plain; charset=utf-8", *,
                       extra: bytes = b"", head_only: bool = False) -> None:
        reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found",
                  405: b"Method Not Allowed", 431: b"Request Header Fields Too Large"}[code]
        writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n%s\r\n" % (code, reason, content_type, len(body), extra))
        if not head_only:
            writer.write(body)
        await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
