"""RPC on a node (edge): clients REGISTER procedures and CALL them; the sans-IO
``RpcCore`` (rpc/core.py) picks the provider (this node's clients, a member of its
cluster that serves the procedure, or one discovered through the DHT), retries and
times calls out. This edge checks roles, maps the core's node ids to sessions (dialling
remote providers through the reach path), runs the discoveries the core asks for, and
sends replies to callers: client sessions, or in-process callers (``call``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any, Protocol

from macula.errors import ErrorCode, MaculaError
from macula.host import PeerDown, PeerEvent
from macula.rpc.core import Discover, ProviderView, RpcCore
from macula.rpc.local import LocalProcedures
from macula.rpc.names import procedure_error
from macula.runtime.driver import CoreDriver
from macula.transport.session import Session, State
from macula.wire.messages import Call, Register, Reply, Unregister

if TYPE_CHECKING:
    from macula.host import Host

log = logging.getLogger("macula.rpc")


class ProviderSource(ProviderView, Protocol):
    """Remote providers of a procedure: the cluster's replicated registrations and
    discovery through the DHT (rpc/discovery.py): what the core asks, and the lookup the
    edge runs for it."""

    async def discover(self, procedure: str) -> list[bytes]: ...


class LocalCaller:
    """An in-process caller: the handle the core replies to."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: dict[int, asyncio.Future] = {}


