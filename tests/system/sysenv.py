"""What the system tests run on: cached Debian 12 roots, chroots, booted systemd-nspawn
containers and network namespaces, each cleaned up by whoever created it.

Pristine roots are built once with debootstrap and kept as tarballs under
$MACULA_TEST_CACHE (default /var/cache/macula-test), named by a hash of what went into them,
so a change in the package's Depends or in this recipe builds a new one. A file lock keeps
two test runs on one machine from building the same root at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("MACULA_TEST_CACHE", "/var/cache/macula-test"))
MIRROR = os.environ.get("MACULA_TEST_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
# Bump when the recipe below changes in a way the hash of its inputs does not show.
RECIPE = 1
# A booted amd64 root needs an init and a bus; the package's own dependencies are only
# downloaded into it, so that `apt install ./macula-agent.deb` resolves and installs them
# from Debian at test time, offline. Cross-arch roots get the dependencies installed:
# configuring python3 under qemu-user takes a minute per run otherwise.
BOOT_PACKAGES = ("systemd", "systemd-sysv", "dbus")
QEMU_BINFMT = {"arm64": "qemu-aarch64", "armhf": "qemu-arm"}
CHROOT_ENV = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8",
              "DEBIAN_FRONTEND=noninteractive"]

TOOLS = ("debootstrap", "systemd-nspawn", "nsenter", "unshare", "ip", "zstd", "dpkg-deb",
         "timeout")


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    """Print how long a step took (shown with pytest -s, and in failure reports)."""
    started = time.monotonic()
    try:
        yield
    finally:
        print(f"[system] {label}: {time.monotonic() - started:.1f} s")


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def package_depends() -> list[str]:
    """Package names in packaging/debian/control.in's Depends (versions dropped)."""
    text = (REPO / "packaging/debian/control.in").read_text()
    line = re.search(r"^Depends:(.*)$", text, re.M)
    assert line, "control.in has no Depends"
    return [re.split(r"[\s(]", d.strip(), maxsplit=1)[0] for d in line.group(1).split(",")]


def sh(*cmd: str, timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {result.returncode}\n"
                             f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}")
    return result


