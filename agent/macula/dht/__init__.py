"""Kademlia DHT core (sans-IO) and the service registry built on it.

See docs/DHT.md for the protocol, the bounds and how an edge drives it.
"""

from macula.dht.config import DhtConfig
from macula.dht.events import Event, LookupDone, StoreDone, ValueFound
from macula.dht.ids import CLIENT_CAP, Contact, distance, make_key
from macula.dht.node import DhtNode
from macula.dht.registry import Discovered, Provider, ServiceRegistry
from macula.dht.routing import RoutingTable
from macula.dht.storage import Record, RecordStore

__all__ = ["CLIENT_CAP", "Contact", "DhtConfig", "DhtNode", "Discovered", "Event", "LookupDone",
           "Provider", "Record", "RecordStore", "RoutingTable", "ServiceRegistry", "StoreDone",
           "ValueFound", "distance", "make_key"]
