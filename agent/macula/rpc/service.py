"""RPC on a node (edge): clients REGISTER procedures and CALL them; the node picks a
provider (its own clients or another node: a member of its cluster that serves the
procedure, known at once from the cluster state, else one discovered through the DHT),
forwards the call and relays the reply.

- No provider anywhere: NO_RESPONDERS at once (as NATS does), no waiting for a timeout.
- A call that outlives its timeout gets CALL_TIMEOUT from the node; a late reply is dropped.
- Too many calls in flight on this node: CALL_OVERLOADED at once.
- Several providers: power of two choices on calls in flight.
- A provider that goes away, or answers NO_RESPONDERS (it never ran the call): the call
  is retried on another provider if it is idempotent (or was never run), else it fails.
- A CALL that came from another node is served by local providers only: no call hops
  twice, so no loops.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any, Protocol

from macula.errors import ErrorCode
from macula.host import PeerDown, PeerEvent
from macula.rpc.calls import CallsFull, CallTable, PendingCall, choose_provider
from macula.rpc.local import LocalProcedures
from macula.rpc.names import procedure_error
from macula.transport.session import Session, State
from macula.wire.messages import Call, Register, Reply, Unregister

if TYPE_CHECKING:
    from macula.host import Host

log = logging.getLogger("macula.rpc")


class ProviderSource(Protocol):
    """Remote providers of a procedure: the cluster's replicated registrations and
    discovery through the DHT (rpc/discovery.py)."""

    def cached(self, procedure: str) -> list[bytes] | None: ...     # None: not known yet
    async def discover(self, procedure: str) -> list[bytes]: ...
    def local_changed(self, procedure: str, served: bool) -> None: ...  # advertise / withdraw
    def forget(self, node_id: bytes) -> None: ...                    # its node went away
    def returned(self, node_id: bytes) -> None: ...                  # a session to it again


class RpcService:
    def __init__(self, host: "Host", local: LocalProcedures, providers: ProviderSource | None,
                 *, max_pending: int, rng: random.Random | None = None) -> None:
        """``local`` holds what this node's clients registered (``providers`` advertises
        it); ``providers`` None: local providers only (no cluster, no DHT)."""
        self.host = host
        self.loop = host.loop
        self.table = CallTable(max_pending)
        self.local = local
        self.providers = providers
        self._rng = rng or random.Random()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.stats = {"calls": 0, "no_responders": 0, "timeouts": 0, "overloaded": 0,
                      "retries": 0, "remote": 0}
        host.on(Call, self._on_call)
        host.on(Reply, self._on_reply)
        host.on(Register, self._on_register)
        host.on(Unregister, self._on_unregister)
        host.watch_peers(self._on_peer)

    # -- registrations ---------------------------------------------------------------
    def _on_register(self, session: Session, msg: Register) -> None:
        client, local = session.peer.node_id, self.local
        if local.has(client, msg.procedure):
            return
        why = procedure_error(msg.procedure)  # the SDK checks first; this is for others
        if why is not None:
            self._send(session, Reply(0, False, b"", int(ErrorCode.BAD_FIELD), why))
            return
        if session.peer.role != "client" or not local.register(client, msg.procedure):
            self._send(session, Reply(0, False, b"", int(ErrorCode.CALL_OVERLOADED),
                                      f"cannot register {msg.procedure!r} here"))
            return
        if len(local.providers(msg.procedure)) == 1 and self.providers is not None:
            self.providers.local_changed(msg.procedure, True)

    def _on_unregister(self, session: Session, msg: Unregister) -> None:
        if self.local.unregister(session.peer.node_id, msg.procedure) \
                and self.providers is not None:
            self.providers.local_changed(msg.procedure, False)

    def local_procedures(self) -> list[str]:
        return self.local.procedures()

    # -- calls -----------------------------------------------------------------------
    def _on_call(self, session: Session, msg: Call) -> None:
        self.stats["calls"] += 1
        loop = self.loop
        deadline = loop.time() + msg.timeout_ms / 1000.0
        try:
            call = self.table.add(session, msg.call_id, msg.procedure, msg.args, deadline,
                                  msg.idempotent)
        except CallsFull as exc:
            self.stats["overloaded"] += 1
            self._fail_to(session, msg.call_id, ErrorCode.CALL_OVERLOADED, exc.message)
            return
        self._arm_timer(deadline)
        from_node = session.peer.role == "node"
        remote = None if from_node or self.providers is None else self.providers.cached(msg.procedure)
        if remote is None and not from_node and self.providers is not None \
                and not self.local.providers(msg.procedure):
            why = procedure_error(msg.procedure)
            if why is not None:  # a name nobody can advertise: nothing to look up
                self.table.pop(call.call_id)
                self._fail_to(session, msg.call_id, ErrorCode.BAD_FIELD, why)
                return
            self.host.spawn(self._discover_then_dispatch(call))
            return
        self._dispatch(call, remote or [])

    async def _discover_then_dispatch(self, call: PendingCall) -> None:
        try:
            remote = await self.providers.discover(call.procedure)
        except Exception as exc:
            log.debug("discovery of %s failed: %s", call.procedure, exc)
            remote = []
        if self.table.get(call.call_id) is not call:
            return  # timed out while we looked
        self._dispatch(call, remote)

    def _candidates(self, call: PendingCall, remote: list[bytes]) -> list[bytes]:
        local = self.local.providers(call.procedure)
        if not remote and not call.tried:  # the hot path: local clients, first attempt
            return list(local)
        own = self.host.node_id
        return [p for p in (*local, *remote) if p not in call.tried and p != own]

    def _dispatch(self, call: PendingCall, remote: list[bytes]) -> None:
        pool = self.host.pool
        while True:
            candidates = self._candidates(call, remote)
            if not candidates:
                self.table.pop(call.call_id)
                if call.tried:
                    self._fail(call, ErrorCode.NO_RESPONDERS,
                               f"no provider of {call.procedure!r} could take the call")
                else:
                    self.stats["no_responders"] += 1
                    self._fail(call, ErrorCode.NO_RESPONDERS, f"no provider of {call.procedure!r}")
                return
            provider = choose_provider(candidates, self.table.outstanding, self._rng)
            self.table.assign(call, provider)
            session = pool.get(provider)
            if session is None:
                if provider in remote and self.providers is not None:
                    self.host.spawn(self._connect_then_send(call, provider, remote))
                    return
                continue  # a local client that just left: try another
            self._forward(call, session)
            return

    async def _connect_then_send(self, call: PendingCall, provider: bytes,
                                 remote: list[bytes]) -> None:
        # leave time to try another provider if this one cannot be reached; the reach
        # path answers None for an address that now belongs to another node
        budget = max(0.05, (call.deadline - self.loop.time()) / 2)
        session = await self.host.reach.connect(provider, budget)
        if self.table.get(call.call_id) is not call:
            return  # answered or timed out meanwhile
        if session is None:
            log.debug("provider %s unreachable", provider.hex()[:12])
            self._dispatch(call, remote)
        else:
            self._forward(call, session)

    def _forward(self, call: PendingCall, session: Session) -> None:
        remaining = int(max(1.0, (call.deadline - self.loop.time()) * 1000))
        if session.peer.role == "node":
            self.stats["remote"] += 1
        if not session.send_reliable(Call(call.call_id, call.procedure, call.args, remaining,
                                          call.idempotent)) \
                and session.state is State.ESTABLISHED:  # larger than the provider accepts
            self.table.pop(call.call_id)
            self._fail(call, ErrorCode.FRAME_TOO_LARGE,
                       f"the arguments exceed the provider's {session.send_limit} byte frame limit")

    def _on_reply(self, session: Session, msg: Reply) -> None:
        call = self.table.get(msg.call_id)
        if call is None or call.provider != session.peer.node_id:
            return  # late (timed out) or not ours
        if not msg.ok and msg.error_code == int(ErrorCode.NO_RESPONDERS):
            self.stats["retries"] += 1  # it never ran there: safe to try another provider
            remote = (self.providers.cached(call.procedure) or []) if self.providers else []
            self._dispatch(call, remote)
            return
        self.table.pop(msg.call_id)
        self._send(call.caller, Reply(call.caller_call_id, msg.ok, msg.result, msg.error_code,
                                      msg.error))

    def _on_peer(self, event: PeerEvent) -> None:
        if type(event) is not PeerDown:
            peer = event.session.peer
            if self.providers is not None and peer is not None and peer.role == "node":
                self.providers.returned(peer.node_id)
            return
        session = event.session
        gone = session.peer.node_id
        if self.providers is not None:
            if session.peer.role == "node":
                self.providers.forget(gone)
            for procedure in self.local.drop_client(gone):
                self.providers.local_changed(procedure, False)
        else:
            self.local.drop_client(gone)
        for call in self.table.calls_to(gone):
            if call.idempotent:
                self.stats["retries"] += 1
                remote = (self.providers.cached(call.procedure) or []) if self.providers else []
                self._dispatch(call, remote)
            else:
                self.table.pop(call.call_id)
                self._fail(call, ErrorCode.NO_RESPONDERS,
                           f"provider of {call.procedure!r} went away during the call")

    # -- timeouts --------------------------------------------------------------------
    def _arm_timer(self, deadline: float) -> None:
        if self._timer is None or deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        for call in self.table.expire(self.loop.time()):
            self.stats["timeouts"] += 1
            self._fail(call, ErrorCode.CALL_TIMEOUT, f"{call.procedure}: no reply in time")
        nxt = self.table.next_deadline()
        if nxt is not None:
            self._arm_timer(nxt)

    # -- replies ---------------------------------------------------------------------
    def _fail(self, call: PendingCall, code: ErrorCode, message: str) -> None:
        self._fail_to(call.caller, call.caller_call_id, code, message)

    def _fail_to(self, caller: Session, call_id: int, code: ErrorCode, message: str) -> None:
        self._send(caller, Reply(call_id, False, b"", int(code), message))

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
