"""One node: composes identity, transport, pool and (later) the protocol cores.

The node owns the event loop side of things: it binds the endpoint, keeps the seeds
connected, routes every application message to the handler registered for its type,
and logs peers joining and leaving. Subsystems register handlers with ``on()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from macula import __version__
from macula.config import Config
from macula.errors import ConfigError, ErrorCode
from macula.host import Accept, Handler, Host, PeerDown, PeerEvent, PeerUp
from macula.identity import (
    TofuStore, load_or_create_dev_material, load_or_create_identity, load_production_material,
)
from macula.identity.tofu import TOFU_FILE
from macula.metrics import rss_bytes, start_metrics
from macula.operations import NodeFacts, Operations
from macula.settings import Settings, derive
from macula.transport import (
    CaTrust, Endpoint, PeerPool, RealmTrust, Session, SessionConfig, TofuTrust, TrustPolicy,
)
from macula.transport.authlimit import FailedAuth
from macula.transport.budget import ReceiveBudget
from macula.transport.reach import AddressBook, Reach
from macula.transport.session import PeerInfo
from macula.wire.messages import (
    Call, Error, Publish, Register, Reply, Subscribe, Unregister, Unsubscribe,
)

log = logging.getLogger("macula.node")

# what a light client may send; every other type is refused from its frame header
CLIENT_MESSAGES = frozenset({Publish, Subscribe, Unsubscribe, Call, Reply, Register, Unregister})


def default_state_dir() -> Path:
    if os.environ.get("STATE_DIRECTORY"):  # systemd StateDirectory=
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/macula")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "macula"


def default_runtime_dir() -> Path:
    if os.environ.get("RUNTIME_DIRECTORY"):  # systemd RuntimeDirectory=
        return Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/run/macula")
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "macula"
    return Path(f"/tmp/macula-{os.getuid()}")


def node_name(cfg: Config) -> str:
    if cfg.node.name:
        return cfg.node.name
    import re
    import socket

    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).strip(".-_") or "node"
    return host[:64]


@contextlib.contextmanager
def _names_key(key: str, value: Any) -> Iterator[None]:
    """Start-up OSErrors as a ConfigError naming the key: `macula run` prints one line and
    exits 78 (no restart loop) instead of a traceback."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(f"{key} = {str(value)!r}: {_why(exc)}") from None


