"""Child processes of bench_transport: one side of a one-way frame stream.

python -m transport_roles server IMPL PORTFILE COUNT CERT KEY
python -m transport_roles client IMPL PORT SIZE COUNT
IMPL: macula (our codec, session and pool), qh3 or aioquic (bare library, same frames).
The server prints {"port": p}, then {"msgs_s": r} once COUNT frames arrived.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time

BATCH = 64  # frames written per loop tick by every client


def say(**kw) -> None:
    print(json.dumps(kw), flush=True)


class Meter:
    def __init__(self, count: int) -> None:
        self.count = count
        self.seen = 0
        self.t0 = 0.0
        self.done = asyncio.Event()

    def add(self, n: int) -> None:
        if self.seen == 0:
            self.t0 = time.perf_counter()
        self.seen += n
        if self.seen >= self.count and not self.done.is_set():
            elapsed = time.perf_counter() - self.t0
            say(msgs_s=(self.seen - 1) / elapsed if elapsed > 0 else 0.0)
            self.done.set()


# ---- macula --------------------------------------------------------------------------
def _macula_cfg(name: str):
    from macula.identity import ephemeral_dev_material, ephemeral_identity
    from macula.transport import Endpoint, PeerPool, PoolSettings, SessionConfig

    ident = ephemeral_identity()
    tls = ephemeral_dev_material(ident.node_id)
    ep = Endpoint(tls)
    ep.bind("127.0.0.1", 0)
    cfg = SessionConfig(ident, tls, "bench", name, listen=ep.local_address,
                        send_buffer_bytes=1 << 20)
    return PeerPool(ep, cfg, PoolSettings(keepalive=30))


async def macula_server(count: int) -> None:
    from macula.wire.messages import Publish

    pool = _macula_cfg("server")
    meter = Meter(count)

    def on_message(session, msg) -> None:
        if type(msg) is Publish:
            meter.add(1)

    pool.on_message = on_message
    pool.start()
    say(port=pool.endpoint.local_address[1])
    await meter.done.wait()
    await pool.close()


async def macula_client(port: int, size: int, count: int) -> None:
    from macula.wire.messages import Publish

    pool = _macula_cfg("client")
    session = await pool.connect("127.0.0.1", port)
    payload = b"x" * size
    sent = 0
    while sent < count:
        for _ in range(min(BATCH, count - sent)):
            while not session.send(Publish("bench.topic", payload)):
                await session.drain()
            sent += 1
        await asyncio.sleep(0)
    await session.drain()
    say(sent=sent)
    await asyncio.sleep(3600)  # the orchestrator stops us once the server has counted


# ---- bare qh3 / aioquic ---------------------------------------------------------------
def _lib(impl: str):
    if impl == "qh3":
        from qh3.asyncio import QuicConnectionProtocol, connect, serve
        from qh3.quic.configuration import QuicConfiguration
        from qh3.quic.events import StreamDataReceived
    else:
        from aioquic.asyncio import QuicConnectionProtocol, connect, serve
        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.quic.events import StreamDataReceived
    return QuicConnectionProtocol, connect, serve, QuicConfiguration, StreamDataReceived


async def bare_server(impl: str, count: int, cert: str, key: str) -> None:
    import msgpack

    Protocol, _, serve, QuicConfiguration, StreamDataReceived = _lib(impl)
    meter = Meter(count)

    class Server(Protocol):
        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, **kw)
            self.buf = bytearray()

        def quic_event_received(self, event) -> None:
            if isinstance(event, StreamDataReceived):
                buf = self.buf
                buf += event.data
                pos, n, end = 0, 0, len(buf)
                while end - pos >= 8:  # same 8-byte header, same msgpack body
                    length = int.from_bytes(buf[pos + 4:pos + 8], "big")
                    if end - pos - 8 < length:
                        break
                    msgpack.unpackb(bytes(buf[pos + 8:pos + 8 + length]), use_list=False)
                    pos += 8 + length
                    n += 1
                del buf[:pos]
                if n:
                    meter.add(n)

    cfg = QuicConfiguration(is_client=False, alpn_protocols=["bench"], max_datagram_frame_size=65536)
    cfg.load_cert_chain(cert, key)
    server = await serve("127.0.0.1", 0, configuration=cfg, create_protocol=Server)
    say(port=server._transport.get_extra_info("sockname")[1])
    await meter.done.wait()
    server.close()


async def bare_client(impl: str, port: int, size: int, count: int) -> None:
    from macula.wire import encode
    from macula.wire.messages import Publish

    _, connect, _, QuicConfiguration, _ = _lib(impl)
    cfg = QuicConfiguration(is_client=True, alpn_protocols=["bench"], verify_mode=ssl.CERT_NONE,
                            max_datagram_frame_size=65536)
    frame = encode(Publish("bench.topic", b"x" * size))
    async with connect("127.0.0.1", port, configuration=cfg) as client:
        quic = client._quic
        sid = quic.get_next_available_stream_id()
        sent = 0
        while sent < count:
            n = min(BATCH, count - sent)
            quic.send_stream_data(sid, frame * n)
            client.transmit()
            sent += n
            await asyncio.sleep(0)
        say(sent=sent)
        await asyncio.sleep(3600)


def main(argv: list[str]) -> None:
    role, impl = argv[0], argv[1]
    if role == "server":
        count = int(argv[2])
        coro = macula_server(count) if impl == "macula" else bare_server(impl, count, argv[3], argv[4])
    else:
        port, size, count = int(argv[2]), int(argv[3]), int(argv[4])
        coro = (macula_client(port, size, count) if impl == "macula"
                else bare_client(impl, port, size, count))
    asyncio.run(coro)


if __name__ == "__main__":
    main(sys.argv[1:])
