"""Hardware profiles (TOML, shipped in macula/hw/profiles/) and the limits derived from them.

The generic profile is a scaling model: a memory budget from RAM (capped by a cgroup
limit) pays for bounded tables at the unit costs in COSTS. A board profile pins the
limits its hardware justifies on top of that. When a cgroup limit is below the budget a
board profile asks for, the memory-bound limits are scaled from the cgroup limit instead:
pinned numbers would not fit.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from macula.hw.probe import MIB, Facts

PROFILE_DIR = Path(__file__).with_name("profiles")
GENERIC = "generic"

IDLE_MIB = 40  # idle node: target <= 35 MiB RSS (limits.md), plus allocator slack
KIB = 1024
# Bytes that one unit of a bounded table costs when it is full (steady state).
COSTS: dict[str, int] = {
    "max_peers": 100 * KIB,            # QUIC connection ~75 KiB (limits.md) + session state
    "max_clients": 100 * KIB,
    "send_buffer_total_bytes": 1,
    "udp_receive_buffer_bytes": 1,     # socket memory is charged to the cgroup
    "dht_storage_bytes": 1,
    "dht_storage_entries": 512,        # dict slot, key, provider record, expiry
    "cache_entries": 3 * KIB,          # three caches (subscribers, RPC providers, bridge)
    "pinned_peers": 256,               # node id, certificate hash, realm
    "max_pending_calls": 2 * KIB,      # future, timer, arguments kept for failover
    "max_subscriptions": 512,          # trie path, subscription record, match-cache share
}
BUDGET_KEYS = ("agent_memory_mib", "apps_memory_mib")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    path: Path
    pi_types: tuple[int, ...] = ()
    models: tuple[str, ...] = ()
    ram_mib: int | None = None
    limits: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, float] = field(default_factory=dict)   # overrides of generic [budget]

    def matches(self, facts: Facts) -> bool:
        if facts.revision is not None:
            board = facts.revision.type_id in self.pi_types
        else:
            board = any(facts.model.startswith(m) for m in self.models)
        return board and (self.ram_mib is None or self.ram_mib == facts.nominal_ram_mib)


@dataclass(frozen=True)
class GenericModel:
    budget: dict[str, float]
    scaled: dict[str, tuple[float, int, int]]
    fixed: dict[str, Any]

    @property
    def keys(self) -> tuple[str, ...]:
        return (*BUDGET_KEYS, "cpu_quota_percent", *self.scaled, *self.fixed)

    @property
    def memory_keys(self) -> frozenset[str]:
        """Limits that the memory budget pays for: a board may pin them only for one RAM size."""
        return frozenset((*BUDGET_KEYS, *self.scaled))


def _load_toml(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def load_profiles(directory: Path = PROFILE_DIR) -> tuple[GenericModel, list[Profile]]:
    generic = _load_toml(directory / f"{GENERIC}.toml")
    model = GenericModel(
        budget=generic["budget"],
        scaled={k: (float(v[0]), int(v[1]), int(v[2])) for k, v in generic["scaled"].items()},
        fixed=generic["fixed"],
    )
    boards = []
    for path in sorted(directory.glob("*.toml")):
        if path.stem == GENERIC:
            continue
        data = _load_toml(path)
        match = data.get("match", {})
        boards.append(Profile(
            name=data["name"], description=data["description"], path=path,
            pi_types=tuple(match.get("pi_types", ())), models=tuple(match.get("models", ())),
            ram_mib=match.get("ram_mib"), limits=data.get("limits", {}),
            budget=data.get("budget", {}),
        ))
    return model, boards


def _nice(value: float) -> int:
    """Round down to 1 or 1.5 times a power of two, so bounds read as 384, 512, 768."""
    n = int(value)
    if n < 4:
        return max(n, 0)
    top = 1 << (n.bit_length() - 1)
    return top + top // 2 if n >= top + top // 2 else top


def _clamp(value: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, value))


def ram_budget_mib(model: GenericModel, ram_mib: int) -> int:
    b = model.budget
    return int(_clamp(ram_mib * b["ram_share"], b["total_min_mib"], b["total_max_mib"]))


def scaled_limits(model: GenericModel, total_mib: int, cpus: int) -> dict[str, Any]:
    """The generic limits for a memory budget (agent + apps, MiB) and a number of CPUs."""
    b = model.budget
    agent = min(total_mib, int(_clamp(total_mib * b["agent_share"], b["agent_min_mib"],
                                      b["agent_max_mib"])))
    spare = max(0, agent - IDLE_MIB) * MIB
    limits: dict[str, Any] = {
        "agent_memory_mib": agent,
        "apps_memory_mib": total_mib - agent,
        "cpu_quota_percent": int(max(b["cpu_quota_min_percent"], (cpus - b["cpu_reserved"]) * 100)),
    }
    for key, (share, lo, hi) in model.scaled.items():
        limits[key] = int(_clamp(_nice(spare * share / COSTS[key]), lo, hi))
    limits.update(model.fixed)
    return limits


def estimate_agent_mib(limits: dict[str, Any]) -> float:
    """Steady-state memory of the agent with every aggregate table at its bound.

    Per-subscriber and per-app queues are bounded one by one, not in aggregate, so they
    are left out; MemoryMax= is the backstop for them.
    """
    return IDLE_MIB + sum(limits[k] * cost for k, cost in COSTS.items()) / MIB


@dataclass(frozen=True)
class Derivation:
    profile: Profile | None          # None: the generic profile
    limits: dict[str, Any]
    notes: list[str]

    @property
    def profile_name(self) -> str:
        return GENERIC if self.profile is None else self.profile.name


def derive(facts: Facts, model: GenericModel, boards: list[Profile]) -> Derivation:
    notes: list[str] = []
    matches = [p for p in boards if p.matches(facts)]
    if len(matches) > 1:
        raise ValueError(f"profiles {', '.join(p.name for p in matches)} all match this board")
    profile = matches[0] if matches else None
    if profile is not None and profile.budget:
        model = dataclasses.replace(model, budget={**model.budget, **profile.budget})
    if profile is None and facts.revision is not None:
        notes.append(f"no profile for Raspberry Pi {facts.revision.type_name} with "
                     f"{facts.nominal_ram_mib} MiB: generic scaling")

    total = ram_budget_mib(model, facts.ram_mib)
    pinned = dict(profile.limits) if profile else {}
    if all(k in pinned for k in BUDGET_KEYS):
        total = pinned["agent_memory_mib"] + pinned["apps_memory_mib"]
    cgroup_mib = None if facts.cgroup_memory_bytes is None else facts.cgroup_memory_bytes // MIB
    if cgroup_mib is not None and cgroup_mib < total:
        # A cgroup limit caps the budget, it does not stand in for RAM: the agent's own
        # MemoryMax= (agent + apps) is such a limit, and must give back the same limits.
        notes.append(f"cgroup memory limit {cgroup_mib} MiB < budget {total} MiB: "
                     "memory-bound limits scaled to the cgroup limit")
        total = cgroup_mib
        pinned = {k: v for k, v in pinned.items() if k not in model.memory_keys}

    limits = scaled_limits(model, total, facts.cpus)
    limits.update(pinned)
    if facts.cgroup_cpu_percent is not None and facts.cgroup_cpu_percent < limits["cpu_quota_percent"]:
        notes.append(f"cgroup CPU quota {facts.cgroup_cpu_percent:g} % caps cpu_quota_percent")
        limits["cpu_quota_percent"] = max(1, int(facts.cgroup_cpu_percent))
    return Derivation(profile, limits, notes)
