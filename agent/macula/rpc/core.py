"""The RPC core (sans-IO): which provider takes a call, retries, failover, timeouts.

Fed calls, replies, peer losses and discovery answers with the time; it returns what
to send as ``(destination, message)`` pairs (``messages_to_send``):

- ``Call`` to a provider: a node id, of one of this node's clients or of another node
  (the edge finds its session or dials it; when it cannot, it says ``not_delivered``);
- ``Reply`` to a caller: an opaque handle the edge gave with the call (a session, an
  in-process caller).

and events (``next_event``): ``Discover(procedure)``: ask the provider source, then
call ``discovered``. One discovery per procedure is in flight, whatever the number of
calls waiting for it. Timers: ``get_timer`` / ``handle_timer`` (call deadlines).

- No provider anywhere: NO_RESPONDERS at once (as NATS does), no waiting for a timeout.
- A call that outlives its timeout gets CALL_TIMEOUT; a late reply is dropped.
- Too many calls in flight on this node: CALL_OVERLOADED at once.
- Several providers: power of two choices on calls in flight.
- A provider that goes away, cannot be reached, or answers NO_RESPONDERS (it never
  ran the call): the call is retried on another provider if it is idempotent (or was
  never run), else it fails.
- A call that came from another node is served by local providers only: no call hops
  twice, so no loops.
"""

from __future__ import annotations

import random
from typing import Any, NamedTuple, Protocol

from macula.errors import ErrorCode
from macula.rpc.calls import CallsFull, CallTable, PendingCall, choose_provider
from macula.rpc.local import LocalProcedures
from macula.rpc.names import procedure_error
from macula.runtime.outputs import CoreOutputs
from macula.wire.messages import Call, Reply


class ProviderView(Protocol):
    """What the core may ask of the remote-provider source, synchronously."""

    def cached(self, procedure: str) -> list[bytes] | None: ...     # None: not known yet
    def local_changed(self, procedure: str, served: bool) -> None: ...  # advertise / withdraw
    def forget(self, node_id: bytes) -> None: ...                    # its node went away
    def returned(self, node_id: bytes) -> None: ...                  # a session to it again


class Discover(NamedTuple):
    procedure: str