# -- chroots ------------------------------------------------------------------------------
def chroot(root: Path, *cmd: str, timeout: float = 300, check: bool = True,
           ) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``root`` with /proc and /sys mounted in a private mount and PID
    namespace: the mounts and every process vanish with the command, even if it hangs
    and is killed."""
    script = ('mount -t proc proc "$0/proc" && mount -t sysfs sysfs "$0/sys" && '
              'exec chroot "$0" /usr/bin/env -i "$@"')
    return sh("unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", script,
              str(root), *CHROOT_ENV, *cmd, timeout=timeout, check=check)


# -- binfmt for cross-arch roots -------------------------------------------------------------
BINFMT = Path("/proc/sys/fs/binfmt_misc")


@contextlib.contextmanager
def binfmt(arches: list[str]) -> Iterator[None]:
    """qemu-user registered for ``arches`` (with the F flag, so chroots need no qemu binary);
    whatever this turned on is turned off again."""
    mounted = False
    enabled = []
    try:
        if not (BINFMT / "status").exists():
            sh("mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT))
            mounted = True
        for arch in arches:
            name = QEMU_BINFMT[arch]
            entry = BINFMT / name
            if not entry.exists() or entry.read_text().splitlines()[0] != "enabled":
                sh("update-binfmts", "--enable", name)
                enabled.append(name)
        yield
    finally:
        for name in enabled:
            sh("update-binfmts", "--disable", name, check=False)
        if mounted:
            sh("umount", str(BINFMT), check=False)


# -- pristine roots -----------------------------------------------------------------------
def root_recipe(arch: str) -> dict:
    deps = [d for d in package_depends() if d not in ("libc6", "libgcc-s1")]
    if arch == "amd64":
        return {"include": list(BOOT_PACKAGES), "install": [], "download": deps}
    # Installed with apt, not debootstrap --include, whose resolver misses some of
    # python3-cryptography's dependencies.
    return {"include": [], "install": deps, "download": []}


def pristine_tarball(arch: str, log=print) -> Path:
    """The cached tarball of a fresh Debian 12 minbase root for ``arch``, built if missing."""
    recipe = root_recipe(arch)
    key = hashlib.sha256(repr((RECIPE, SUITE, arch, MIRROR, recipe)).encode()).hexdigest()[:12]
    tarball = CACHE / f"{SUITE}-{arch}-{key}.tar.zst"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".lock-{arch}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # another run may be building it right now
        if tarball.exists():
            return tarball
        for stale in CACHE.glob(f"build-{arch}-*"):   # left by a run that was killed
            shutil.rmtree(stale)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=CACHE, prefix=f"build-{arch}-") as tmp:
            root = Path(tmp) / "root"
            # In a private mount namespace: the /proc and /sys debootstrap mounts in the
            # target go away with it even if it is killed.
            cmd = ["unshare", "--mount", "debootstrap", "--variant=minbase", f"--arch={arch}"]
            if recipe["include"]:
                cmd.append("--include=" + ",".join(recipe["include"]))
            sh(*cmd, SUITE, str(root), MIRROR, timeout=1200)
            steps = ["apt-get clean"]
            if recipe["install"] or recipe["download"]:
                steps.append("apt-get update -qq")
            if recipe["install"]:
                steps += ["apt-get install -y -qq --no-install-recommends "
                          + " ".join(recipe["install"]), "apt-get clean"]
            if recipe["download"]:
                steps.append("apt-get install -y -qq --download-only --no-install-recommends "
                             + " ".join(recipe["download"]))
            chroot(root, "sh", "-c", " && ".join(steps), timeout=600)
            # Empty: every container made from this root gets its own machine id at boot.
            (root / "etc/machine-id").write_text("")
            partial = Path(tmp) / "root.tar.zst"
            sh("tar", "--zstd", "-cf", str(partial), "-C", str(root), ".", timeout=600)
            os.replace(partial, tarball)
        for old in CACHE.glob(f"{SUITE}-{arch}-*.tar.zst"):
            if old != tarball:
                old.unlink()
        log(f"built {tarball.name} in {time.monotonic() - started:.0f} s")
    return tarball


def unpack(tarball: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    sh("tar", "--zstd", "-xf", str(tarball), "-C", str(dest), timeout=300)
    return dest


def build_deb(arch: str, out: Path, python: str) -> Path:
    result = sh(str(REPO / "packaging/build-deb.sh"), arch, str(out), timeout=600,
                env={**os.environ, "PYTHON": python})
    return Path(result.stdout.strip().splitlines()[-1])


def install_deb(root: Path, deb: Path) -> subprocess.CompletedProcess:
    """`apt install ./macula-agent_*.deb` inside the root, as an operator would."""
    target = root / "tmp" / deb.name
    shutil.copy(deb, target)
    try:
        return chroot(root, "apt-get", "install", "-y", "--no-install-recommends",
                      f"/tmp/{deb.name}", timeout=600)
    finally:
        target.unlink()


def copy_root(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    sh("cp", "-a", "--reflink=auto", str(src), str(dest), timeout=300)
    return dest


def assert_purged(root: Path, files: list[str], run) -> None:
    """Nothing of the package is left after a purge: its files (directories it shares with
    other packages excepted), config, state, user, group and unit enablement. ``run(*cmd)``
    runs a command in the root (a chroot or a booted container)."""
    status = run("dpkg-query", "-W", "-f=${Status}", "macula-agent").stdout
    assert status in ("", "unknown ok not-installed"), status
    left = [f for f in files if (root / f.lstrip("/")).is_file()]
    assert left == []
    for path in ("etc/macula", "var/lib/macula", "usr/lib/macula-agent", "usr/bin/macula",
                 "etc/systemd/system/multi-user.target.wants/macula-agent.service"):
        assert not (root / path).exists() and not (root / path).is_symlink(), path
    for db in ("passwd", "group", "shadow", "gshadow"):
        assert not re.search(r"^macula:", (root / "etc" / db).read_text(), re.M), db
    state = root / "var/lib/systemd"
    assert [str(p) for p in state.glob("deb-systemd-*/**/*macula*")] == []


# -- network namespaces -------------------------------------------------------------------
@contextlib.contextmanager
def linked_netns(tag: str, subnet: str = "10.213.7") -> Iterator[list[tuple[str, str]]]:
    """Two network namespaces joined by a veth pair: [(netns name, address), ...]."""
    names = [f"macula-{tag}-a", f"macula-{tag}-b"]
    links = [f"mcl{tag}a", f"mcl{tag}b"]
    made: list[str] = []
    try:
        for ns in names:
            sh("ip", "netns", "add", ns)
            made.append(ns)
        sh("ip", "link", "add", links[0], "type", "veth", "peer", "name", links[1])
        out = []
        for i, (ns, link) in enumerate(zip(names, links), start=1):
            sh("ip", "link", "set", link, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{subnet}.{i}/24", "dev", link)
            sh("ip", "-n", ns, "link", "set", link, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            out.append((ns, f"{subnet}.{i}"))
        yield out
    finally:
        for ns in made:   # deleting a namespace deletes the veth end in it, and so the pair
            sh("ip", "netns", "del", ns, check=False)
        if sh("ip", "link", "show", links[0], check=False).returncode == 0:
            sh("ip", "link", "del", links[0], check=False)


# -- booted containers --------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    try:
        paths = list(Path(f"/proc/{pid}/task").glob("*/children"))
        return [int(c) for p in paths for c in p.read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def wait_for(cond, timeout: float, what: str, interval: float = 0.2):
    """Poll ``cond()`` until it returns something truthy (returned), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def own_cgroups(name: str) -> list[Path]:
    """A new child of this process's cgroup in each hierarchy systemd keeps its tree in:
    the unified one, and on hybrid hosts also name=systemd."""
    mounts = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        tail = fields[fields.index("-") + 1:]
        if tail[0] == "cgroup2":
            mounts["0"] = Path(fields[4])
        elif tail[0] == "cgroup" and "name=systemd" in tail[2].split(","):
            mounts["name=systemd"] = Path(fields[4])
    made = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        key = "0" if hierarchy == "0" else controllers
        if key in mounts:
            cg = mounts[key] / path.lstrip("/") / name
            cg.mkdir()
            made.append(cg)
    return made


