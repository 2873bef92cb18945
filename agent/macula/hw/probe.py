"""What the machine is: board model, Raspberry Pi revision code, RAM, CPUs, cgroup limits.

Every read goes through ``root`` so tests feed recorded /proc and /sys trees. RAM and
CPUs are read from the same files psutil reads (/proc/meminfo, /sys/.../cpu/online);
psutil cannot be pointed at a recorded tree, so the tests use it as the oracle for the
live machine instead. Nothing here imports psutil: the systemd generator runs this at
boot, where every import costs time on a Pi Zero.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20
# cgroup v1 reports "no limit" as a huge page-aligned number; anything this large is none.
_UNLIMITED = 1 << 62

# Raspberry Pi new-style revision code: ...F MMM CCCC PPPP TTTTTTTT RRRR (bit 23 = F).
PI_TYPES = {
    0x04: "2B", 0x08: "3B", 0x09: "Zero", 0x0A: "CM3", 0x0C: "Zero W", 0x0D: "3B+",
    0x0E: "3A+", 0x10: "CM3+", 0x11: "4B", 0x12: "Zero 2 W", 0x13: "400", 0x14: "CM4",
    0x15: "CM4S", 0x17: "5", 0x18: "CM5", 0x19: "500", 0x1A: "CM5 Lite",
}
PI_PROCESSORS = {0: "BCM2835", 1: "BCM2836", 2: "BCM2837", 3: "BCM2711", 4: "BCM2712"}


@dataclass(frozen=True)
class PiRevision:
    code: int
    type_id: int
    memory_mib: int
    processor: str
    pcb_revision: int

    @property
    def type_name(self) -> str:
        return PI_TYPES.get(self.type_id, f"type 0x{self.type_id:02x}")


def decode_revision(code: int) -> PiRevision | None:
    """Decode a new-style revision code; old-style codes (Pi 1, Zero) give None."""
    if not code & (1 << 23):
        return None
    return PiRevision(
        code=code,
        type_id=(code >> 4) & 0xFF,
        memory_mib=256 << ((code >> 20) & 0x7),
        processor=PI_PROCESSORS.get((code >> 12) & 0xF, f"processor {(code >> 12) & 0xF}"),
        pcb_revision=code & 0xF,
    )


@dataclass(frozen=True)
class Facts:
    model: str                          # device-tree model, "" on machines without one
    revision: PiRevision | None
    ram_bytes: int
    cpus: int
    cgroup_memory_bytes: int | None     # smallest memory limit on our cgroup path
    cgroup_cpu_percent: float | None    # CPU quota on our cgroup path, 100 = one CPU
    memory_controller: bool | None      # None: could not tell

    @property
    def ram_mib(self) -> int:
        return self.ram_bytes // MIB

    @property
    def nominal_ram_mib(self) -> int:
        """The RAM the board is sold with: from the revision code, else MemTotal rounded up
        to a power of two (the firmware keeps some, so a 4 GB Pi reports ~3.7 GiB)."""
        if self.revision is not None:
            return self.revision.memory_mib
        return 1 << max(0, self.ram_mib - 1).bit_length()


def _read(root: Path, rel: str) -> str | None:
    try:
        return (root / rel.lstrip("/")).read_text(errors="replace")
    except OSError:
        return None


def _model(root: Path, cpuinfo: str) -> str:
    raw = _read(root, "proc/device-tree/model")
    if raw:
        return raw.rstrip("\0\n ")
    match = re.search(r"^Model\s*:\s*(.+)$", cpuinfo, re.M)
    return match.group(1).strip() if match else ""


def _revision(root: Path, cpuinfo: str) -> PiRevision | None:
    match = re.search(r"^Revision\s*:\s*([0-9a-fA-F]+)\s*$", cpuinfo, re.M)
    if match:
        return decode_revision(int(match.group(1), 16))
    # Mainline kernels (Debian's own arm64 kernel) print no Revision line; the firmware
    # still puts the code into the device tree as a big-endian u32.
    try:
        raw = (root / "proc/device-tree/system/linux,revision").read_bytes()
    except OSError:
        return None
    return decode_revision(int.from_bytes(raw[:4], "big")) if len(raw) >= 4 else None


def _ram_bytes(root: Path) -> int:
    meminfo = _read(root, "proc/meminfo") or ""
    match = re.search(r"^MemTotal:\s*(\d+)\s*kB", meminfo, re.M)
    if not match:
        raise OSError(f"no MemTotal in {root / 'proc/meminfo'}")
    return int(match.group(1)) * 1024


def _cpus(root: Path, cpuinfo: str) -> int:
    online = _read(root, "sys/devices/system/cpu/online")
    if online and online.strip():
        count = 0
        for part in online.strip().split(","):
            lo, _, hi = part.partition("-")
            count += int(hi or lo) - int(lo) + 1
        return count
    return max(1, len(re.findall(r"^processor\s*:", cpuinfo, re.M)))


def _cgroup_dirs(root: Path) -> tuple[list[Path], list[tuple[str, list[Path]]]]:
    """Our cgroup directory and its ancestors: (v2 dirs, [(v1 controllers, dirs)]).

    The mount root is always included, so a container without a cgroup namespace (its
    /proc/self/cgroup names a path that its /sys/fs/cgroup does not have) still sees the
    limit set on it.
    """
    base = root / "sys/fs/cgroup"
    v2: list[Path] = []
    v1: list[tuple[str, list[Path]]] = []
    for line in (_read(root, "proc/self/cgroup") or "").splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        parts = [p for p in path.split("/") if p]
        if hier == "0" and not controllers:
            # Hybrid hosts mount the v2 tree at unified/; it then has no controllers.
            mount = base / "unified" if (base / "unified").is_dir() else base
            v2 = [mount.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]
        elif controllers:
            mount = base / controllers
            v1.append((controllers, [mount.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]))
    return v2, v1


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else None


def _cgroup_memory(root: Path) -> int | None:
    v2, v1 = _cgroup_dirs(root)
    found = [_int_or_none(_read(d, "memory.max")) for d in v2]
    for controllers, dirs in v1:
        if "memory" in controllers.split(","):
            found += [_int_or_none(_read(d, "memory.limit_in_bytes")) for d in dirs]
    limits = [v for v in found if v is not None and 0 < v < _UNLIMITED]
    return min(limits) if limits else None


def _cgroup_cpu(root: Path) -> float | None:
    v2, v1 = _cgroup_dirs(root)
    found: list[float] = []
    for d in v2:
        quota, _, period = (_read(d, "cpu.max") or "").strip().partition(" ")
        if quota.isdigit() and period.isdigit() and int(period):
            found.append(100.0 * int(quota) / int(period))
    for controllers, dirs in v1:
        if "cpu" in controllers.split(","):
            for d in dirs:
                quota_us = _int_or_none(_read(d, "cpu.cfs_quota_us"))
                period_us = _int_or_none(_read(d, "cpu.cfs_period_us"))
                if quota_us and quota_us > 0 and period_us:
                    found.append(100.0 * quota_us / period_us)
    return min(found) if found else None


def _memory_controller(root: Path) -> bool | None:
    # Raspberry Pi kernels boot with cgroup_disable=memory: MemoryMax= is then ignored.
    table = _read(root, "proc/cgroups")
    if table:
        for line in table.splitlines():
            fields = line.split()
            if len(fields) == 4 and fields[0] == "memory":
                return fields[3] == "1"
    controllers = _read(root, "sys/fs/cgroup/cgroup.controllers")
    return None if controllers is None else "memory" in controllers.split()


def probe(root: Path | str = "/") -> Facts:
    root = Path(root)
    cpuinfo = _read(root, "proc/cpuinfo") or ""
    return Facts(
        model=_model(root, cpuinfo),
        revision=_revision(root, cpuinfo),
        ram_bytes=_ram_bytes(root),
        cpus=_cpus(root, cpuinfo),
        cgroup_memory_bytes=_cgroup_memory(root),
        cgroup_cpu_percent=_cgroup_cpu(root),
        memory_controller=_memory_controller(root),
    )
