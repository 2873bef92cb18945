"""MemoryDenyWriteExecute=yes in the unit: the agent's whole stack must run without W+X memory.

The kernel's PR_SET_MDWE (Linux >= 6.3) refuses the same mappings as systemd's seccomp
filter for MemoryDenyWriteExecute=, so a child process under it must import everything,
make keys and certificates, and finish a real QUIC handshake on loopback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "agent"

SCRIPT = textwrap.dedent("""
    import ctypes, mmap, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:          # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        print("no-mdwe"); sys.exit(0)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("W+X mapping was allowed: MDWE not in force")
    except PermissionError:
        pass

    import asyncio, ssl, tempfile, os
    import msgpack
    from qh3.asyncio import connect, serve
    from qh3.quic.configuration import QuicConfiguration
    from macula.identity.certs import generate_self_signed
    from macula.hw import detect_limits
    from macula.service import Notifier, setup_logging

    detect_limits()
    msgpack.unpackb(msgpack.packb({"ok": [1, 2]}))
    cert_pem, key_pem = generate_self_signed("mdwe-test")
    tmp = tempfile.mkdtemp()
    cert, key = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
    open(cert, "wb").write(cert_pem); open(key, "wb").write(key_pem)

    async def main():
        server_cfg = QuicConfiguration(is_client=False, alpn_protocols=["macula/1"])
        server_cfg.load_cert_chain(cert, key)
        import socket
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = await serve("127.0.0.1", port, configuration=server_cfg)
        client_cfg = QuicConfiguration(is_client=True, alpn_protocols=["macula/1"],
                                       verify_mode=ssl.CERT_NONE)
        async with connect("127.0.0.1", port, configuration=client_cfg) as client:
            await asyncio.wait_for(client.ping(), 10)
        server.close()

    asyncio.run(main())
    print("handshake-ok")
""")


def test_agent_stack_runs_without_write_execute_memory() -> None:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(AGENT)}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                            text=True, timeout=60)
    if result.stdout.strip() == "no-mdwe":
        pytest.skip("kernel without PR_SET_MDWE (< 6.3)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "handshake-ok"
