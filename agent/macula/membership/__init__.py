"""Cluster membership and failure detection: SWIM with Lifeguard (sans-IO core)."""

from macula.membership.core import Member, State, SwimCore
from macula.membership.events import (
    MemberEvent, MemberFailed, MemberJoined, MemberLeft, MemberRecovered, MemberSuspected,
    SwimStats,
)

__all__ = ["Member", "MemberEvent", "MemberFailed", "MemberJoined", "MemberLeft", "MemberRecovered",
           "MemberSuspected", "State", "SwimCore", "SwimStats"]
