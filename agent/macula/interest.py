"""What one node tells the others about its subscriptions, shared by pub/sub (which
routes on it) and the cluster state (which replicates it): neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RemotePattern:
    pattern: str
    group: str | None
    members: int            # how many local members the remote node has for it
