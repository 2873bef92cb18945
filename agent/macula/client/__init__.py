"""Client SDK: an asyncio API for apps and scripts that attach to one node.

    async with connect("127.0.0.1:9443", realm="home") as c:
        await c.publish("sensors.kitchen.temp", b"21.5")
        async for msg in c.subscribe("sensors.>"):
            ...
        reply = await c.call("echo", b"hi")
        c.register("echo", lambda args: args)

The client speaks the same protocol as nodes, with role "client" in CONNECT: the node
routes on its behalf and drops everything the client held when it leaves.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections import deque
from typing import Any, AsyncIterator, Awaitable, Callable

from macula.config import parse_address
from macula.errors import ErrorCode, MaculaError
from macula.identity import (
    TlsMaterial, TofuStore, ephemeral_dev_material, ephemeral_identity,
    load_or_create_dev_material, load_or_create_identity, load_production_material,
)
from macula.pubsub.topics import validate_pattern, validate_topic
from macula.rpc.names import check_procedure, procedure_error
from macula.transport import (
    CaTrust, Endpoint, PeerPool, PoolSettings, Session, SessionConfig, State, TofuTrust,
    TrustPolicy,
)
from macula.wire.fields import FieldError
from macula.wire.messages import (
    REGISTRY, Call, Deliver, Error, MsgType, Ping, Publish, PubsubFlow, Register, Reply,
    Subscribe, Unregister, Unsubscribe,
)

log = logging.getLogger("macula.client")
# what the caller chooses (args may be any bytes-like object msgpack packs as bin)
_CALL_CHECKS = [(n, v) for n, v in REGISTRY[MsgType.CALL].validators
                if n in ("procedure", "timeout_ms")]

Handler = Callable[[bytes], "bytes | Awaitable[bytes]"]


class CallError(MaculaError):
    """An RPC failed: ``code`` says how (NO_RESPONDERS, CALL_TIMEOUT, HANDLER_ERROR, ...)."""


# A received message is the DELIVER frame itself (topic, payload, reply_to, headers and
# the sub_id it matched): no second object per message on the receive path.
Message = Deliver


class Subscription:
    """An async iterator of Messages with a bounded queue (drop oldest, counted)."""

    def __init__(self, client: "Client", sub_id: int, pattern: str, group: str | None,
                 queue: int) -> None:
        self.client = client
        self.sub_id = sub_id
        self.pattern = pattern
        self.group = group
        self._queue: deque[Message] = deque(maxlen=queue)
        self._wakeup = asyncio.Event()
        self.dropped = 0
        self.closed = False

    def _push(self, msg: Message) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # the deque drops the oldest on append
        self._queue.append(msg)
        self._wakeup.set()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        while not self._queue:
            if self.closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._queue.popleft()

    async def next(self, timeout: float | None = None) -> Message:
        return await asyncio.wait_for(self.__anext__(), timeout)

    def pending(self) -> int:
        return len(self._queue)

    def drain(self) -> list[Message]:
        """Everything queued now, without waiting."""
        out = list(self._queue)
        self._queue.clear()
        return out

    async def unsubscribe(self) -> None:
        await self.client._unsubscribe(self)

    def _close(self) -> None:
        self.closed = True
        self._wakeup.set()


GUARD_SWEEP = 0.5  # seconds between checks of calls the node never answered


class Client:
    def __init__(self, pool: PeerPool, session: Session) -> None:
        self._pool = pool
        self.session = session
        self._subs: dict[int, Subscription] = {}
        self._calls: dict[int, asyncio.Future] = {}
        # call id -> (deadline, procedure, timeout): one sweep every GUARD_SWEEP seconds
        # instead of a timer per call
        self._guards: dict[int, tuple[float, str, float]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._handlers: dict[str, Handler] = {}
        self._ids = itertools.count(1)
        self._flushes: deque[asyncio.Future] = deque()
        self._valid_topics: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        # back-pressure from the node (PUBSUB_FLOW): set while publishing may go on
        self._may_publish = asyncio.Event()
        self._may_publish.set()
        self._hold_timer: asyncio.TimerHandle | None = None
        self.held = 0  # times the node asked this client to hold back its publishes
        self.closed = asyncio.Event()
        pool.on_message = self._on_message
        pool.on_peer_down = self._on_down

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    @property
    def node_name(self) -> str:
        return self.session.peer.name if self.session.peer else "?"

    # -- pub/sub ------------------------------------------------------------------------
    async def publish(self, topic: str, payload: bytes | str, *, reply_to: str | None = None,
                      headers: dict[str, str] | None = None) -> None:
        """Publish; waits while the node holds publishes back (a congested subscriber,
        PUBSUB_FLOW, at most the hold it names) or the connection's send buffer is full."""
        if not self._may_publish.is_set():
            await self._may_publish.wait()
        if topic not in self._valid_topics:  # publishers reuse few topics: check each once
            validate_topic(topic)
            if len(self._valid_topics) >= 1024:
                self._valid_topics.clear()
            self._valid_topics.add(topic)
        data = payload.encode() if isinstance(payload, str) else payload
        msg = Publish(topic, data, reply_to, headers)
        if not self.session.send(msg):
            await self.session.send_wait(msg)

    def subscribe(self, pattern: str, *, group: str | None = None, queue: int = 1024) -> Subscription:
        """Subscribe now; ``await client.flush()`` to know the node has it."""
        validate_pattern(pattern)
        sub = Subscription(self, next(self._ids) & 0xFFFF_FFFF, pattern, group, queue)
        self._subs[sub.sub_id] = sub
        self._send(Subscribe(sub.sub_id, pattern, group))
        return sub

    async def _unsubscribe(self, sub: Subscription) -> None:
        if self._subs.pop(sub.sub_id, None) is not None:
            self._send(Unsubscribe(sub.sub_id))
            sub._close()

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until the node has processed everything sent so far (one round trip)."""
        fut = asyncio.get_running_loop().create_future()
        self._flushes.append(fut)
        self._send(Ping(0))
        await asyncio.wait_for(fut, timeout)

    # -- RPC ------------------------------------------------------------------------------
    async def call(self, procedure: str, args: bytes | str = b"", *, timeout: float = 5.0,
                   idempotent: bool = False) -> bytes:
        """Call ``procedure``; raises CallError (NO_RESPONDERS at once when nobody serves
        it, CALL_TIMEOUT, HANDLER_ERROR, CALL_OVERLOADED). Cancelling the caller's task
        abandons the call; a late reply is dropped."""
        data = args.encode() if isinstance(args, str) else args
        msg = Call(next(self._ids), procedure, data, int(timeout * 1000), idempotent)
        # the node refuses a CALL that breaks the schema with an ERROR it cannot tie to a
        # call id (the id is in the frame it failed to decode): the caller would wait out
        # the timeout. The node's own validators, here, answer BAD_FIELD at once.
        for name, check in _CALL_CHECKS:
            try:
                check(getattr(msg, name))
            except FieldError as exc:
                raise CallError(f"CALL.{name}{exc.path}: {exc.reason}",
                                code=ErrorCode.BAD_FIELD) from None
        why = procedure_error(procedure)
        if why is not None:
            raise CallError(why, code=ErrorCode.BAD_FIELD)
        call_id = msg.call_id
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._calls[call_id] = fut
        # the node answers CALL_TIMEOUT itself; this deadline only covers a lost node
        self._guards[call_id] = (loop.time() + timeout + 1.0, procedure, timeout)
        if self._sweeper is None:
            self._sweeper = loop.call_later(GUARD_SWEEP, self._sweep)
        try:
            if not self.session.send(msg):
                await self.session.send_wait(msg)
            return await fut
        finally:
            del self._calls[call_id]
            del self._guards[call_id]

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for call_id, (deadline, procedure, timeout) in list(self._guards.items()):
            if deadline <= now:
                _expire(self._calls[call_id], procedure, timeout)
        self._sweeper = loop.call_later(GUARD_SWEEP, self._sweep) if self._guards else None

    def register(self, procedure: str, handler: Handler) -> None:
        """Serve ``procedure``: ``handler(args) -> result`` (plain or async). A name that
        is not a procedure name raises MaculaError (BAD_FIELD)."""
        check_procedure(procedure)
        if procedure in self._handlers:
            raise ValueError(f"{procedure!r} is already registered")
        self._handlers[procedure] = handler
        self._send(Register(procedure))

    def unregister(self, procedure: str) -> None:
        if self._handlers.pop(procedure, None) is not None:
            self._send(Unregister(procedure))

    # -- plumbing -------------------------------------------------------------------------
    def _send(self, msg: Any) -> None:
        """Control messages and replies go in order through the session's bounded
        backlog (one drainer, no task per message). A reply larger than the node
        accepts becomes an error reply, so the caller hears at once."""
        session = self.session
        if not session.send_reliable(msg) and type(msg) is Reply \
                and session.state is State.ESTABLISHED:
            session.send_reliable(Reply(msg.call_id, False, b"", int(ErrorCode.FRAME_TOO_LARGE),
                                        f"the result exceeds the node's {session.send_limit} "
                                        "byte frame limit"))

    def _on_message(self, session: Session, msg: Any) -> None:
        t = type(msg)
        if t is Deliver:
            sub = self._subs.get(msg.sub_id)
            if sub is not None:
                sub._push(msg)
        elif t is Reply:
            fut = self._calls.get(msg.call_id)
            if fut is not None and not fut.done():
                if msg.ok:
                    fut.set_result(msg.result)
                else:
                    fut.set_exception(CallError(msg.error or "call failed",
                                                code=_code(msg.error_code)))
        elif t is Call:
            self._serve(msg)
        elif t is PubsubFlow:
            self._flow(msg)
        elif t is Error:
            self._on_error(msg)

    def _flow(self, msg: PubsubFlow) -> None:
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        if msg.paused and msg.hold_ms > 0:
            self.held += 1
            self._may_publish.clear()
            # the node names the longest hold: never wait past it, even if the resume is lost
            self._hold_timer = asyncio.get_running_loop().call_later(
                min(msg.hold_ms, 60_000) / 1000.0, self._may_publish.set)
        else:
            self._may_publish.set()

    def _on_error(self, msg: Error) -> None:
        fut = self._calls.get(msg.ref_id) if msg.ref_id is not None else None
        if fut is not None and not fut.done():
            fut.set_exception(CallError(msg.message, code=_code(msg.code)))
            return
        sub = self._subs.pop(msg.ref_id, None) if msg.ref_id is not None else None
        if sub is not None:
            log.warning("subscription %r refused: %s", sub.pattern, msg.message)
            sub._close()
            return
        log.warning("node reported error %d: %s", msg.code, msg.message)

    def _serve(self, call: Call) -> None:
        """Run the handler: a plain function inline (no task per call), a coroutine as a task."""
        handler = self._handlers.get(call.procedure)
        if handler is None:
            self._send(Reply(call.call_id, False, b"", int(ErrorCode.NO_RESPONDERS),
                             f"{call.procedure} is not registered here"))
            return
        try:
            result = handler(call.args)
        except Exception as exc:
            self._send(_handler_error(call, exc))
            return
        if inspect.isawaitable(result):
            task = asyncio.get_running_loop().create_task(self._finish(call, result))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._send(_reply(call, result))

    async def _finish(self, call: Call, pending: Awaitable) -> None:
        try:
            result = await pending
        except Exception as exc:
            self._send(_handler_error(call, exc))
            return
        self._send(_reply(call, result))

    def _pong(self) -> None:
        while self._flushes:
            fut = self._flushes.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _on_down(self, session: Session) -> None:
        err = session.error or MaculaError("connection closed", code=ErrorCode.GOING_AWAY)
        for fut in list(self._calls.values()) + list(self._flushes):
            if not fut.done():
                fut.set_exception(CallError(f"connection to node lost: {err.message}",
                                            code=ErrorCode.GOING_AWAY))
        for sub in self._subs.values():
            sub._close()
        self._may_publish.set()  # publishers wake and fail on the closed session
        self.closed.set()

    async def close(self) -> None:
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._may_publish.set()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for task in list(self._tasks):
            task.cancel()
        await self._pool.close()
        self.closed.set()


def _reply(call: Call, result: Any) -> Reply:
    if isinstance(result, str):
        result = result.encode()
    return Reply(call.call_id, True, bytes(result or b""))


def _handler_error(call: Call, exc: Exception) -> Reply:
    return Reply(call.call_id, False, b"", int(ErrorCode.HANDLER_ERROR),
                 f"{type(exc).__name__}: {exc}"[:1024])


def _expire(fut: asyncio.Future, procedure: str, timeout: float) -> None:
    if not fut.done():
        fut.set_exception(CallError(f"{procedure}: no reply within {timeout:g} s",
                                    code=ErrorCode.CALL_TIMEOUT))


def _code(value: int | None) -> ErrorCode:
    try:
        return ErrorCode(value) if value is not None else ErrorCode.INTERNAL
    except ValueError:
        return ErrorCode.INTERNAL


async def connect(address: str, *, realm: str = "default", name: str = "client",
                  tls: TlsMaterial | None = None, ca_file: str | None = None,
                  cert_file: str | None = None, key_file: str | None = None,
                  state_dir: str | None = None, timeout: float = 10.0,
                  send_buffer_bytes: int = 256 << 10) -> Client:
    """Attach to the node at ``address`` ('host:port').

    Development mode (default): an identity and certificate made for this process (or
    kept in ``state_dir``), the node pinned on first use when ``state_dir`` is given.
    Production: pass cert_file, key_file and ca_file.
    """
    host, port = parse_address(address, 9443)
    trust: TrustPolicy | None = None  # None: what the TLS material implies
    if cert_file and key_file and ca_file:
        identity = load_or_create_identity(state_dir) if state_dir else ephemeral_identity()
        tls = load_production_material(cert_file, key_file, ca_file)
        trust = CaTrust(ca_file)
    elif state_dir:
        identity = load_or_create_identity(state_dir)
        tls = tls or load_or_create_dev_material(state_dir, identity.node_id)
        if tls.mode != "production":  # production material is checked by its CA, not pinned
            from pathlib import Path

            trust = TofuTrust(TofuStore(Path(state_dir) / "known_nodes.json", 256))
    else:
        identity = ephemeral_identity()
        tls = tls or ephemeral_dev_material(identity.node_id)
    endpoint = Endpoint(tls)
    endpoint.bind("::" if ":" in host else "0.0.0.0", 0)
    cfg = SessionConfig(identity, tls, realm, name, role="client", caps=("client",), trust=trust,
                        send_buffer_bytes=send_buffer_bytes, handshake_timeout=timeout)
    pool = PeerPool(endpoint, cfg, PoolSettings(max_peers=1, max_clients=0, keepalive=15.0,
                                                connect_timeout=timeout))
    try:
        session = await pool.connect(host, port)
    except BaseException:
        await pool.close()
        raise
    client = Client(pool, session)
    session.on_pong = lambda seq: client._pong() if seq == 0 else None
    pool.start()
    return client
