"""Service registry and discovery: provider records on the DHT (sans-IO).

A provider of ``service`` in ``realm`` publishes one record under
``make_key(realm, "svc:" + service)`` whose value is msgpack ``[host, port, metadata]``
(the publisher field is its node ID). The DHT core republishes it before every
expiry until ``withdraw``; ``shutdown`` withdraws everything on a clean stop.

The registry wraps a DhtNode and has the same core shape, so the node and the
simulator drive it in place of the DHT. Its ``next_event`` turns the results of
``discover`` into ``Discovered``; every other DHT event passes through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

from macula.dht.events import Event, ValueFound
from macula.dht.ids import make_key
from macula.dht.node import DhtNode
from macula.wire.fields import AnyValue, FieldError, MapOf, Str, Struct, U16
from macula.wire.messages import DHT_VALUE_MAX, NAME_PATTERN

_SERVICE = Str(64, 1, pattern=NAME_PATTERN)
_VALUE = Struct(Str(253, 1), U16, MapOf(Str(64, 1), AnyValue(8), 64))


class Provider(NamedTuple):
    node_id: bytes
    host: str
    port: int
    metadata: dict
    expires: float      # on this node's clock


@dataclass(frozen=True, slots=True)
class Discovered:
    """``discover`` finished: the live providers (none expired), one per node."""
    op_id: int
    service: str
    providers: tuple[Provider, ...]


class ServiceRegistry:
    def __init__(self, dht: DhtNode, realm: str, address: tuple[str, int]) -> None:
        """``address``: where this node's providers are reached (its listen address)."""
        self.dht = dht
        self.realm = realm
        self.address = address
        self._advertised: dict[str, bytes] = {}    # service -> key, for shutdown
        self._discovering: dict[int, str] = {}     # op -> service
        # results the application never drained are dropped by the core: forget those ops
        self._max_discovering = dht.config.max_ops + dht.config.max_events
        self.bad_records = 0                       # provider values that failed to decode
        self.handle_message = dht.handle_message
        self.handle_timer = dht.handle_timer
        self.get_timer = dht.get_timer
        self.messages_to_send = dht.messages_to_send
        self.peer_connected = dht.peer_connected
        self.peer_disconnected = dht.peer_disconnected
        self.handle_unreachable = dht.handle_unreachable

    def key(self, service: str) -> bytes:
        _check(_SERVICE, service, "service name")
        return make_key(self.realm, "svc:" + service)

    def advertise(self, service: str, metadata: dict[str, Any], ttl: int, now: float) -> int:
        """Publish this node as a provider of ``service``; kept alive until withdrawn.
        Reports StoreDone."""
        value = [self.address[0], self.address[1], metadata]
        _check(_VALUE, value, "provider record")
        packed = msgpack.packb(value, use_bin_type=True)
        if len(packed) > DHT_VALUE_MAX:
            raise ValueError(f"metadata too large ({len(packed)} > {DHT_VALUE_MAX} bytes packed)")
        key = self.key(service)
        op = self.dht.store(key, packed, ttl, now)
        self._advertised[service] = key
        return op

    def advertised(self) -> list[str]:
        """The services this node advertises (and republishes) now."""
        return list(self._advertised)

    def withdraw(self, service: str, now: float) -> int:
        """Stop providing ``service`` and delete the record. Reports StoreDone."""
        self._advertised.pop(service, None)
        return self.dht.withdraw(self.key(service), now)

    def shutdown(self, now: float) -> list[int]:
        """Withdraw every advertised service (a clean stop)."""
        return [self.withdraw(service, now) for service in list(self._advertised)]

    def discover(self, service: str, now: float) -> int:
        """Look up the providers of ``service``. Reports Discovered."""
        op = self.dht.find_value(self.key(service), now)
        self._discovering[op] = service
        if len(self._discovering) > self._max_discovering:
            del self._discovering[next(iter(self._discovering))]
        return op

    def next_event(self) -> Event | Discovered | None:
        event = self.dht.next_event()
        if type(event) is ValueFound:
            service = self._discovering.pop(event.op_id, None)
            if service is not None:
                return Discovered(event.op_id, service, self._providers(event))
        return event

    def _providers(self, event: ValueFound) -> tuple[Provider, ...]:
        out = []
        for r in event.records:
            try:
                value = msgpack.unpackb(r.value, use_list=False, raw=False)
                _VALUE(value)
            except (ValueError, TypeError):   # msgpack errors and FieldError are ValueErrors
                self.bad_records += 1
                continue
            host, port, metadata = value
            out.append(Provider(r.publisher, host, port, metadata, r.expires))
        return tuple(out)


def _check(validator: Any, value: Any, what: str) -> None:
    try:
        validator(value)
    except FieldError as exc:
        raise ValueError(f"bad {what}: {exc}") from None
