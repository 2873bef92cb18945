"""Fixtures of the system tests: the packages, the cached Debian roots, qemu-user.

Everything these tests start (containers, network namespaces, binfmt entries, mounts) is
undone by the fixture or context manager that started it, on failure too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

import sysenv
from sysenv import timed
from helpers import skip_unless

QEMU_TOOLS = ("update-binfmts", "qemu-aarch64-static", "qemu-arm-static")


@pytest.fixture(scope="session")
def system_host() -> None:
    skip_unless(os.geteuid() == 0, "system tests need root (debootstrap, chroot, nspawn)")
    missing = sysenv.missing_tools()
    skip_unless(not missing, f"missing {', '.join(missing)}: install "
                             "scripts/apt-test-packages.txt (scripts/test.sh does, as root)")


def _wanted_arches(items) -> set[str]:
    arches = set()
    for item in items:
        if "tests/system/" not in item.nodeid:
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        arches.add(params.get("arch", "amd64"))
    return arches


@pytest.fixture(scope="session")
def roots(system_host, request) -> dict[str, Future]:
    """Pristine root tarballs by architecture, as futures. The ones this session's tests
    need are all built at once on first use: a missing cross-arch root takes minutes
    under qemu, and builds while the amd64 tests run."""
    arches = _wanted_arches(request.session.items) or {"amd64"}
    cross = sorted(arches & set(sysenv.QEMU_BINFMT))
    if any(shutil.which(t) is None for t in QEMU_TOOLS):
        cross = []   # the qemu fixture reports it
    with contextlib.ExitStack() as stack:
        if cross:
            stack.enter_context(sysenv.binfmt(cross))
        pool = stack.enter_context(ThreadPoolExecutor(len(arches)))
        yield {arch: pool.submit(sysenv.pristine_tarball, arch)
               for arch in sorted(arches - set(sysenv.QEMU_BINFMT)) + cross}


@pytest.fixture(scope="session")
def deb(system_host, tmp_path_factory):
    """deb(arch): macula-agent_<version>_<arch>.deb, built once per session."""
    out = tmp_path_factory.mktemp("debs")
    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            with timed(f"build {arch} .deb"):
                built[arch] = sysenv.build_deb(arch, out, sys.executable)
        return built[arch]
    return get


@pytest.fixture(scope="session")
def installed_root(roots, deb, tmp_path_factory):
    """A fresh amd64 Debian 12 root with `apt install ./macula-agent_*.deb` done in it,
    and apt's output. Tests copy it; they do not change it."""
    with timed("pristine amd64 root (cached after the first build)"):
        tarball = roots["amd64"].result()
    root = tmp_path_factory.mktemp("installed") / "root"
    try:
        with timed("unpack amd64 root"):
            sysenv.unpack(tarball, root)
        with timed("apt install ./macula-agent_*.deb"):
            result = sysenv.install_deb(root, deb("amd64"))
        yield root, result.stdout
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def scratch(tmp_path):
    """A directory for a root of a few hundred MB, removed after the test (pytest keeps
    tmp_path of the last runs)."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture(scope="session")
def qemu(roots) -> dict[str, Future]:
    """Roots of other architectures, with qemu-user registered to run them."""
    missing = [t for t in QEMU_TOOLS if shutil.which(t) is None]
    skip_unless(not missing, f"missing {', '.join(missing)}: apt-get install qemu-user-static "
                             "binfmt-support")
    return roots
