"""Transport edge: QUIC endpoint (qh3), sessions (CONNECT handshake) and the peer pool."""

from macula.transport.handshake import CaTrust, OpenTrust, RealmTrust, TofuTrust, TrustPolicy
from macula.transport.pool import PeerPool, PoolSettings
from macula.transport.quic import ALPN, Endpoint, QuicLink
from macula.transport.session import PeerInfo, Session, SessionConfig, State

__all__ = ["ALPN", "CaTrust", "Endpoint", "OpenTrust", "PeerInfo", "PeerPool", "PoolSettings",
           "QuicLink", "RealmTrust", "Session", "SessionConfig", "State", "TofuTrust", "TrustPolicy"]