def remove_cgroup(cg: Path) -> None:
    """Remove a cgroup tree bottom-up, killing anything still in it (all ours)."""
    if not cg.exists():
        return
    for procs in cg.rglob("cgroup.procs"):
        for pid in procs.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    dirs = sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for d in dirs + [cg]:
        wait_for(lambda: _rmdir(d), 10, f"cgroup {d} to empty", interval=0.05)


def _rmdir(d: Path) -> bool:
    try:
        d.rmdir()
    except FileNotFoundError:
        pass
    except OSError:   # EBUSY while killed processes are still being reaped
        return False
    return True


class Container:
    """A root booted with systemd-nspawn the way machine-notes.md found to work here
    (no systemd on the host: --register=no --keep-unit), reached with nsenter."""

    def __init__(self, root: Path, name: str, *, netns: str | None = None,
                 lifetime: int = 900) -> None:
        self.root, self.name, self.netns, self.lifetime = root, name, netns, lifetime
        self.proc: subprocess.Popen | None = None
        self.cgroups: list[Path] = []
        self.inner: int | None = None     # PID of the container's systemd, seen from the host
        self.log = root.parent / f"{name}.nspawn.log"

    def start(self) -> None:
        (self.root / "etc/hostname").write_text(self.name + "\n")
        net = ([f"--network-namespace-path=/run/netns/{self.netns}"] if self.netns
               else ["--private-network"])
        # --keep-unit boots the container in nspawn's own cgroup: two containers started
        # from one process would share one cgroup tree, and each one's systemd would manage
        # (and kill) the other's services. So each gets a cgroup of its own first.
        self.cgroups = own_cgroups(f"macula-test-{self.name}")
        join = "".join(f'echo $$ > "{cg}/cgroup.procs" && ' for cg in self.cgroups)
        with open(self.log, "w") as log:
            # timeout(1) bounds the container's life even if this test process dies.
            self.proc = subprocess.Popen(
                ["sh", "-c", join + 'exec "$@"', "sh",
                 "timeout", "-k", "5", str(self.lifetime), "systemd-nspawn", "-D", str(self.root),
                 "--boot", "--register=no", "--keep-unit", "--console=pipe", "-M", self.name,
                 *net], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def wait_booted(self, timeout: float = 90) -> None:
        """Until the container's systemd says running; degraded (a unit failed) fails."""
        assert self.proc is not None

        def inner_systemd() -> int | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited with {self.proc.returncode}: "
                                     f"{self.log.read_text()[-2000:]}")
            for nspawn in _children(self.proc.pid):
                for child in _children(nspawn):   # nspawn's helper children come and go
                    with contextlib.suppress(FileNotFoundError):
                        if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                            return child
            return None

        self.inner = wait_for(inner_systemd, 30, f"{self.name}'s init")
        state = wait_for(lambda: self._settled(), timeout, f"{self.name} to finish booting")
        if state != "running":
            failed = self.run("systemctl", "--failed", "--no-legend", "--plain",
                              check=False).stdout
            units = [line.split()[0] for line in failed.splitlines() if line.strip()]
            logs = self.run("systemctl", "status", "--no-pager", "--full", "--lines=20",
                            *units, check=False).stdout
            raise AssertionError(f"{self.name} booted {state}; failed units:\n{failed}\n{logs}")

    def _settled(self) -> str | None:
        state = self.run("systemctl", "is-system-running", check=False, timeout=20).stdout.strip()
        return state if state in ("running", "degraded") else None

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        assert self.inner is not None, "not booted"
        return sh("nsenter", "-t", str(self.inner), "-a", "/usr/bin/env", "-i", *CHROOT_ENV,
                  *cmd, timeout=timeout, check=check)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def halt(self, timeout: float = 30) -> None:
        """SIGTERM asks nspawn to halt the container cleanly; past ``timeout`` the inner init
        (which SIGKILL on nspawn would orphan) and nspawn are killed."""
        if self.proc is not None and self.proc.poll() is None:
            nspawn = _children(self.proc.pid)
            for pid in nspawn:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # The inner init first: killing it ends its whole PID namespace.
                for pid in ([self.inner] if self.inner else []) + nspawn + [self.proc.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
        for cg in self.cgroups:
            remove_cgroup(cg)
        self.cgroups = []
