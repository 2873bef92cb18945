"""The amd64 .deb in a fresh Debian 12 root (debootstrap), installed with apt as an
operator would, without a running systemd (the chroot an SD-card image is built in)."""

from __future__ import annotations

import json
import re

import pytest

import sysenv
from macula import __version__

pytestmark = pytest.mark.system


def test_apt_install_into_fresh_root(installed_root):
    root, apt_output = installed_root
    # Dependencies came from Debian, resolved by apt at install time.
    for dep in sysenv.package_depends():
        status = sysenv.chroot(root, "dpkg-query", "-W", "-f=${Status}", dep).stdout
        assert status == "install ok installed", (dep, status)
    assert "Setting up macula-agent" in apt_output
    assert sysenv.chroot(root, "macula", "--version").stdout.strip() == f"macula {__version__}"

    hw_text = sysenv.chroot(root, "macula", "hw").stdout
    assert re.search(r"^profile:  generic", hw_text, re.M), hw_text
    hw = json.loads(sysenv.chroot(root, "macula", "hw", "--json").stdout)
    assert hw["limits"]["max_peers"] > 0 and hw["systemd"]["MemoryMax"].endswith("M")

    # What postinst did: the user, the enabled unit, bytecode, a valid conffile.
    passwd = sysenv.chroot(root, "getent", "passwd", "macula").stdout
    assert passwd.split(":")[5:] == ["/var/lib/macula", "/usr/sbin/nologin\n"]
    assert sysenv.chroot(root, "systemctl", "is-enabled", "macula-agent").stdout.strip() == "enabled"
    assert list((root / "usr/lib/macula-agent/macula/__pycache__").glob("node.cpython-311*.pyc"))
    check = sysenv.chroot(root, "macula", "config", "check", "/etc/macula/agent.toml")
    assert check.stdout.strip() == "/etc/macula/agent.toml: valid"
    assert "[metrics]" in (root / "etc/macula/agent.toml").read_text()


def test_purge_in_chroot_leaves_nothing(installed_root, scratch):
    root = sysenv.copy_root(installed_root[0], scratch / "root")
    files = sysenv.chroot(root, "dpkg", "-L", "macula-agent").stdout.split()
    sysenv.chroot(root, "apt-get", "purge", "-y", "macula-agent")
    sysenv.assert_purged(root, files, lambda *cmd: sysenv.chroot(root, *cmd, check=False))

