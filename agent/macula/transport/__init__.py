"""Transport edge: QUIC endpoint (qh3), sessions (CONNECT handshake) and the peer pool."""

from macula.transport.pool import PeerPool, PoolSettings
from macula.transport.quic import ALPN, Endpoint, QuicLink
from macula.transport.session import PeerInfo, Session, SessionConfig, State

__all__ = ["ALPN", "Endpoint", "PeerInfo", "PeerPool", "PoolSettings", "QuicLink", "Session",
           "SessionConfig", "State"]
