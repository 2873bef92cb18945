"""The cluster: membership, gossip and replicated cluster state on a node.

``ClusterCore`` (sans-IO: SWIM + gossip + the CRDT state mapping) runs the same in the
node and in the simulator; ``ClusterService`` drives it over the node's sessions.
"""

from macula.cluster.core import ClusterCore
from macula.cluster.events import (
    ClusterStats, ProvidersChanged, StateChanged, SubscriptionsChanged,
)
from macula.cluster.service import (
    ClusterMember, ClusterService, ClusterSettings, cluster_cap, reachable_address,
)
from macula.cluster.state import NAMES, ClusterState

__all__ = ["NAMES", "ClusterCore", "ClusterMember", "ClusterService", "ClusterSettings",
           "ClusterState", "ClusterStats", "ProvidersChanged", "StateChanged",
           "SubscriptionsChanged", "cluster_cap", "reachable_address"]