def _bind_error(host: str, port: int, exc: OSError) -> ConfigError:
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(f"network.listen_port = {port}: UDP port already in use on {host} "
                           "(another node on this host needs its own port)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(f"network.listen_host = {host!r}: not an address of this machine")
    if isinstance(exc, socket.gaierror):
        return ConfigError(f"network.listen_host = {host!r}: cannot resolve: {_why(exc)}")
    if exc.errno == errno.EACCES:
        return ConfigError(f"network.listen_port = {port}: permission denied (ports below "
                           "1024 need CAP_NET_BIND_SERVICE)")
    return ConfigError(f"network.listen_host/listen_port = {host}:{port}: cannot bind: {_why(exc)}")


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


class Node:
    def __init__(self, cfg: Config, *, control: bool = True, log_fields: Any = None) -> None:
        """``log_fields`` (service.journal.NodeFields) gets this node's id and realm as soon
        as the identity is loaded, so every log line of the node carries them."""
        self.cfg = cfg
        self.name = node_name(cfg)
        self.state_dir = Path(cfg.node.state_dir) if cfg.node.state_dir else default_state_dir()
        self.runtime_dir = (Path(cfg.node.runtime_dir) if cfg.node.runtime_dir
                            else default_runtime_dir())
        self.started_at = 0.0
        self.endpoint: Endpoint | None = None
        self.pool: PeerPool | None = None
        self.control_enabled = control
        self.log_fields = log_fields
        self._control = None
        self._metrics = None
        self._handlers: dict[type, Handler] = {}
        self._accept: dict[type, Accept | None] = {}
        self._housekeeping: asyncio.Task | None = None
        self._tofu: TofuStore | None = None
        self.dht = None
        self.pubsub = None
        self.rpc = None
        self.cluster = None
        self.listen_address: tuple[str, int] | None = None
        self.host: Host | None = None
        self.reach: Reach | None = None
        self.settings: Settings | None = None
        self.operations: Operations | None = None
        self._peer_listeners: list[Callable[[PeerEvent], None]] = []
        self._tasks: set[asyncio.Task] = set()
        self._closing = False   # set once stop() has cancelled the services' tasks

    # -- composition -----------------------------------------------------------------
    def on(self, msg_cls: type, handler: Handler, accept: Accept | None = None) -> None:
        """Route application messages of ``msg_cls`` to ``handler``. ``accept(peer)``
        says which peers may send it at all: from the others (and from light clients,
        for types not in CLIENT_MESSAGES) it is refused from its header, undecoded."""
        if msg_cls in self._handlers:
            raise ValueError(f"{msg_cls.__name__} already has a handler")
        self._handlers[msg_cls] = handler
        self._accept[msg_cls] = accept

    def _accepted_types(self, peer: PeerInfo) -> list[int]:
        client = peer.role == "client"
        return [cls.TYPE for cls, accept in self._accept.items()
                if not (client and cls not in CLIENT_MESSAGES)
                and (accept is None or accept(peer))]

    @property
    def node_id(self) -> bytes:
        assert self.pool is not None
        return self.pool.node_id

    async def start(self) -> None:
        cfg = self.cfg
        with _names_key("node.state_dir", self.state_dir):
            identity = load_or_create_identity(self.state_dir)
        if self.log_fields is not None:
            self.log_fields.node_id, self.log_fields.realm = identity.node_id.hex(), cfg.node.realm
        realm = self._realm_material(identity.node_id)  # refused before anything starts
        if cfg.tls.mode == "production":
            tls = load_production_material(cfg.tls.cert_file, cfg.tls.key_file, cfg.tls.ca_file)
            trust: TrustPolicy = CaTrust(cfg.tls.ca_file)
        else:
            with _names_key("node.state_dir", self.state_dir):
                tls = load_or_create_dev_material(self.state_dir, identity.node_id)
                tofu = TofuStore(self.state_dir / TOFU_FILE, cfg.limits.pinned_peers)
            tofu.start()  # pins are written in batches off the loop from now on
            self._tofu = tofu
            trust = TofuTrust(tofu)
        credential = b""
        if realm is not None:
            authorities, credential, revoked = realm
            trust = RealmTrust(trust, authorities, time.time, lambda: revoked)
        st = self.settings = derive(cfg)
        e = st.endpoint
        self.endpoint = Endpoint(tls, idle_timeout=e.idle_timeout,
                                 max_handshakes_per_s=e.handshakes_per_second,
                                 receive_buffer=e.receive_buffer,
                                 receive_window=e.receive_window,
                                 handshakes_per_source=e.handshakes_per_source,
                                 retry_threshold=e.retry_threshold)
        try:
            self.listen_address = self.endpoint.bind(cfg.network.listen_host,
                                                     cfg.network.listen_port)
        except OSError as exc:
            raise _bind_error(cfg.network.listen_host, cfg.network.listen_port, exc) from None
        advertise = (cfg.network.advertise_host or self.listen_address[0], self.listen_address[1])
        session_cfg = SessionConfig(
            identity=identity, tls=tls, realm=cfg.node.realm, name=self.name, role="node",
            listen=advertise, caps=self._caps(), trust=trust,
            max_frame=st.session.max_frame, send_buffer_bytes=st.session.send_buffer_bytes,
            bad_frames_per_minute=st.session.bad_frames_per_minute,
            handshake_timeout=st.session.handshake_timeout,
            frame_timeout=st.session.frame_timeout, ping_timeout=st.session.ping_timeout,
            receive_budget=ReceiveBudget(st.session.partial_frame_budget),
            peer_bytes_per_second=st.session.peer_bytes_per_second,
            peer_frames_per_second=st.session.peer_frames_per_second,
            accepts=self._accepted_types, credential=credential,
            failed_auth=FailedAuth(max_sources=st.session.failed_auth_sources))
        self.pool = PeerPool(self.endpoint, session_cfg, st.pool)
        self.pool.on_peer_up = self._peer_up
        self.pool.on_peer_down = self._peer_down
        self.pool.on_message = self._dispatch
        self.pool.start()
        r = st.reach
        self.reach = Reach(self.pool, self.endpoint.loop, AddressBook(r.book_entries),
                           queue_len=r.queue_len, max_dials=r.max_dials,
                           dial_timeout=r.dial_timeout, backoff_base=r.backoff_base,
                           backoff_cap=r.backoff_cap)
        self.host = Host(node_id=identity.node_id, name=self.name, realm=cfg.node.realm,
                         loop=self.endpoint.loop, pool=self.pool, reach=self.reach,
                         advertise=advertise,
                         seeds=tuple(cfg.seed_addresses()), on=self.on,
                         watch_peers=self._peer_listeners.append, spawn=self._spawn)
        self._start_services(self.host, st)
        for host, port in cfg.seed_addresses():
            self.pool.keep_connected(host, port)
        self.started_at = time.monotonic()
        self.operations = self._operations(identity.node_id)
        if self.control_enabled:
            from macula.control.server import ControlServer

            control = ControlServer(self.operations, self.runtime_dir)
            with _names_key("node.runtime_dir", self.runtime_dir):
                await control.start()
            self._control = control  # stop() after a failed start must not raise again
            self._metrics = await start_metrics(self.operations, cfg.metrics.listen)
        self._housekeeping = asyncio.get_running_loop().create_task(self._housekeep())
        log.info("node %s (%s) listening on %s:%d, realm %r, TLS %s, %d seed(s)",
                 self.name, identity.node_id.hex()[:12], *self.listen_address, cfg.node.realm,
                 cfg.tls.mode, len(cfg.network.seeds))

    def _operations(self, node_id: bytes) -> Operations:
        cfg, pool, endpoint = self.cfg, self.pool, self.endpoint
        assert pool is not None and endpoint is not None and self.dht is not None
        facts = NodeFacts(node_id=node_id, name=self.name, realm=cfg.node.realm,
                          version=__version__, tls_mode=cfg.tls.mode, hw_profile=cfg.hw_profile,
                          limits=dataclasses.asdict(cfg.limits), started_at=self.started_at)
        listeners = self._peer_listeners

        def counters() -> dict[str, dict[str, Any]]:
            return {"endpoint": endpoint.stats,
                    "pool": {k: v for k, v in dataclasses.asdict(pool.stats).items()
                             if isinstance(v, int)},
                    "pubsub": self.pubsub.status() if self.pubsub else {},
                    "rpc": self.rpc.status() if self.rpc else {},
                    "auth": self._auth_counts() or {}}

        return Operations(facts=facts, status=self.status,
                          sessions=lambda: pool.peers() + pool.clients(), counters=counters,
                          watch_peers=listeners.append,
                          unwatch_peers=lambda f: listeners.remove(f) if f in listeners else None,
                          commands={**self.dht.control_commands(), "mesh": self._cmd_mesh})

    def _auth_counts(self) -> dict[str, int] | None:
        auth = self.pool.cfg.failed_auth if self.pool is not None else None
        return None if auth is None else {"failed": auth.failures, "refused_early": auth.refused}

    def _realm_material(self, node_id: bytes) -> tuple[list[bytes], bytes, frozenset] | None:
        """A closed realm (node.realm_authorities set): its authority keys, this node's
        credential and the revoked ids; peers' credentials are then checked before the
        TLS policy. The node's own credential must admit it, else it does not start (one
        line naming the key). None: an open realm."""
        n = self.cfg.node
        if not n.realm_authorities:
            log.info("realm %r is open: any node that knows its name may join "
                     "(set node.realm_authorities to close it; docs/AUTH.md)", n.realm)
            return None
        from macula.identity.realm import CredentialError, verify, verify_revocations

        authorities = [bytes.fromhex(k) for k in n.realm_authorities]
        if not n.realm_credential:
            raise ConfigError("node.realm_credential: a closed realm needs this node's "
                              f"credential (`macula realm admit {node_id.hex()}`)")
        with _names_key("node.realm_credential", n.realm_credential):
            credential = Path(n.realm_credential).read_bytes()
        try:
            verify(credential, realm=n.realm, node_id=node_id, authorities=authorities,
                   now=time.time())
        except CredentialError as exc:
            raise ConfigError(f"node.realm_credential = {n.realm_credential!r}: "
                              f"{exc.message}") from None
        revoked: frozenset[bytes] = frozenset()
        if n.realm_revocations:
            with _names_key("node.realm_revocations", n.realm_revocations):
                blob = Path(n.realm_revocations).read_bytes()
            try:
                serial, revoked = verify_revocations(blob, realm=n.realm,
                                                     authorities=authorities)
            except CredentialError as exc:
                raise ConfigError(f"node.realm_revocations = {n.realm_revocations!r}: "
                                  f"{exc.message}") from None
            if node_id in revoked:
                raise ConfigError(f"node.realm_revocations = {n.realm_revocations!r}: "
                                  "this node's own id is revoked")
            log.info("realm %r: revocation list %d, %d node(s) revoked", n.realm, serial,
                     len(revoked))
        return authorities, credential, revoked

    def _spawn(self, coro: Any) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if self._closing:  # a service's late work (a debounced advertise) on a stopped node
            coro.close()
            done = loop.create_future()
            done.cancel()
            return done
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _caps(self) -> tuple[str, ...]:
        from macula.cluster import cluster_cap
        from macula.dht.ids import CLIENT_CAP

        caps = ("node", CLIENT_CAP) if self.cfg.dht.mode == "client" else ("node",)
        name = self.cfg.cluster.name
        return caps + (cluster_cap(name),) if name else caps

    def _start_services(self, host: Host, st: Settings) -> None:
        """Each service is complete when its constructor returns; a service comes after
        the ones it is given."""
        from macula.cluster import ClusterService
        from macula.dht.service import DhtService
        from macula.pubsub.interest import ClusterInterest, DhtInterest
        from macula.pubsub.router import PubSubRouter
        from macula.pubsub.service import PubSubService
        from macula.rpc.discovery import ClusterProviders, DhtProviders
        from macula.rpc.local import LocalProcedures
        from macula.rpc.service import RpcService

        dht = self.dht = DhtService(host, st.dht, client_mode=st.dht_client_mode)
        # the cluster state routes among members; the DHT serves everyone else
        cluster = self.cluster = ClusterService(host, st.cluster)
        ps = st.pubsub
        router = PubSubRouter(max_subscriptions=ps.max_subscriptions,
                              max_per_owner=ps.max_per_client)
        interest = ClusterInterest(host, router, cluster, lambda on_view: DhtInterest(
            host, router, dht, on_view=on_view, cache_entries=ps.cache_entries,
            record_ttl=ps.record_ttl))
        self.pubsub = PubSubService(host, router, interest,
                                    subscriber_queue_bytes=ps.subscriber_queue_bytes,
                                    total_queue_bytes=ps.total_queue_bytes,
                                    publish_hold=ps.publish_hold)
        rs = st.rpc
        local = LocalProcedures(rs.max_procedures_per_client)
        providers = ClusterProviders(host, local, DhtProviders(
            host, dht, cache_entries=rs.cache_entries, advertise_ttl=rs.advertise_ttl), cluster)
        self.rpc = RpcService(host, local, providers, max_pending=rs.max_pending)

    async def _housekeep(self) -> None:
        from macula.runtime.memory import TRIM_INTERVAL, trim_heap

        while trim_heap():  # nothing to do where the C library cannot trim
            await asyncio.sleep(TRIM_INTERVAL)

    async def stop(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            self._housekeeping = None
        if self._control is not None:
            await self._control.stop()
            self._control = None
        if self._metrics is not None:
            await self._metrics.stop()
            self._metrics = None
        if self.cluster is not None:
            await self.cluster.stop()  # goodbyes go out with the pool's drain
        if self.dht is not None:
            await self.dht.shutdown(self.cfg.timeouts.shutdown)  # withdraw our records
        if self.rpc is not None:
            self.rpc.stop()  # no call deadlines fire on a stopped node
        self._closing = True
        tasks = list(self._tasks)   # services' background work still running
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.reach is not None:
            await self.reach.close()
        if self.pool is not None:
            await self.pool.close()
        if self._tofu is not None:
            await self._tofu.close()  # write the pins still pending
            self._tofu = None
        log.info("node %s stopped", self.name)

    # -- events ---------------------------------------------------------------------
    def _peer_up(self, session: Session) -> None:
        p = session.peer
        assert p is not None
        log.info("peer joined: %s (%s) %s at %s:%d", p.name, p.short_id, p.role, *p.address)
        if self.reach is not None:
            self.reach.peer_up(session)   # what waited for this node goes first
        event = PeerUp(session)
        for listener in self._peer_listeners:
            listener(event)

    def _peer_down(self, session: Session) -> None:
        p = session.peer
        assert p is not None
        reason = session.error.message if session.error else "closed"
        log.info("%s left: %s (%s): %s", "client" if p.role == "client" else "peer",
                 p.name, p.short_id, reason)
        event = PeerDown(session)
        for listener in self._peer_listeners:
            listener(event)

    def _dispatch(self, session: Session, msg: Any) -> None:
        handler = self._handlers.get(type(msg))
        if handler is None:
            if type(msg) is not Error:
                session.send(Error(int(ErrorCode.UNKNOWN_TYPE),
                                   f"{type(msg).__name__} is not served by this node", msg.TYPE))
            return
        try:
            handler(session, msg)
        except Exception:  # a subsystem bug must not take the session or the node down
            log.exception("handler for %s failed", type(msg).__name__)
            session.send(Error(int(ErrorCode.INTERNAL), "internal error", msg.TYPE))

    # -- views ----------------------------------------------------------------------
    async def _cmd_mesh(self, _req: dict[str, Any]) -> dict[str, Any]:
        """`macula mesh`: every node this one knows of, from the cluster's roster, its
        sessions and its DHT routing table, with role and (for the connected) RTT."""
        from macula.dht.ids import CLIENT_CAP

        assert self.pool is not None and self.dht is not None
        nodes: dict[bytes, dict[str, Any]] = {}

        def entry(node_id: bytes) -> dict[str, Any]:
            return nodes.setdefault(node_id, {
                "name": None, "node_id": node_id.hex(), "role": None, "address": None,
                "rtt_ms": None, "connected": False, "cluster": None, "in_dht_table": False})

        me = entry(self.node_id)
        me.update(name=self.name, role="dht-client" if self.dht.client_mode else "node",
                  address="%s:%d" % self.host.advertise if self.host else None, self=True)
        cluster = self.cluster.status() if self.cluster and self.cfg.cluster.name else None
        for m in cluster["roster"] if cluster else ():
            e = entry(bytes.fromhex(m["node_id"]))
            e["cluster"] = m["state"]
            e["name"] = e["name"] or (m["name"] if m["name"] != "?" else None)
            e["address"] = e["address"] or m["address"]
        for c in self.dht.core.table:
            e = entry(c.node_id)
            e["in_dht_table"] = True
            e["address"] = e["address"] or f"{c.host}:{c.port}"
        for s in self.pool.peers():
            p = s.peer
            assert p is not None
            e = entry(p.node_id)
            e.update(name=p.name, connected=True,
                     role="dht-client" if CLIENT_CAP in p.caps else "node",
                     rtt_ms=None if s.rtt is None else round(s.rtt * 1000, 3))
            if p.listen is not None and p.listen[0] not in ("0.0.0.0", "::"):
                e["address"] = "%s:%d" % tuple(p.listen)
        others = sorted((e for n, e in nodes.items() if n != self.node_id),
                        key=lambda e: (e["cluster"] is None, e["name"] or "~", e["node_id"]))
        return {"realm": self.cfg.node.realm, "cluster": self.cfg.cluster.name or None,
                "nodes": [me, *others]}

    def status(self) -> dict[str, Any]:
        """What `macula status` shows: identity, peers with RTT, memory against the
        budget, the limits in force, and the subsystems' counters."""
        assert self.pool is not None
        peers = []
        roles: dict[str, int] = {}
        for s in self.pool.peers() + self.pool.clients():
            p = s.peer
            assert p is not None
            roles[p.role] = roles.get(p.role, 0) + 1
            peers.append({"name": p.name, "node_id": p.node_id.hex(), "role": p.role,
                          "address": f"{p.address[0]}:{p.address[1]}",
                          "direction": "out" if s.dialer else "in",
                          "rtt_ms": None if s.rtt is None else round(s.rtt * 1000, 3),
                          # how a node we dialled sees us: behind NAT, the public address
                          "sees_us_at": (f"{s.observed_address[0]}:{s.observed_address[1]}"
                                         if s.observed_address else None)})
        addresses = {p["address"] for p in peers if p["role"] == "node"}
        limits = dataclasses.asdict(self.cfg.limits)
        rss = rss_bytes()
        return {
            "name": self.name, "node_id": self.node_id.hex(), "realm": self.cfg.node.realm,
            # 'open' (development: anyone who knows the name) or 'closed' (credentials)
            "realm_mode": "closed" if self.cfg.node.realm_authorities else "open",
            # handshakes that failed authentication, and CONNECTs then refused unchecked
            "auth": self._auth_counts(),
            "version": __version__, "tls_mode": self.cfg.tls.mode,
            "listen": f"{self.listen_address[0]}:{self.listen_address[1]}" if self.listen_address else None,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "peers": peers,
            "sessions": roles,
            # 'connected', 'dialling', 'unreachable: why' or 'refused: why'. A seed that
            # dialled us first is connected, though our own dial to it was refused as a
            # duplicate (the pool keeps that refusal as the seed's last error).
            "seeds": {f"{h}:{p}": "connected" if f"{h}:{p}" in addresses else state
                      for (h, p), state in self.pool.seed_states().items()},
            "memory": {"rss_mib": round(rss / (1 << 20), 1),
                       "budget_mib": limits["agent_memory_mib"],
                       "budget_used": round(rss / (limits["agent_memory_mib"] << 20), 3)},
            "hw_profile": self.cfg.hw_profile,
            "limits": limits,
            "metrics": (f"http://{self._metrics.url_host}/metrics" if self._metrics is not None
                        else None),
            "dht": self.dht.status() if self.dht else None,
            "pubsub": self.pubsub.status() if self.pubsub else None,
            "rpc": self.rpc.status() if self.rpc else None,
            "cluster": self.cluster.status() if self.cluster else None,
            "reach": self.reach.status() if self.reach else None,
        }
