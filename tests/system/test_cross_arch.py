"""The arm64 and armhf packages in Debian 12 roots of their own architecture, run under
qemu-user: they install with apt, `macula --version` and `macula hw` run, and two nodes
complete a real QUIC handshake through the bundled qh3 wheel built for that CPU."""

from __future__ import annotations

import json

import pytest

import sysenv
from sysenv import timed
from macula import __version__

pytestmark = pytest.mark.system

MACHINE = {"arm64": "aarch64", "armhf": "armv7l"}


@pytest.mark.parametrize("arch", ["arm64", "armhf"])
def test_installs_and_runs_under_qemu(arch, qemu, deb, scratch):
    with timed(f"pristine {arch} root (cached after the first build)"):
        tarball = qemu[arch].result()
    root = sysenv.unpack(tarball, scratch / "root")
    assert sysenv.chroot(root, "uname", "-m").stdout.strip() == MACHINE[arch]
    assert sysenv.chroot(root, "dpkg", "--print-architecture").stdout.strip() == arch
    result = sysenv.install_deb(root, deb(arch))
    assert f"Setting up macula-agent ({__version__}" in result.stdout

    assert sysenv.chroot(root, "macula", "--version").stdout.strip() == f"macula {__version__}"
    hw = json.loads(sysenv.chroot(root, "macula", "hw", "--json").stdout)
    assert hw["profile"] == "generic" and hw["limits"]["max_peers"] > 0
    # qh3 is the one compiled dependency the package bundles: prove it loads and talks.
    (root / "tmp/two_nodes.py").write_text(TWO_NODES)
    joined = sysenv.chroot(root, "python3", "-I", "/tmp/two_nodes.py", timeout=180)
    assert joined.stdout.split() == ["joined", "b", "a"], joined.stdout


# Two nodes of the installed package on loopback in the emulated root, the second seeded
# with the first; waits (bounded) until each has the other as its peer.
TWO_NODES = """
import asyncio, sys, tempfile
sys.path.insert(0, "/usr/lib/macula-agent")
from macula.config import load_config, replace
from macula.node import Node

async def main():
    with tempfile.TemporaryDirectory() as tmp:
        base = load_config(system_file=False, env={})
        def make(name, seeds):
            return Node(replace(base, node={"name": name, "realm": "qemu",
                                            "state_dir": f"{tmp}/{name}"},
                                network={"listen_host": "127.0.0.1", "listen_port": 0,
                                         "seeds": seeds}), control=False)
        a = make("a", ())
        await a.start()
        b = make("b", (f"127.0.0.1:{a.listen_address[1]}",))
        await b.start()
        try:
            async def both():
                while not (a.pool.peers() and b.pool.peers()):
                    await asyncio.sleep(0.05)
            await asyncio.wait_for(both(), 90)
            print("joined", a.pool.peers()[0].peer.name, b.pool.peers()[0].peer.name)
        finally:
            await b.stop()
            await a.stop()

asyncio.run(main())
"""