class RpcService:
    def __init__(self, host: "Host", local: LocalProcedures, providers: ProviderSource | None,
                 *, max_pending: int, rng: random.Random | None = None) -> None:
        """``local`` holds what this node's clients registered (``providers`` advertises
        it); ``providers`` None: local providers only (no cluster, no DHT)."""
        self.host = host
        self.loop = host.loop
        self.local = local
        self.providers = providers
        self.core = RpcCore(host.node_id, local, providers, max_pending=max_pending, rng=rng)
        self.table = self.core.table
        self.stats = self.core.stats
        self._driver = CoreDriver(self.loop, self.core, self._send_out,
                                  next_event=self.core.next_event, on_event=self._on_event)
        self._caller = LocalCaller()
        self._next_local_id = 0
        host.on(Call, self._on_call)
        host.on(Reply, self._on_reply)
        host.on(Register, self._on_register)
        host.on(Unregister, self._on_unregister)
        host.watch_peers(self._on_peer)

    # -- registrations ---------------------------------------------------------------
    def _on_register(self, session: Session, msg: Register) -> None:
        if not self.local.has(session.peer.node_id, msg.procedure):
            why = procedure_error(msg.procedure)  # the SDK checks first; this is for others
            if why is not None:
                self._send(session, Reply(0, False, b"", int(ErrorCode.BAD_FIELD), why))
                return
        if session.peer.role != "client" or \
                not self.core.register(session.peer.node_id, msg.procedure):
            self._send(session, Reply(0, False, b"", int(ErrorCode.CALL_OVERLOADED),
                                      f"cannot register {msg.procedure!r} here"))

    def _on_unregister(self, session: Session, msg: Unregister) -> None:
        self.core.unregister(session.peer.node_id, msg.procedure)

    def local_procedures(self) -> list[str]:
        return self.local.procedures()

    # -- calls -----------------------------------------------------------------------
    def _on_call(self, session: Session, msg: Call) -> None:
        self.core.call(session, msg.call_id, msg.procedure, msg.args, msg.timeout_ms,
                       msg.idempotent, session.peer.role == "node", self.loop.time())
        self._driver.pump()

    async def call(self, procedure: str, args: bytes, timeout: float = 5.0,
                   idempotent: bool = False) -> bytes:
        """A call made inside this process (an app, the HTTP gateway), routed like a
        client's. Raises MaculaError with the reply's code when it fails."""
        self._next_local_id = call_id = (self._next_local_id + 1) & 0xFFFF_FFFF
        future = self._caller.pending[call_id] = self.loop.create_future()
        try:
            self.core.call(self._caller, call_id, procedure, args, max(1, int(timeout * 1000)),
                           idempotent, False, self.loop.time())
            self._driver.pump()
            reply: Reply = await future
        finally:
            self._caller.pending.pop(call_id, None)
        if reply.ok:
            return reply.result
        try:
            code = ErrorCode(reply.error_code)
        except ValueError:
            code = ErrorCode.INTERNAL
        raise MaculaError(reply.error, code=code)

    def _on_reply(self, session: Session, msg: Reply) -> None:
        self.core.handle_reply(session.peer.node_id, msg, self.loop.time())
        self._driver.pump()

    def _on_event(self, event: Any) -> None:
        if type(event) is Discover:
            self.host.spawn(self._discover(event.procedure))

    async def _discover(self, procedure: str) -> None:
        try:
            remote = await self.providers.discover(procedure)
        except Exception as exc:
            log.debug("discovery of %s failed: %s", procedure, exc)
            remote = []
        self.core.discovered(procedure, remote, self.loop.time())
        self._driver.pump()

    def _on_peer(self, event: PeerEvent) -> None:
        peer = event.session.peer
        if type(event) is not PeerDown:
            if peer is not None and peer.role == "node":
                self.core.peer_up(peer.node_id)
            return
        self.core.peer_down(peer.node_id, peer.role == "node", self.loop.time())
        self._driver.pump()

    # -- what the core sends -----------------------------------------------------------
    def _send_out(self, dest: Any, msg: Any) -> None:
        if type(msg) is Reply:
            if type(dest) is LocalCaller:
                future = dest.pending.get(msg.call_id)
                if future is not None and not future.done():
                    future.set_result(msg)
            else:
                self._send(dest, msg)
            return
        session = self.host.pool.get(dest)  # a Call to a provider
        if session is not None:
            self._forward(msg, session)
        elif self.core.is_local_provider(dest, msg.procedure):
            self.core.not_delivered(dest, msg.call_id, self.loop.time())  # it just left
        else:
            self.host.spawn(self._connect_then_send(dest, msg))

    async def _connect_then_send(self, provider: bytes, msg: Call) -> None:
        # leave time to try another provider if this one cannot be reached; the reach
        # path answers None for an address that now belongs to another node
        budget = max(0.05, msg.timeout_ms / 2000)
        session = await self.host.reach.connect(provider, budget)
        call = self.table.get(msg.call_id)
        if call is None or call.provider != provider:
            return  # answered or timed out meanwhile
        if session is None:
            log.debug("provider %s unreachable", provider.hex()[:12])
            self.core.not_delivered(provider, msg.call_id, self.loop.time())
        else:
            remaining = int(max(1.0, (call.deadline - self.loop.time()) * 1000))
            self._forward(msg._replace(timeout_ms=remaining), session)
        self._driver.pump()

    def _forward(self, msg: Call, session: Session) -> None:
        if not session.send_reliable(msg) and session.state is State.ESTABLISHED:
            self.core.fail(msg.call_id, ErrorCode.FRAME_TOO_LARGE,
                           f"the arguments exceed the provider's {session.send_limit} "
                           "byte frame limit")

    @staticmethod
    def _send(session: Session, msg: Any) -> None:
        """Replies and calls are not dropped: they wait in the session's bounded backlog
        when the buffer is full. A reply too large for its caller becomes an error."""
        if not session.send_reliable(msg) and session.state is State.ESTABLISHED \
                and type(msg) is Reply:
            session.send_reliable(Reply(msg.call_id, False, b"", int(ErrorCode.FRAME_TOO_LARGE),
                                        f"the result exceeds the caller's {session.send_limit} "
                                        "byte frame limit"))

    def status(self) -> dict[str, Any]:
        return {**self.stats, "in_flight": len(self.table), "procedures": self.local_procedures()}

    def stop(self) -> None:
        self._driver.stop()
