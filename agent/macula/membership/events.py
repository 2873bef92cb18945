"""What the membership core tells the node."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class MemberJoined:
    """A member is alive: new, or readmitted after it was dead or had left."""
    node_id: bytes
    addr: Any            # (host, port) or None


@dataclass(frozen=True, slots=True)
class MemberSuspected:
    node_id: bytes


@dataclass(frozen=True, slots=True)
class MemberRecovered:
    """A suspected member refuted the suspicion."""
    node_id: bytes


@dataclass(frozen=True, slots=True)
class MemberFailed:
    """The suspicion timed out: the member is dead (the node closes its session)."""
    node_id: bytes


@dataclass(frozen=True, slots=True)
class MemberLeft:
    node_id: bytes


MemberEvent = MemberJoined | MemberSuspected | MemberRecovered | MemberFailed | MemberLeft


@dataclass(slots=True)
class SwimStats:
    probes: int = 0
    probes_failed: int = 0
    indirect_probes: int = 0
    refutations: int = 0          # times this node refuted a suspicion about itself
    rejected: int = 0             # malformed messages
    relays_refused: int = 0       # ping-reqs beyond max_relays
    members_refused: int = 0      # newcomers beyond max_members
    events_dropped: int = 0       # events beyond max_events (oldest dropped)