class RpcCore(CoreOutputs):
    def __init__(self, node_id: bytes, local: LocalProcedures, providers: ProviderView | None,
                 *, max_pending: int, rng: random.Random | None = None) -> None:
        """``local``: what this node's clients registered; ``providers`` None: local
        providers only (no cluster, no DHT)."""
        self.node_id = node_id
        self.local = local
        self.providers = providers
        self.table = CallTable(max_pending)
        self._rng = rng or random.Random()
        super().__init__()   # out: (destination, message) pairs; events
        self._discovering: dict[str, list[PendingCall]] = {}
        self.stats = {"calls": 0, "no_responders": 0, "timeouts": 0, "overloaded": 0,
                      "retries": 0, "remote": 0}

    # -- the core shape (messages_to_send / next_event: CoreOutputs) --------------------
    def get_timer(self) -> float | None:
        return self.table.next_deadline()

    def handle_timer(self, now: float) -> None:
        for call in self.table.expire(now):
            self.stats["timeouts"] += 1
            self._fail(call, ErrorCode.CALL_TIMEOUT, f"{call.procedure}: no reply in time")

    # -- registrations -------------------------------------------------------------------
    def register(self, client: bytes, procedure: str) -> bool:
        """False: the client holds its maximum of procedures."""
        local = self.local
        if local.has(client, procedure):
            return True
        if not local.register(client, procedure):
            return False
        if len(local.providers(procedure)) == 1 and self.providers is not None:
            self.providers.local_changed(procedure, True)
        return True

    def unregister(self, client: bytes, procedure: str) -> None:
        if self.local.unregister(client, procedure) and self.providers is not None:
            self.providers.local_changed(procedure, False)

    # -- calls -------------------------------------------------------------------------
    def call(self, caller: Any, caller_call_id: int, procedure: str, args: bytes,
             timeout_ms: int, idempotent: bool, from_node: bool, now: float) -> None:
        self.stats["calls"] += 1
        try:
            call = self.table.add(caller, caller_call_id, procedure, args,
                                  now + timeout_ms / 1000.0, idempotent)
        except CallsFull as exc:
            self.stats["overloaded"] += 1
            self.out.append((caller, Reply(caller_call_id, False, b"",
                                           int(ErrorCode.CALL_OVERLOADED), exc.message)))
            return
        providers = self.providers
        remote = None if from_node or providers is None else providers.cached(procedure)
        if remote is None and not from_node and providers is not None \
                and not self.local.providers(procedure):
            why = procedure_error(procedure)
            if why is not None:  # a name nobody can advertise: nothing to look up
                self.table.pop(call.call_id)
                self._fail(call, ErrorCode.BAD_FIELD, why)
                return
            waiting = self._discovering.get(procedure)
            if waiting is None:
                self._discovering[procedure] = [call]
                self.events.append(Discover(procedure))
            else:
                waiting.append(call)
            return
        call.remote = remote or ()
        self._dispatch(call, now)

    def discovered(self, procedure: str, remote: list[bytes], now: float) -> None:
        """The answer to ``Discover(procedure)`` (empty when it failed)."""
        table = self.table
        for call in self._discovering.pop(procedure, ()):
            if table.get(call.call_id) is call:  # not timed out meanwhile
                call.remote = remote
                self._dispatch(call, now)

    def handle_reply(self, provider: bytes, msg: Reply, now: float) -> None:
        call = self.table.get(msg.call_id)
        if call is None or call.provider != provider:
            return  # late (timed out) or not ours
        if not msg.ok and msg.error_code == int(ErrorCode.NO_RESPONDERS):
            self.stats["retries"] += 1  # it never ran there: safe to try another provider
            self._redispatch(call, now)
            return
        self.table.pop(msg.call_id)
        self.out.append((call.caller, Reply(call.caller_call_id, msg.ok, msg.result,
                                            msg.error_code, msg.error)))

    def not_delivered(self, provider: bytes, call_id: int, now: float) -> None:
        """The edge could not hand call ``call_id`` to ``provider`` (no session, dial
        failed): it never ran there, so another provider may take it."""
        call = self.table.get(call_id)
        if call is not None and call.provider == provider:
            self._dispatch(call, now)

    def fail(self, call_id: int, code: ErrorCode, message: str) -> None:
        """The edge refused the call for good (e.g. larger than the provider accepts)."""
        call = self.table.pop(call_id)
        if call is not None:
            self._fail(call, code, message)

    def peer_down(self, node_id: bytes, is_node: bool, now: float) -> None:
        """A session ended: a client's registrations go, and calls in flight to it are
        retried (idempotent) or failed."""
        providers = self.providers
        gone = self.local.drop_client(node_id)
        if providers is not None:
            if is_node:
                providers.forget(node_id)
            for procedure in gone:
                providers.local_changed(procedure, False)
        for call in self.table.calls_to(node_id):
            if call.idempotent:
                self.stats["retries"] += 1
                self._redispatch(call, now)
            else:
                self.table.pop(call.call_id)
                self._fail(call, ErrorCode.NO_RESPONDERS,
                           f"provider of {call.procedure!r} went away during the call")

    def peer_up(self, node_id: bytes) -> None:
        """A session to another node is up: a provider there may be offered again."""
        if self.providers is not None:
            self.providers.returned(node_id)

    def is_local_provider(self, node_id: bytes, procedure: str) -> bool:
        return self.local.has(node_id, procedure)

    # -- internals ---------------------------------------------------------------------
    def _redispatch(self, call: PendingCall, now: float) -> None:
        providers = self.providers
        call.remote = (providers.cached(call.procedure) or ()) if providers else ()
        self._dispatch(call, now)

    def _dispatch(self, call: PendingCall, now: float) -> None:
        local = self.local.providers(call.procedure)
        if not call.remote and not call.tried:  # the hot path: local clients, first attempt
            candidates = local
        else:
            own, tried = self.node_id, call.tried
            candidates = [p for p in (*local, *call.remote) if p not in tried and p != own]
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
        if provider not in local:
            self.stats["remote"] += 1
        remaining = int(max(1.0, (call.deadline - now) * 1000))
        self.out.append((provider, Call(call.call_id, call.procedure, call.args, remaining,
                                        call.idempotent)))

    def _fail(self, call: PendingCall, code: ErrorCode, message: str) -> None:
        self.out.append((call.caller, Reply(call.caller_call_id, False, b"", int(code), message)))
