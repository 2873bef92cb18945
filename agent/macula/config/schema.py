"""The configuration schema: every key, its type, its default and its check.

Sections are frozen dataclasses. Each field's metadata holds a one-line doc and a
check that raises ValueError with the expected value; the loader turns that into a
ConfigError naming the key. Limits have no static defaults: they come from the
hardware profile (macula.hw), so a Pi Zero and a Pi 5 get different bounds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

Check = Callable[[Any], None]

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _opt(doc: str, check: Check | None = None, **kw: Any) -> Any:
    return field(metadata={"doc": doc, "check": check}, **kw)


def one_of(*choices: str) -> Check:
    def check(v: Any) -> None:
        if v not in choices:
            raise ValueError(f"one of {', '.join(repr(c) for c in choices)}")
    return check


def int_range(lo: int, hi: int) -> Check:
    def check(v: Any) -> None:
        if not lo <= v <= hi:
            raise ValueError(f"an integer in [{lo}, {hi}]")
    return check


def float_range(lo: float, hi: float) -> Check:
    def check(v: Any) -> None:
        if not lo <= v <= hi:
            raise ValueError(f"a number in [{lo}, {hi}]")
    return check


def name_or_empty(v: Any) -> None:
    if v and not NAME_RE.fullmatch(v):
        raise ValueError("1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit")


def valid_name(v: Any) -> None:  # not "name": NodeConfig's field of that name would shadow it
    if not NAME_RE.fullmatch(v):
        raise ValueError("1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit")


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """'host', 'host:port', '[v6]:port' or 'quic://host:port' -> (host, port)."""
    s = text.strip()
    for prefix in ("quic://", "https://", "macula://"):
        if s.startswith(prefix):
            s = s[len(prefix):]
    s = s.rstrip("/")
    if not s:
        raise ValueError("host[:port]")
    has_port = False
    if s.startswith("["):
        host, sep, rest = s[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("[ipv6] or [ipv6]:port")
        has_port, port_text = bool(rest), rest[1:]
    elif s.count(":") == 1:
        host, port_text = s.split(":")
        has_port = True
    else:
        host, port_text = s, ""
    if not host or any(c.isspace() or c == "/" for c in host):
        raise ValueError("host[:port] with a host (no spaces or slashes)")
    if has_port:
        # isascii: str.isdigit() also accepts digits like '²' that int() refuses
        if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
            raise ValueError("host:port with a port in 1..65535")
        return host, int(port_text)
    return host, default_port


def authority_keys(v: Any) -> None:
    for item in v:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", item):
            raise ValueError("Ed25519 public keys of 64 hex digits")


def seed_list(v: Any) -> None:
    for item in v:
        parse_address(item, 1)


@dataclass(frozen=True)
class NodeConfig:
    name: str = _opt("human-readable node name; empty = this host's name", name_or_empty, default="")
    realm: str = _opt("namespace this node belongs to; peers of other realms are refused",
                      valid_name, default="default")
    state_dir: str = _opt("keys, certificates and pinned peers; empty = /var/lib/macula "
                          "when run as a service, else ~/.local/state/macula", default="")
    runtime_dir: str = _opt("control socket; empty = /run/macula or $XDG_RUNTIME_DIR/macula",
                            default="")
    log_level: str = _opt("debug, info, warning or error",
                          one_of("debug", "info", "warning", "error"), default="info")
    realm_authorities: tuple[str, ...] = _opt(
        "closed realm: the authority keys (64 hex digits each, `macula realm init` prints "
        "one) whose credentials admit a node; empty = an open realm, for development: "
        "anyone who knows its name is in", authority_keys, default=())
    realm_credential: str = _opt("closed realm: this node's membership credential file "
                                 "(`macula realm admit`)", default="")
    realm_revocations: str = _opt("closed realm: the authority's signed list of revoked "
                                  "node ids (`macula realm revoke`); empty = none",
                                  default="")


@dataclass(frozen=True)
class NetworkConfig:
    listen_host: str = _opt("address to bind the node's UDP socket to", default="0.0.0.0")
    listen_port: int = _opt("UDP port for QUIC (0 = any free port)", int_range(0, 65535),
                            default=9443)
    advertise_host: str = _opt("address peers should dial; empty = the listen address (a "
                               "wildcard one is replaced by the address peers see; `macula "
                               "status` shows it per peer as sees_us_at)", default="")
    seeds: tuple[str, ...] = _opt("well-known nodes to join through, 'host:port'", seed_list,
                                  default=())


@dataclass(frozen=True)
class TlsConfig:
    mode: str = _opt("development (self-signed, peers pinned on first use) or production "
                     "(certificates from a CA)", one_of("development", "production"),
                     default="development")
    cert_file: str = _opt("production: this node's certificate (PEM, ECDSA P-256)", default="")
    key_file: str = _opt("production: the certificate's private key (PEM)", default="")
    ca_file: str = _opt("production: CA bundle that peers' certificates must chain to",
                        default="")


@dataclass(frozen=True)
class TimeoutsConfig:
    connect: float = _opt("seconds to establish a connection and session", float_range(0.1, 300),
                          default=10.0)
    idle: float = _opt("QUIC idle timeout: a silent connection is closed after this",
                       float_range(1, 3600), default=60.0)
    keepalive: float = _opt("seconds between PINGs on an otherwise quiet connection",
                            float_range(0.1, 600), default=15.0)
    pool_idle: float = _opt("an unused pooled connection is closed after this",
                            float_range(1, 86400), default=300.0)
    reconnect_base: float = _opt("first reconnect delay (doubles, with jitter)",
                                 float_range(0.01, 60), default=0.5)
    reconnect_cap: float = _opt("longest reconnect delay", float_range(0.1, 3600), default=30.0)
    shutdown: float = _opt("seconds to drain connections on shutdown", float_range(0, 60),
                           default=2.0)
    publish_hold: float = _opt("longest a publisher is held back by a congested subscriber "
                               "queue (back-pressure); past it that queue drops its oldest",
                               float_range(0, 60), default=1.0)
    frame: float = _opt("seconds a frame may take from its first byte to its last; a "
                        "session past it is closed (a stalled frame holds memory)",
                        float_range(0.5, 600), default=10.0)
    ping: float = _opt("seconds a PING may stay unanswered before the session is closed",
                       float_range(1, 3600), default=45.0)


@dataclass(frozen=True)
class LimitsConfig:
    """Bounds; defaults come from the hardware profile (see `macula hw`)."""
    max_peers: int = _opt("node-to-node connections kept at once", int_range(1, 100000))
    max_clients: int = _opt("light clients attached at once", int_range(0, 100000))
    max_frame_bytes: int = _opt("largest frame body accepted or sent", int_range(1024, 16 << 20))
    send_buffer_bytes: int = _opt("bytes queued per connection before back-pressure",
                                  int_range(16 << 10, 1 << 30))
    pinned_peers: int = _opt("entries in the TOFU store of pinned peers", int_range(16, 1 << 20))
    bad_frames_per_minute: int = _opt("protocol errors tolerated from a peer before it is "
                                      "disconnected", int_range(1, 100000))
    subscriber_queue_bytes: int = _opt("bytes queued per subscriber beyond its connection's "
                                       "send buffer; publishers are held back past a "
                                       "quarter of it, the oldest is dropped past all of it",
                                       int_range(4 << 10, 1 << 30))
    send_buffer_total_bytes: int = _opt("bytes queued for every subscriber together; the "
                                        "oldest of a growing queue is dropped past this",
                                        int_range(64 << 10, 1 << 34))
    max_subscriptions: int = _opt("subscriptions held by this node for its clients",
                                  int_range(1, 1 << 22))
    max_subscriptions_per_client: int = _opt("subscriptions one client may hold",
                                             int_range(1, 1 << 20))
    max_pending_calls: int = _opt("RPC calls in flight through this node", int_range(1, 1 << 22))
    udp_receive_buffer_bytes: int = _opt("SO_RCVBUF asked for the node's UDP socket (the "
                                         "kernel caps it at net.core.rmem_max)",
                                         int_range(64 << 10, 1 << 30))
    receive_window_bytes: int = _opt("bytes one peer may send ahead of what the node has "
                                     "read (QUIC flow control; a stream gets half): bounds "
                                     "how long others' frames wait behind a busy peer",
                                     int_range(16 << 10, 1 << 30))
    handshakes_per_second: int = _opt("new QUIC connections accepted per second (CPU-bound)",
                                      int_range(1, 100000))
    handshakes_per_source: int = _opt("new QUIC connections accepted per second from one IP "
                                      "address", int_range(1, 100000))
    sessions_per_source: int = _opt("inbound sessions (nodes and clients) one IP address may "
                                    "hold at once", int_range(1, 1 << 20))
    partial_frame_bytes_total: int = _opt("bytes of partly received frames held for all "
                                          "sessions together; past it the sessions whose "
                                          "frames progressed least recently are closed",
                                          int_range(64 << 10, 1 << 34))
    peer_bytes_per_second: int = _opt("bytes per second one peer or client may send; frames "
                                      "over it are dropped with RATE_LIMITED",
                                      int_range(64 << 10, 1 << 34))
    peer_frames_per_second: int = _opt("frames per second one peer or client may send",
                                       int_range(100, 1 << 30))
    cache_entries: int = _opt("entries per lookup cache (subscribers, RPC providers, bridge)",
                              int_range(16, 1 << 22))
    dht_storage_entries: int = _opt("DHT records held for others", int_range(16, 1 << 24))
    dht_storage_bytes: int = _opt("bytes of DHT records held for others",
                                  int_range(64 << 10, 1 << 34))
    agent_memory_mib: int = _opt("memory budget of the agent itself (MemoryMax= covers it "
                                 "and the apps)", int_range(16, 1 << 20))
    gossip_fanout: int = _opt("cluster members each gossip round pushes changes to",
                              int_range(1, 64))
    gossip_interval: float = _opt("seconds between gossip rounds (a local change goes out "
                                  "at once, debounced; rounds repair what that missed)",
                                  float_range(0.05, 60))


CLUSTER_NAME_MAX = 24  # "cluster:" + name must fit a 32-character CONNECT capability


def cluster_name(v: Any) -> None:
    if v != "" and not (NAME_RE.fullmatch(v) and len(v) <= CLUSTER_NAME_MAX):
        raise ValueError(f"empty, or 1-{CLUSTER_NAME_MAX} characters of A-Z a-z 0-9 . _ -, "
                         "starting with a letter or digit")


@dataclass(frozen=True)
class ClusterConfig:
    """The nodes of one realm with the same cluster name share membership and state
    (services, subscriptions, node metadata) by gossip; see docs/CRDT.md."""
    name: str = _opt("cluster this node belongs to (the nodes of a home or office, 1-10); "
                     "seeds should include a member of it. Empty: a cluster of one, and "
                     "the node meets others through the mesh (DHT) only",
                     cluster_name, default="")
    max_members: int = _opt("members this node admits (itself included); a cluster is a "
                            "home or office (1-10 nodes), larger groups federate; capped at "
                            "limits.max_peers, since members keep sessions to each other",
                            int_range(2, 4096), default=10)
    probe_interval: float = _opt("seconds between failure-detector probes (one member each)",
                                 float_range(0.05, 60), default=1.0)
    probe_timeout: float = _opt("seconds to wait for a probe's ack before asking others to "
                                "probe; below probe_interval", float_range(0.01, 30),
                                default=0.5)
    suspicion_mult: int = _opt("a suspect is declared failed after at least this many probe "
                               "intervals (times log10 of the cluster size)",
                               int_range(1, 100), default=4)
    sync_interval: float = _opt("seconds between full membership syncs with one live and one "
                                "failed member (how the sides of a healed partition meet)",
                                float_range(1, 3600), default=30.0)
    gossip_peers: int = _opt("members each node picks to gossip with (those that pick it are "
                             "added); a cluster of up to this + 1 nodes is a full mesh",
                             int_range(1, 1024), default=4)
    anti_entropy_interval: float = _opt("seconds between digest comparisons with one member",
                                        float_range(1, 3600), default=30.0)
    gc_grace: float = _opt("seconds a failed member's entries stay in the replicated state "
                           "(hidden from every view at once) before they are deleted",
                           float_range(1, 86400), default=60.0)
    metadata_interval: float = _opt("seconds between checks of this node's load for its "
                                    "metadata", float_range(1, 3600), default=10.0)
    max_entries_per_node: int = _opt("procedures plus subscription patterns one node may "
                                     "publish to the cluster; more are not published or, "
                                     "from others, not routed to", int_range(16, 1 << 20),
                                     default=4096)


@dataclass(frozen=True)
class DhtSection:
    mode: str = _opt("server: hold records for others; client: look up and publish only "
                     "(weak or unreachable nodes)", one_of("server", "client"), default="server")
    record_ttl: int = _opt("seconds a published record lives without being refreshed",
                           int_range(10, 86400), default=300)
    rpc_timeout: float = _opt("seconds to wait for one DHT request (also bounds the dial); "
                              "a lookup goes on with other nodes meanwhile",
                              float_range(0.1, 60), default=3.0)


def listen_address_or_empty(v: Any) -> None:
    if v:
        parse_address(v, 9464)


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = _opt("Prometheus text metrics over HTTP at host:port (GET /metrics); keep it "
                       "on loopback unless a firewall guards it; empty = off",
                       listen_address_or_empty, default="127.0.0.1:9464")


SECTIONS: dict[str, type] = {
    "node": NodeConfig,
    "network": NetworkConfig,
    "tls": TlsConfig,
    "timeouts": TimeoutsConfig,
    "limits": LimitsConfig,
    "cluster": ClusterConfig,
    "dht": DhtSection,
    "metrics": MetricsConfig,
}


@dataclass(frozen=True)
class Config:
    node: NodeConfig
    network: NetworkConfig
    tls: TlsConfig
    timeouts: TimeoutsConfig
    limits: LimitsConfig
    cluster: ClusterConfig
    dht: DhtSection
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: str = "embedded defaults"
    hw_profile: str = "generic"

    def seed_addresses(self) -> list[tuple[str, int]]:
        return [parse_address(s, 9443) for s in self.network.seeds]
