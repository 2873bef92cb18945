"""Every bound and timer of a node, derived once from its configuration (whose [limits]
default from the hardware profile): the one place that turns config into the numbers
the parts are built with. Parts take these as constructor arguments and never read the
config themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from macula.cluster.service import MAX_GOSSIP_MESSAGE, ClusterSettings
from macula.config import Config
from macula.errors import ConfigError
from macula.gossip import MIN_MESSAGE_BYTES
from macula.dht.config import DhtConfig
from macula.transport.pool import PoolSettings
from macula.wire import HEADER_SIZE

MAX_DIALS = 16   # dials to other nodes in progress at once (each costs a handshake)


@dataclass(frozen=True)
class EndpointSettings:
    idle_timeout: float
    handshakes_per_second: int
    handshakes_per_source: int
    retry_threshold: int          # handshakes in flight past which Initials must Retry
    receive_buffer: int           # SO_RCVBUF
    receive_window: int           # QUIC flow control per peer


@dataclass(frozen=True)
class SessionSettings:
    max_frame: int
    send_buffer_bytes: int
    bad_frames_per_minute: int
    handshake_timeout: float
    frame_timeout: float
    ping_timeout: float
    partial_frame_budget: int     # node-wide bytes of partly received frames
    peer_bytes_per_second: int
    peer_frames_per_second: int
    failed_auth_sources: int      # addresses whose failed authentications are counted


@dataclass(frozen=True)
class ReachSettings:
    queue_len: int                # what waits for one dial, per destination and service
    max_dials: int
    dial_timeout: float
    backoff_base: float
    backoff_cap: float
    book_entries: int             # node addresses remembered


@dataclass(frozen=True)
class PubSubSettings:
    max_subscriptions: int
    max_per_client: int
    subscriber_queue_bytes: int
    total_queue_bytes: int
    publish_hold: float
    cache_entries: int
    record_ttl: int


@dataclass(frozen=True)
class RpcSettings:
    max_pending: int
    max_procedures_per_client: int
    cache_entries: int
    advertise_ttl: int


@dataclass(frozen=True)
class Settings:
    endpoint: EndpointSettings
    session: SessionSettings
    pool: PoolSettings
    reach: ReachSettings
    dht: DhtConfig
    dht_client_mode: bool
    cluster: ClusterSettings
    pubsub: PubSubSettings
    rpc: RpcSettings


def derive(cfg: Config) -> Settings:
    lim, t = cfg.limits, cfg.timeouts
    return Settings(
        endpoint=EndpointSettings(
            idle_timeout=t.idle, handshakes_per_second=lim.handshakes_per_second,
            handshakes_per_source=lim.handshakes_per_source,
            retry_threshold=max(4, lim.handshakes_per_second // 4),
            receive_buffer=lim.udp_receive_buffer_bytes,
            receive_window=lim.receive_window_bytes),
        session=SessionSettings(
            max_frame=lim.max_frame_bytes, send_buffer_bytes=lim.send_buffer_bytes,
            bad_frames_per_minute=lim.bad_frames_per_minute, handshake_timeout=t.connect,
            frame_timeout=t.frame, ping_timeout=t.ping,
            # room for at least two frames of the largest size in flight
            partial_frame_budget=max(lim.partial_frame_bytes_total,
                                     2 * (lim.max_frame_bytes + HEADER_SIZE)),
            peer_bytes_per_second=lim.peer_bytes_per_second,
            peer_frames_per_second=lim.peer_frames_per_second,
            failed_auth_sources=lim.cache_entries),
        pool=PoolSettings(
            max_peers=lim.max_peers, max_clients=lim.max_clients, idle_ttl=t.pool_idle,
            keepalive=t.keepalive, connect_timeout=t.connect,
            reconnect_base=t.reconnect_base, reconnect_cap=t.reconnect_cap,
            shutdown_timeout=t.shutdown, sessions_per_source=lim.sessions_per_source),
        reach=ReachSettings(
            # about one send buffer of small frames
            queue_len=max(32, lim.send_buffer_bytes // 1024), max_dials=MAX_DIALS,
            dial_timeout=t.connect, backoff_base=t.reconnect_base,
            backoff_cap=t.reconnect_cap, book_entries=lim.cache_entries),
        dht=DhtConfig(
            max_records=lim.dht_storage_entries,
            max_bytes_per_publisher=max(64 << 10, lim.dht_storage_bytes // 64),
            max_ttl=max(86400.0, cfg.dht.record_ttl), rpc_timeout=cfg.dht.rpc_timeout),
        dht_client_mode=cfg.dht.mode == "client",
        cluster=cluster_settings(cfg),
        pubsub=PubSubSettings(
            max_subscriptions=lim.max_subscriptions,
            max_per_client=lim.max_subscriptions_per_client,
            subscriber_queue_bytes=lim.subscriber_queue_bytes,
            total_queue_bytes=lim.send_buffer_total_bytes, publish_hold=t.publish_hold,
            cache_entries=lim.cache_entries, record_ttl=cfg.dht.record_ttl),
        rpc=RpcSettings(
            max_pending=lim.max_pending_calls,
            # a client may register a quarter as many procedures as it may subscribe
            max_procedures_per_client=max(16, lim.max_subscriptions_per_client // 4),
            cache_entries=lim.cache_entries, advertise_ttl=cfg.dht.record_ttl),
    )


def cluster_settings(cfg: Config) -> ClusterSettings:
    c, lim = cfg.cluster, cfg.limits
    message = min(MAX_GOSSIP_MESSAGE, lim.max_frame_bytes)
    if message < MIN_MESSAGE_BYTES:
        raise ConfigError(f"limits.max_frame_bytes: the cluster needs at least "
                          f"{MIN_MESSAGE_BYTES}, got {lim.max_frame_bytes}")
    return ClusterSettings(
        name=c.name, max_members=min(c.max_members, lim.max_peers + 1),
        probe_interval=c.probe_interval, probe_timeout=c.probe_timeout,
        suspicion_mult=c.suspicion_mult, sync_interval=c.sync_interval,
        anti_entropy_interval=c.anti_entropy_interval, gc_grace=c.gc_grace,
        metadata_interval=c.metadata_interval, max_entries_per_node=c.max_entries_per_node,
        gossip_interval=lim.gossip_interval, gossip_fanout=lim.gossip_fanout,
        gossip_peers=c.gossip_peers, max_message_bytes=message, hw_profile=cfg.hw_profile)
