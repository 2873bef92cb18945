"""Client SDK: an asyncio API for apps and scripts that attach to one node.

    async with connect("127.0.0.1:9443", realm="home") as c:
        await c.publish("sensors.kitchen.temp", b"21.5")
        async for msg in c.subscribe("sensors.>"):
            ...
        reply = await c.call("echo", b"hi")
        c.register("echo", lambda args: args)

The client speaks the same protocol as nodes, with role "client" in CONNECT: the node
routes on its behalf and drops everything the client held when it leaves.

When the link to its node is lost (the node stopped, crashed or stopped answering PINGs,
within ``ping_timeout`` seconds even when idle), the client reconnects by itself, with
backoff, to the addresses it was given in turn; it subscribes and registers again,
sends the publishes it buffered meanwhile (up to ``publish_buffer_bytes``; past that
publish raises ConnectionLost), and tells the application through ``on_disconnect`` and
``on_reconnect``. Calls in flight when the link went are failed (CallLost): the client
cannot know whether they ran. docs/SDK.md has the whole story.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
from collections import deque
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

from macula.config import parse_address
from macula.errors import ErrorCode, MaculaError, ProtocolError, SessionRefused
from macula.identity import (
    TlsMaterial, TofuStore, ephemeral_dev_material, ephemeral_identity,
    load_or_create_dev_material, load_or_create_identity, load_production_material,
)
from macula.pubsub.topics import validate_pattern, validate_topic
from macula.rpc.names import check_procedure, procedure_error
from macula.runtime.backoff import Backoff
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


class ConnectionLost(MaculaError):
    """The link to the node is gone and not (yet) back: raised by what cannot wait for the
    reconnection (a publish with the buffer full, a flush or call that timed out waiting,
    anything after the client gave up or was closed). ``code`` is why the link went
    (PEER_UNREACHABLE, TIMEOUT, GOING_AWAY, ...)."""

    code = ErrorCode.GOING_AWAY


class CallLost(CallError, ConnectionLost):
    """A call whose link to the node was lost before its reply came: it may or may not
    have run. Both a CallError and a ConnectionLost."""

    code = ErrorCode.GOING_AWAY


# on_disconnect(error) / on_reconnect(address): plain functions or coroutine functions
Callback = Callable[..., "Any | Awaitable[Any]"]


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
BUFFER_OVERHEAD = 64  # bytes a buffered publish counts beyond its topic and payload


class Client:
    def __init__(self, pool: PeerPool, session: Session, addresses: list[tuple[str, int]], *,
                 reconnect: bool = True, reconnect_base: float = 0.1, reconnect_cap: float = 5.0,
                 max_reconnect_attempts: int | None = None,
                 publish_buffer_bytes: int = 1 << 20, connect_timeout: float = 10.0,
                 on_disconnect: Callback | None = None,
                 on_reconnect: Callback | None = None) -> None:
        self._pool = pool
        self.session = session
        self.addresses = addresses
        self.address = _show(session.dial_address or addresses[0])  # the node attached to
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
        # -- reconnection
        self.reconnect = reconnect
        self._backoff = Backoff(reconnect_base, reconnect_cap)
        self.max_reconnect_attempts = max_reconnect_attempts
        self.connect_timeout = connect_timeout
        self.publish_buffer_bytes = publish_buffer_bytes
        self._buffer: deque[Publish] = deque()  # publishes made while disconnected
        self._buffered_bytes = 0
        self.on_disconnect = on_disconnect
        self.on_reconnect = on_reconnect
        self.disconnects = 0
        self.reconnects = 0
        self.last_error: MaculaError | None = None  # why the link last went
        self._lost_at: float | None = None
        self._up = asyncio.Event()  # set while a session to the node is established
        self._up.set()
        self._reconnector: asyncio.Task | None = None
        self._closing = False
        self.closed = asyncio.Event()  # set once the client is closed or gave up
        self._attach(session)
        pool.on_message = self._on_message
        pool.on_peer_down = self._on_down

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    @property
    def node_name(self) -> str:
        return self.session.peer.name if self.session.peer else "?"

    @property
    def connected(self) -> bool:
        return self._up.is_set() and not self.closed.is_set()

    def _attach(self, session: Session) -> None:
        self.session = session
        session.on_pong = lambda seq: self._pong() if seq == 0 else None

    # -- pub/sub ------------------------------------------------------------------------
    async def publish(self, topic: str, payload: bytes | str, *, reply_to: str | None = None,
                      headers: dict[str, str] | None = None) -> None:
        """Publish; waits while the node holds publishes back (a congested subscriber,
        PUBSUB_FLOW, at most the hold it names) or the connection's send buffer is full.
        While the link is down the message is buffered (sent in order once reconnected);
        with ``publish_buffer_bytes`` used up, raises ConnectionLost."""
        if not self._may_publish.is_set():
            await self._may_publish.wait()
        if topic not in self._valid_topics:  # publishers reuse few topics: check each once
            validate_topic(topic)
            if len(self._valid_topics) >= 1024:
                self._valid_topics.clear()
            self._valid_topics.add(topic)
        data = payload.encode() if isinstance(payload, str) else payload
        msg = Publish(topic, data, reply_to, headers)
        if self.closed.is_set():
            raise self._lost()
        if self._up.is_set() and not self._buffer:  # (a buffer still draining goes first)
            if self.session.send(msg):
                return
            try:
                await self.session.send_wait(msg)
                return
            except SessionRefused:
                if self.closed.is_set() or self._up.is_set():
                    raise self._lost() from None
                # the link went while we waited for room: the message was not sent
        self._hold(msg)

    def _hold(self, msg: Publish) -> None:
        if self.closed.is_set():
            raise self._lost()
        size = len(msg.topic) + len(msg.payload) + BUFFER_OVERHEAD
        if self._buffered_bytes + size > self.publish_buffer_bytes:
            raise self._lost(f"; the publish buffer of {self.publish_buffer_bytes} bytes "
                             f"is full ({len(self._buffer)} message(s) waiting)")
        self._buffer.append(msg)
        self._buffered_bytes += size

    def subscribe(self, pattern: str, *, group: str | None = None, queue: int = 1024) -> Subscription:
        """Subscribe now; ``await client.flush()`` to know the node has it. A subscription
        lives until unsubscribed or the client is closed: it is made again on every
        reconnection."""
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
        """Wait until the node has processed everything sent so far (one round trip).
        While reconnecting, waits for the link first (within ``timeout``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self._wait_up(timeout)
        fut = loop.create_future()
        self._flushes.append(fut)
        self._send(Ping(0))
        await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))

    async def _wait_up(self, timeout: float) -> None:
        """Return once the link is up; ConnectionLost if it is not within ``timeout`` or
        the client is closed (or gave up) meanwhile."""
        if not self._up.is_set():
            try:
                await asyncio.wait_for(self._up.wait(), timeout)
            except asyncio.TimeoutError:
                raise self._lost(f"; not back within {timeout:g} s") from None
        if self.closed.is_set():
            raise self._lost()

    # -- RPC ------------------------------------------------------------------------------
    async def call(self, procedure: str, args: bytes | str = b"", *, timeout: float = 5.0,
                   idempotent: bool = False) -> bytes:
        """Call ``procedure``; raises CallError (NO_RESPONDERS at once when nobody serves
        it, CALL_TIMEOUT, HANDLER_ERROR, CALL_OVERLOADED), CallLost when the link to the
        node goes before the reply (or is not back within ``timeout``). Cancelling the
        caller's task abandons the call; a late reply is dropped."""
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
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            await self._wait_up(timeout)
        except ConnectionLost as exc:
            raise CallLost(f"{procedure}: {exc.message}", code=exc.code) from None
        left = max(0.001, timeout - (loop.time() - start))
        if left < timeout:  # the time spent waiting for the link counts against the call
            msg = Call(msg.call_id, procedure, data, max(1, int(left * 1000)), idempotent)
        call_id = msg.call_id
        fut = loop.create_future()
        self._calls[call_id] = fut
        # the node answers CALL_TIMEOUT itself; this deadline only covers a lost node
        self._guards[call_id] = (loop.time() + left + 1.0, procedure, timeout)
        if self._sweeper is None:
            self._sweeper = loop.call_later(GUARD_SWEEP, self._sweep)
        try:
            if not self.session.send(msg):
                try:
                    await self.session.send_wait(msg)
                except SessionRefused:
                    if not fut.done():  # the link went before the call left
                        fut.set_exception(self._lost_call())
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
        is not a procedure name raises MaculaError (BAD_FIELD). Registered again on every
        reconnection, until unregistered."""
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
        accepts becomes an error reply, so the caller hears at once. While the link is
        down, nothing is sent: subscriptions and procedures are sent on reconnection."""
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
            self._spawn(self._finish(call, result))
        else:
            self._send(_reply(call, result))

    async def _finish(self, call: Call, pending: Awaitable) -> None:
        try:
            result = await pending
        except Exception as exc:
            self._send(_handler_error(call, exc))
            return
        self._send(_reply(call, result))

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _pong(self) -> None:
        while self._flushes:
            fut = self._flushes.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    # -- losing and regaining the link ----------------------------------------------------
    def _lost(self, more: str = "") -> ConnectionLost:
        err = self.last_error
        if self._closing:
            return ConnectionLost("the client is closed", code=ErrorCode.GOING_AWAY)
        why = f": {err.message}" if err is not None else ""
        since = (f" {time.monotonic() - self._lost_at:.1f} s ago" if self._lost_at is not None
                 else "")
        state = ("not reconnecting" if not self.reconnect else
                 "gave up reconnecting" if self.closed.is_set() else "reconnecting")
        return ConnectionLost(f"connection to node {self.address} lost{since}{why} "
                              f"({state}){more}",
                              code=err.code if err is not None else ErrorCode.GOING_AWAY)

    def _lost_call(self) -> CallLost:
        lost = self._lost()
        return CallLost(f"{lost.message}; the call may or may not have run", code=lost.code)

    def _on_down(self, session: Session) -> None:
        if session is not self.session:
            return  # an old session, replaced already
        err = session.error or MaculaError("connection closed", code=ErrorCode.GOING_AWAY)
        self._up.clear()
        for fut in list(self._calls.values()) + list(self._flushes):
            if not fut.done():
                fut.set_exception(self._lost_call() if fut in self._calls.values()
                                  else self._lost())
        self._flushes.clear()
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        self._may_publish.set()  # publishers wake and buffer
        if self._closing:
            self._shut()
            return
        self.last_error = MaculaError(err.message, code=err.code)
        self._lost_at = time.monotonic()
        self.disconnects += 1
        log.info("connection to node %s lost: %s", self.address, err.message)
        if not self.reconnect:
            self._shut()
        told = ConnectionLost(f"connection to node {self.address} lost: {err.message}; "
                              f"{'reconnecting' if self.reconnect else 'not reconnecting'}",
                              code=err.code)
        self._notify(self.on_disconnect, told)
        if self.reconnect:
            self._reconnector = self._spawn(self._reconnect())

    async def _reconnect(self) -> None:
        """Dial the addresses in turn with backoff until one answers (or the attempts
        allowed are spent), then restore what the node lost: subscriptions, procedures,
        and the publishes buffered meanwhile, in that order."""
        attempts = 0
        lost = parse_address(self.address, 9443)
        i = self.addresses.index(lost) if lost in self.addresses else 0  # that one first
        while not self._closing:
            if self.max_reconnect_attempts is not None and attempts >= self.max_reconnect_attempts:
                log.warning("giving up on node %s after %d attempt(s)", self.address, attempts)
                self._shut()
                return
            await asyncio.sleep(self._backoff.next_delay())  # the backoff itself
            host, port = self.addresses[i % len(self.addresses)]
            i += 1
            attempts += 1
            try:
                session = await self._pool.connect(host, port, self.connect_timeout)
            except (SessionRefused, OSError) as exc:
                message = getattr(exc, "message", None) or str(exc)
                log.info("reconnect to %s:%d failed: %s", host, port, message)
                continue
            if self._closing:
                return
            if session.state is not State.ESTABLISHED:  # lost again before we resumed
                continue
            self._restore(session, (host, port))
            return

    def _restore(self, session: Session, address: tuple[str, int]) -> None:
        self._attach(session)
        self.address = _show(address)
        self._backoff.reset()
        self.reconnects += 1
        for sub in self._subs.values():
            session.send_reliable(Subscribe(sub.sub_id, sub.pattern, sub.group))
        for procedure in self._handlers:
            session.send_reliable(Register(procedure))
        self._up.set()
        log.info("reconnected to node %s (%s)", self.address, self.node_name)
        if self._buffer:
            self._spawn(self._resend(session))
        self._spawn(self._reconnected(self.address))

    async def _reconnected(self, address: str) -> None:
        """Tell ``on_reconnect`` once the node has processed the restored subscriptions
        and procedures (one round trip), so a publish made on hearing it is delivered."""
        try:
            await self.flush(self.connect_timeout)
        except (ConnectionLost, asyncio.TimeoutError):
            return  # lost again before that: on_disconnect says so
        self._notify(self.on_reconnect, address)

    async def _resend(self, session: Session) -> None:
        """The publishes buffered while disconnected, in order; publishes made meanwhile
        join the end of the buffer, so they stay behind. A loss again leaves the rest
        buffered for the next session."""
        buffer = self._buffer
        while buffer and self.session is session and self._up.is_set():
            msg = buffer[0]
            try:
                if not session.send(msg):
                    await session.send_wait(msg)
            except SessionRefused:
                return
            except ProtocolError as exc:  # larger than this node accepts: it cannot go
                log.warning("buffered publish on %s dropped: %s", msg.topic, exc.message)
            buffer.popleft()
            self._buffered_bytes -= len(msg.topic) + len(msg.payload) + BUFFER_OVERHEAD

    def _notify(self, callback: Callback | None, arg: Any) -> None:
        if callback is None:
            return
        try:
            result = callback(arg)
            if inspect.isawaitable(result):
                self._spawn(result)
        except Exception:  # the application's callback must not break the client
            log.exception("client callback failed")

    def _shut(self) -> None:
        """For good: every subscription ends, waiters fail, ``closed`` is set."""
        for sub in self._subs.values():
            sub._close()
        self._buffer.clear()
        self._buffered_bytes = 0
        self.closed.set()
        self._up.set()  # waiters for the link wake and see ``closed``

    async def close(self) -> None:
        self._closing = True
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._may_publish.set()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for task in list(self._tasks):
            task.cancel()
        await self._pool.close()
        for fut in list(self._calls.values()) + list(self._flushes):
            if not fut.done():
                fut.set_exception(self._lost())
        self._shut()


