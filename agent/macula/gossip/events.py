"""What the gossip core tells the application, and its counters."""

from __future__ import annotations

from dataclasses import dataclass

from macula.errors import ErrorCode


@dataclass(frozen=True, slots=True)
class ReplicaChanged:
    """A peer's data changed the named replica (read it with ``core.replica(name)``).
    Coalesced: one pending event per name however many merges happened."""
    name: str


@dataclass(frozen=True, slots=True)
class InputRejected:
    """A peer sent something malformed; it was dropped."""
    sender: bytes
    code: ErrorCode
    reason: str


@dataclass(slots=True)
class GossipStats:
    pushes_sent: int = 0           # GOSSIP_PUSH messages
    states_sent: int = 0           # GOSSIP_STATE messages (pull answers, anti-entropy, fallback)
    full_state_fallbacks: int = 0  # times a peer fell behind the log and was sent full state
    entries_dropped: int = 0       # log entries dropped at the byte bound before all peers had them
    oversize_dropped: int = 0      # pieces too large for this node's message bound
    rejected: int = 0              # malformed messages from peers
    peers_refused: int = 0         # connections beyond max_peers, not gossiped with
    events_dropped: int = 0        # InputRejected events beyond max_events
