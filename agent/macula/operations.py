"""What an operator's interface may read of a node and do to it: the one table that the
control socket, the metrics endpoint and (next) the HTTP gateway share.

node.py fills it in; the interfaces never see the node itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

if TYPE_CHECKING:
    from macula.host import PeerEvent
    from macula.transport.session import Session

Command = Callable[[dict[str, Any]], Awaitable[Any]]
PeerListener = Callable[["PeerEvent"], None]


@dataclass(frozen=True)
class NodeFacts:
    """What stays the same while the node runs."""
    node_id: bytes
    name: str
    realm: str
    version: str
    tls_mode: str
    hw_profile: str
    limits: dict[str, Any]
    started_at: float            # time.monotonic() at start


@dataclass
class Operations:
    facts: NodeFacts
    status: Callable[[], dict[str, Any]]                  # what `macula status` shows
    sessions: Callable[[], list["Session"]]               # live peer and client sessions
    # running totals and levels per part ("endpoint", "pool", "pubsub", "rpc", ...)
    counters: Callable[[], dict[str, dict[str, Any]]]
    watch_peers: Callable[[PeerListener], None]
    unwatch_peers: Callable[[PeerListener], None]
    commands: dict[str, Command] = field(default_factory=dict)   # name -> async handler
