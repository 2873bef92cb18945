"""What the cluster core tells its edge (besides the membership events it passes on)."""

from __future__ import annotations

from dataclasses import dataclass, field

from macula.interest import RemotePattern


@dataclass(frozen=True, slots=True)
class SubscriptionsChanged:
    """Nodes whose subscriptions, as routing should see them, changed: node ID -> its
    patterns now (empty: it has none, or is no longer a live member)."""
    changes: dict[bytes, tuple[RemotePattern, ...]]


@dataclass(frozen=True, slots=True)
class ProvidersChanged:
    """Procedures whose live providers (other than this node) changed: procedure ->
    provider node IDs now (empty: none left)."""
    changes: dict[str, tuple[bytes, ...]]


@dataclass(frozen=True, slots=True)
class StateChanged:
    """A peer's data changed a replicated map (``nodes``, ``procedures`` or
    ``subscriptions``); coalesced per name."""
    name: str


@dataclass(slots=True)
class ClusterStats:
    unadmitted: int = 0        # gossip writes from nodes this node has not admitted, dropped
    unreachable: int = 0       # messages the edge could not deliver
    removals: int = 0          # departed members whose entries this node deleted
    clock_skew: int = 0        # metadata writes refused: the register's time is far ahead
    rejected: dict[str, int] = field(default_factory=dict)   # malformed input, by reason code
