"""The DHT on a node (edge): drives the sans-IO Kademlia core and its service registry
over the node's sessions, and turns their operations into awaitables.

- Every DHT message a session delivers goes to the core with the time; after each
  input the edge "pumps": sends what the core produced, resolves finished operations,
  re-arms the core's single timer (no polling).
- A message for a node without a session goes through the node's reach path
  (transport/reach.py), which dials the contact's address while it waits. A dial that
  fails, or reaches another node than the contact says, or a contact still in its
  backoff, is reported to the core as unreachable.
- Peers with the ``dht-client`` cap (weak or unreachable nodes) are never routed to.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

from macula.dht.events import LookupDone, StoreDone, ValueFound
from macula.dht.ids import CLIENT_CAP, Contact
from macula.dht.config import DhtConfig
from macula.dht.node import DhtNode
from macula.dht.registry import Discovered, Provider, ServiceRegistry
from macula.errors import ErrorCode, MaculaError
from macula.host import PeerEvent, PeerUp
from macula.runtime.driver import CoreDriver
from macula.transport.session import Session
from macula.wire.messages import (
    DhtPing, DhtPong, FindNode, FindNodeReply, FindValue, FindValueReply, Store, StoreReply,
)

if TYPE_CHECKING:
    from macula.host import Host

log = logging.getLogger("macula.dht")

DHT_MESSAGES = (FindNode, FindNodeReply, FindValue, FindValueReply, Store, StoreReply,
                DhtPing, DhtPong)
OP_GUARD = 60.0            # an operation the core never finishes is abandoned after this
JOIN_WAIT = 10.0           # operations wait this long at most for the first bootstrap


class DhtService:
    def __init__(self, host: "Host", config: DhtConfig, *, client_mode: bool = False,
                 rng: random.Random | None = None) -> None:
        self.host = host
        self.loop = host.loop
        self.client_mode = client_mode
        self.core = DhtNode(host.node_id, config, rng=rng or random.Random(),
                            now=self.loop.time(), client=client_mode)
        self.registry = ServiceRegistry(self.core, host.realm, host.advertise)
        self._waiters: dict[int, asyncio.Future] = {}
        self._out = host.reach.channel("dht", self._reached, self._unreachable)
        self._driver = CoreDriver(self.loop, self.core, self._deliver,
                                  next_event=self.registry.next_event, on_event=self._finished)
        self._bootstrapped = False
        # set once the first bootstrap finished (or at once when there are no seeds):
        # operations started before that wait for it, bounded by JOIN_WAIT
        self._joined = asyncio.Event()
        self.stats = {"dial_failures": 0, "dropped": 0}
        for msg_cls in DHT_MESSAGES:
            host.on(msg_cls, self._on_message)
        host.watch_peers(self._on_peer)
        if not host.seeds:
            self._joined.set()  # a node without seeds runs standalone; others join it
        self._pump()

    # -- inputs -----------------------------------------------------------------------
    def _sender(self, session: Session) -> Contact | bytes:
        p = session.peer
        if p.role == "node" and p.listen is not None and CLIENT_CAP not in p.caps:
            return Contact(p.node_id, p.listen[0], p.listen[1])
        return p.node_id

    def _on_message(self, session: Session, msg: Any) -> None:
        self.core.handle_message(self._sender(session), msg, self.loop.time())
        self._pump()

    def _on_peer(self, event: PeerEvent) -> None:
        session = event.session
        p = session.peer
        now = self.loop.time()
        if type(event) is PeerUp:
            if p.role != "node":
                return
            self.core.peer_connected(p.node_id, p.listen, now, client=CLIENT_CAP in p.caps)
            if not self._bootstrapped and CLIENT_CAP not in p.caps:
                self._bootstrapped = True  # first DHT peer: join through it
                op = self.core.bootstrap([], now)
                fut = self._waiters[op] = self.loop.create_future()
                fut.add_done_callback(lambda _: self._joined.set())
        elif session.peer_leaving:  # it shut down: no point asking it anything any more
            self.core.handle_unreachable(p.node_id, now)
        else:
            self.core.peer_disconnected(p.node_id, now)
        self._pump()

    # -- the pump ---------------------------------------------------------------------
    def _pump(self) -> None:
        self._driver.pump()

    def _finished(self, event: Any) -> None:
        fut = self._waiters.pop(event.op_id, None)
        if fut is not None and not fut.done():
            fut.set_result(event)

    def _deliver(self, dest: Contact | bytes, msg: Any) -> None:
        node_id = dest if type(dest) is bytes else dest.node_id
        session = self.host.pool.get(node_id)
        if session is not None:
            self._send_now(session, msg)
            return
        if type(dest) is bytes:  # a client-mode peer that has gone: nobody to dial
            self.core.handle_unreachable(node_id, self.loop.time())
            self.loop.call_soon(self._pump)
            return
        if self._out.send(node_id, msg, (dest.host, dest.port)):
            return
        if self._out.dialing(node_id):
            self.stats["dropped"] += 1   # its queue is full: the core's RPC timeout covers it
        else:                            # in its backoff, or no usable address
            self.core.handle_unreachable(node_id, self.loop.time())
            self.loop.call_soon(self._pump)

    def _send_now(self, session: Session, msg: Any) -> None:
        if not session.send(msg):
            self.stats["dropped"] += 1  # a full buffer: the core's RPC timeout covers it

    def _reached(self, session: Session, msgs: list) -> None:
        for msg in msgs:
            self._send_now(session, msg)

    def _unreachable(self, node_id: bytes, _msgs: list) -> None:
        self.stats["dial_failures"] += 1
        log.debug("DHT contact %s unreachable", node_id.hex()[:12])
        self.core.handle_unreachable(node_id, self.loop.time())
        self._pump()

    # -- operations (awaitable) -------------------------------------------------------
    async def joined(self, timeout: float = JOIN_WAIT) -> bool:
        """Wait (bounded) until this node has joined the DHT through its seeds."""
        if not self._joined.is_set():
            try:
                await asyncio.wait_for(self._joined.wait(), timeout)
            except asyncio.TimeoutError:
                return False
        return True

    async def _wait(self, op_id: int) -> Any:
        fut = self.loop.create_future()
        self._waiters[op_id] = fut
        self._pump()
        try:
            return await asyncio.wait_for(fut, OP_GUARD)
        finally:
            self._waiters.pop(op_id, None)

    async def lookup_node(self, target: bytes) -> LookupDone:
        await self.joined()
        return await self._wait(self.core.lookup_node(target, self.loop.time()))

    async def find_value(self, key: bytes) -> ValueFound:
        await self.joined()
        return await self._wait(self.core.find_value(key, self.loop.time()))

    async def store(self, key: bytes, value: bytes, ttl: int) -> StoreDone:
        await self.joined()
        return await self._wait(self.core.store(key, value, ttl, self.loop.time()))

    async def withdraw(self, key: bytes) -> StoreDone:
        return await self._wait(self.core.withdraw(key, self.loop.time()))

    async def advertise(self, service: str, metadata: dict, ttl: int) -> StoreDone:
        await self.joined()
        return await self._wait(self.registry.advertise(service, metadata, ttl, self.loop.time()))

    async def withdraw_service(self, service: str) -> StoreDone:
        return await self._wait(self.registry.withdraw(service, self.loop.time()))

    async def discover(self, service: str) -> tuple[Provider, ...]:
        await self.joined()
        found: Discovered = await self._wait(self.registry.discover(service, self.loop.time()))
        return found.providers

    async def shutdown(self, timeout: float) -> None:
        """Withdraw what this node advertised (clean stop), waiting at most ``timeout``."""
        ops = self.registry.shutdown(self.loop.time())
        if ops:
            waits = [asyncio.ensure_future(self._wait(op)) for op in ops]
            await asyncio.wait(waits, timeout=timeout)
            for w in waits:
                w.cancel()
        self._driver.stop()

    def status(self) -> dict[str, Any]:
        return {**self.core.stats(), **self.stats, "client_mode": self.client_mode}

    # -- control socket commands (macula discover / dht / advertise) -----------------
    def control_commands(self) -> dict[str, Any]:
        return {"discover": self._cmd_discover, "dht": self._cmd_table,
                "advertise": self._cmd_advertise, "withdraw": self._cmd_withdraw}

    async def _cmd_discover(self, req: dict[str, Any]) -> Any:
        service = _text(req, "service")
        try:
            found = await self.discover(service)
        except ValueError as exc:  # a bad service name: the user's input, not a bug
            raise MaculaError(str(exc), code=ErrorCode.BAD_FIELD) from None
        now = self.loop.time()
        return [{"node_id": p.node_id.hex(), "host": p.host, "port": p.port,
                 "metadata": p.metadata, "ttl_left_s": round(p.expires - now, 1)}
                for p in found]

    async def _cmd_advertise(self, req: dict[str, Any]) -> Any:
        service = _text(req, "service")
        ttl = req.get("ttl", 300)
        metadata = req.get("metadata", {})
        if type(ttl) is not int or not 1 <= ttl <= 86400 or not isinstance(metadata, dict):
            raise MaculaError("ttl must be 1..86400 s and metadata an object",
                              code=ErrorCode.BAD_FIELD)
        try:
            done = await self.advertise(service, metadata, ttl)
        except ValueError as exc:
            raise MaculaError(str(exc), code=ErrorCode.BAD_FIELD) from None
        return {"service": service, "stored_on": done.stored, "refused_by": done.refused}

    async def _cmd_withdraw(self, req: dict[str, Any]) -> Any:
        """Stop advertising ``service`` from this node: no more republishing, and the
        record deleted where it is stored (a record of another node is not touched)."""
        service = _text(req, "service")
        advertised = service in self.registry.advertised()
        try:
            done = await self.withdraw_service(service)
        except ValueError as exc:
            raise MaculaError(str(exc), code=ErrorCode.BAD_FIELD) from None
        return {"service": service, "was_advertised": advertised, "deleted_on": done.stored,
                "refused_by": done.refused}

    async def _cmd_table(self, _req: dict[str, Any]) -> Any:
        table = self.core.table
        return {"node_id": self.host.node_id.hex(), "client_mode": self.client_mode,
                "contacts": len(table),
                "buckets": [{"index": i, "contacts": len(b.contacts),
                             "replacements": len(b.replacements)}
                            for i, b in enumerate(table.buckets) if b.contacts or b.replacements],
                "closest": [{"node_id": c.node_id.hex(), "address": f"{c.host}:{c.port}"}
                            for c in table.closest(self.host.node_id, 8)],
                "stats": self.status()}


def _text(req: dict[str, Any], key: str) -> str:
    value = req.get(key)
    if not isinstance(value, str) or not value:
        raise MaculaError(f"{key!r} must be a non-empty string", code=ErrorCode.BAD_FIELD)
    return value