def _show(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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


async def connect(address: str | Sequence[str], *, realm: str = "default",
                  name: str = "client", tls: TlsMaterial | None = None,
                  ca_file: str | None = None, cert_file: str | None = None,
                  key_file: str | None = None, state_dir: str | None = None,
                  timeout: float = 10.0, send_buffer_bytes: int = 256 << 10,
                  reconnect: bool = True, reconnect_base: float = 0.1,
                  reconnect_cap: float = 5.0, max_reconnect_attempts: int | None = None,
                  publish_buffer_bytes: int = 1 << 20, ping_interval: float = 1.0,
                  ping_timeout: float = 3.0, on_disconnect: Callback | None = None,
                  on_reconnect: Callback | None = None) -> Client:
    """Attach to the node at ``address`` ('host:port'), or to the first of several that
    answers (a list, or one string of comma-separated addresses); raises SessionRefused
    when none does.

    Development mode (default): an identity and certificate made for this process (or
    kept in ``state_dir``), the node pinned on first use when ``state_dir`` is given.
    Production: pass cert_file, key_file and ca_file.

    Losing the link later: with ``reconnect`` (default) the client dials the addresses
    in turn, waiting ``reconnect_base`` doubling to ``reconnect_cap`` seconds (jittered)
    between attempts, forever or ``max_reconnect_attempts`` times; publishes wait in a
    buffer of ``publish_buffer_bytes``. ``on_disconnect(error)`` and
    ``on_reconnect(address)`` (plain or async) are told. The client PINGs the node every
    ``ping_interval`` seconds, so a node that stopped answering is noticed within about
    ``ping_timeout`` + ``ping_interval`` seconds even when nothing else is sent.
    """
    texts = [a.strip() for a in (address.split(",") if isinstance(address, str) else address)]
    addresses = [parse_address(a, 9443) for a in texts if a]
    if not addresses:
        raise ValueError("connect() needs at least one node address")
    if not (ping_interval > 0 and ping_timeout > 0):
        raise ValueError("ping_interval and ping_timeout must be > 0 s")
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
    v6 = any(":" in host for host, _ in addresses)
    endpoint = Endpoint(tls)
    endpoint.bind("::" if v6 else "0.0.0.0", 0)
    cfg = SessionConfig(identity, tls, realm, name, role="client", caps=("client",), trust=trust,
                        send_buffer_bytes=send_buffer_bytes, handshake_timeout=timeout,
                        ping_timeout=ping_timeout)
    pool = PeerPool(endpoint, cfg, PoolSettings(max_peers=1, max_clients=0,
                                                keepalive=ping_interval,
                                                connect_timeout=timeout))
    session = None
    try:
        for i, (host, port) in enumerate(addresses):
            try:
                session = await pool.connect(host, port)
                break
            except (SessionRefused, OSError):
                if i == len(addresses) - 1:
                    raise
    except BaseException:
        await pool.close()
        raise
    assert session is not None
    client = Client(pool, session, addresses, reconnect=reconnect,
                    reconnect_base=reconnect_base, reconnect_cap=reconnect_cap,
                    max_reconnect_attempts=max_reconnect_attempts,
                    publish_buffer_bytes=publish_buffer_bytes, connect_timeout=timeout,
                    on_disconnect=on_disconnect, on_reconnect=on_reconnect)
    pool.start()
    return client
