"""`macula pub | sub | call | serve-echo`: a light client attached to a node."""

from __future__ import annotations

import asyncio
import signal
import sys

from macula.client import CallError, connect


async def _client(args, *, watch: bool = False):
    """Attached to --node. Long-running commands (``watch``) say on stderr when the link
    to the node goes and comes back, instead of going silent."""
    if not watch:
        return await connect(args.node, realm=args.realm, name="cli", reconnect=False)
    return await connect(args.node, realm=args.realm, name="cli",
                         on_disconnect=lambda err: _say(f"disconnected: {err.message}"),
                         on_reconnect=lambda where: _say(f"reconnected to {where}"))


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def pub(args) -> int:
    async with await _client(args) as c:
        data = sys.stdin.buffer.read() if args.message == "-" else args.message.encode()
        for _ in range(args.count):
            await c.publish(args.topic, data)
        await c.flush()
    print(f"published {args.count} message(s) on {args.topic}", file=sys.stderr)
    return 0


async def sub(args) -> int:
    async with await _client(args, watch=True) as c:
        s = c.subscribe(args.pattern, group=args.group)
        await c.flush()
        print(f"subscribed to {args.pattern} on {c.node_name}; Ctrl-C to stop", file=sys.stderr)
        got = 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)

        async def consume() -> None:
            nonlocal got
            async for msg in s:
                got += 1
                print(f"{msg.topic} {msg.payload.decode(errors='replace')}", flush=True)
                if args.count and got >= args.count:
                    break
            stop.set()  # the count reached, or the client gave up on its node

        task = asyncio.ensure_future(consume())
        try:
            await asyncio.wait_for(stop.wait(), args.timeout)  # None: until Ctrl-C
        except asyncio.TimeoutError:
            pass
        task.cancel()
        if s.dropped:
            print(f"{s.dropped} message(s) dropped (slow consumer)", file=sys.stderr)
    return 0 if not args.count or got >= args.count else 1


async def call(args) -> int:
    async with await _client(args) as c:
        try:
            result = await c.call(args.procedure, args.args.encode(), timeout=args.timeout)
        except CallError as exc:
            print(f"macula: call failed: {exc.code.name} ({int(exc.code)}): {exc.message}",
                  file=sys.stderr)
            return 1
    sys.stdout.write(result.decode(errors="replace") + "\n")
    return 0


async def serve_echo(args) -> int:
    async with await _client(args, watch=True) as c:
        c.register(args.procedure, lambda data: data)
        await c.flush()
        print(f"serving {args.procedure!r} on {c.node_name}; Ctrl-C to stop", file=sys.stderr)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await asyncio.wait({asyncio.ensure_future(stop.wait()),
                            asyncio.ensure_future(c.closed.wait())},
                           return_when=asyncio.FIRST_COMPLETED)
    return 0
