"""What a service may use of the node it runs on: the narrow interface every service
(DHT, cluster, pub/sub, RPC, and the wave-2 features) is built with.

node.py makes one ``Host`` when the transport is up and hands it to each service's
constructor; a service registers its messages and peer listener there and is complete
when its constructor returns. Tests and the simulator can build a ``Host`` of their own.
Nothing here imports node.py: services never see the whole node.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Coroutine

if TYPE_CHECKING:
    from macula.transport.pool import PeerPool
    from macula.transport.reach import Reach
    from macula.transport.session import PeerInfo, Session


@dataclass(frozen=True, slots=True)
class PeerUp:
    """A session to a peer node or a light client was established."""
    session: "Session"


@dataclass(frozen=True, slots=True)
class PeerDown:
    """That session ended (``session.error`` and ``session.peer_leaving`` say why)."""
    session: "Session"


PeerEvent = PeerUp | PeerDown
Handler = Callable[["Session", Any], None]
Accept = Callable[["PeerInfo"], bool]


@dataclass(frozen=True)
class Host:
    node_id: bytes
    name: str
    realm: str
    loop: asyncio.AbstractEventLoop
    pool: "PeerPool"                       # the sessions up now, by node id
    reach: "Reach"                         # sending to a node id: address book, dials, queues
    advertise: tuple[str, int]             # where other nodes reach this one
    seeds: tuple[tuple[str, int], ...]     # configured seed addresses
    # on(msg_cls, handler, accept=None): route application messages of a type to a
    # handler; ``accept(peer)`` says which peers may send it at all (others are refused
    # from the frame header, undecoded)
    on: Callable[..., None]
    # watch_peers(listener): listener(PeerUp | PeerDown) for every session that starts or ends
    watch_peers: Callable[[Callable[[PeerEvent], None]], None]
    # spawn(coro): background work the node holds on to (a task nobody references can
    # be collected while it waits) and cancels when it stops
    spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Future]   # a done one once stopping
