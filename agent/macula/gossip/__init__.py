"""Gossip replication of named CRDTs (sans-IO core)."""

from macula.gossip.core import MIN_MESSAGE_BYTES, GossipCore
from macula.gossip.events import GossipStats, InputRejected, ReplicaChanged

__all__ = ["MIN_MESSAGE_BYTES", "GossipCore", "GossipStats", "InputRejected", "ReplicaChanged"]
