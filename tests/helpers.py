"""Shared test helpers: real nodes on loopback, a test CA, waiting on conditions."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
from pathlib import Path
from typing import Callable

from macula.config import load_config, replace
from macula.node import Node

TEST_LIMITS = {"max_peers": 64, "max_clients": 64, "max_frame_bytes": 1 << 20,
               "subscriber_queue_bytes": 1 << 20, "send_buffer_total_bytes": 16 << 20, "max_subscriptions": 10000,
               "max_subscriptions_per_client": 1000, "max_pending_calls": 1000,
               "send_buffer_bytes": 1 << 20, "pinned_peers": 256, "bad_frames_per_minute": 5,
               "udp_receive_buffer_bytes": 1 << 20, "handshakes_per_second": 1000,
               "cache_entries": 1024, "dht_storage_entries": 10000, "dht_storage_bytes": 1 << 24,
               "agent_memory_mib": 256, "gossip_fanout": 3, "gossip_interval": 0.5,
               "handshakes_per_source": 1000, "sessions_per_source": 1000,
               "partial_frame_bytes_total": 32 << 20, "peer_bytes_per_second": 1 << 30,
               "peer_frames_per_second": 1 << 24, "receive_window_bytes": 1 << 20}


def node_config(state_dir: Path, name: str, *, realm: str = "test", seeds: tuple[str, ...] = (),
                port: int = 0, tls: dict | None = None, limits: dict | None = None,
                dht: dict | None = None, cluster: dict | None = None, control: bool = False,
                **timeouts):
    base = load_config(system_file=False, env={}, limits={**TEST_LIMITS, **(limits or {})},
                       hw_profile="test")
    t = {"keepalive": 1.0, "reconnect_base": 0.05, "reconnect_cap": 0.5, "connect": 5.0,
         "shutdown": 0.5, **timeouts}
    node = {"name": name, "realm": realm, "state_dir": str(state_dir)}
    if control:
        node["runtime_dir"] = str(state_dir / "run")
    return replace(base, node=node,
                   network={"listen_host": "127.0.0.1", "listen_port": port, "seeds": seeds},
                   tls=tls or {}, timeouts=t, dht={"rpc_timeout": 1.0, **(dht or {})},
                   cluster=cluster or {})


async def start_node(tmp: Path, name: str, **kw) -> Node:
    node = Node(node_config(tmp / name, name, **kw), control=kw.get("control", False))
    await node.start()
    return node


def addr(node: Node) -> str:
    assert node.listen_address is not None
    return f"127.0.0.1:{node.listen_address[1]}"


async def until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Wait for ``cond()`` to hold, re-checking every 10 ms, failing after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def peer_names(node: Node) -> set[str]:
    assert node.pool is not None
    return {s.peer.name for s in node.pool.peers() + node.pool.clients()}


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CertAuthority:
    """A throwaway CA issuing ECDSA P-256 node certificates (production-mode tests)."""

    def __init__(self, directory: Path, name: str = "Macula Test CA") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(days=1))
                     .not_valid_after(now + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(True, False, False, False, False, True, True,
                                                  False, False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str) -> dict:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([
                    x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                    critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        cert_file, key_file = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_file.chmod(0o600)
        return {"mode": "production", "cert_file": str(cert_file), "key_file": str(key_file),
                "ca_file": str(self.ca_file)}


def skip_unless(condition: bool, reason: str) -> None:
    """Skip a system test that cannot run here, or fail it when CI says it must run
    (MACULA_REQUIRE_SYSTEM_TESTS=1), so a missing install step cannot hide behind a skip."""
    import os

    import pytest

    if condition:
        return
    if os.environ.get("MACULA_REQUIRE_SYSTEM_TESTS") == "1":
        pytest.fail(f"required system test cannot run: {reason}")
    pytest.skip(reason)


class NodeProcess:
    """A `macula run` in its own process (so a test can SIGKILL it: a real crash)."""

    def __init__(self, tmp: Path, name: str, seeds: tuple[str, ...] = (), realm: str = "test",
                 port: int | None = None):
        """``port`` and ``name`` of a killed one: the same node restarted (same identity)."""
        import subprocess
        import sys

        self.name = name
        self.port = port or free_udp_port()
        self.runtime_dir = tmp / name / "run"
        state = tmp / name
        state.mkdir(parents=True, exist_ok=True)
        cfg = tmp / f"{name}.toml"
        seed_list = ", ".join(f'"{s}"' for s in seeds)
        cfg.write_text(f'[node]\nname = "{name}"\nrealm = "{realm}"\nstate_dir = "{state}"\n'
                       f'runtime_dir = "{state / "run"}"\n[network]\nlisten_host = "127.0.0.1"\n'
                       f"listen_port = {self.port}\nseeds = [{seed_list}]\n"
                       f"[timeouts]\nkeepalive = 1.0\nreconnect_base = 0.05\nreconnect_cap = 0.5\n"
                       f"[dht]\nrpc_timeout = 1.0\n"
                       '[metrics]\nlisten = ""\n')  # processes at once would share 9464
        import os

        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.proc = subprocess.Popen([sys.executable, "-m", "macula", "run", "-c", str(cfg)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
