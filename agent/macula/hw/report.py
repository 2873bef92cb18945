"""`macula hw`: what was detected, which profile applies, every limit; and the systemd drop-in."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from macula.hw.probe import MIB, Facts, probe
from macula.hw.profiles import Derivation, derive, estimate_agent_mib, load_profiles

UNIT = "macula-agent.service"
DROPIN_NAME = "50-hw-limits.conf"


@dataclass(frozen=True)
class Detection:
    facts: Facts
    derivation: Derivation

    @property
    def memory_max_mib(self) -> int:
        """The unit's MemoryMax=: deployed apps run in the agent's cgroup, so it holds both."""
        lim = self.derivation.limits
        return lim["agent_memory_mib"] + lim["apps_memory_mib"]

    def warnings(self) -> list[str]:
        out = []
        if self.facts.memory_controller is False:
            out.append("the memory cgroup controller is disabled (Raspberry Pi kernels boot with "
                       "cgroup_disable=memory), so MemoryMax= is not enforced; the agent's own "
                       "bounds still hold. See docs/DEPLOYMENT.md, troubleshooting.")
        estimate = estimate_agent_mib(self.derivation.limits)
        if estimate > self.derivation.limits["agent_memory_mib"]:
            out.append(f"estimated agent memory at the bounds, {estimate:.0f} MiB, exceeds its "
                       f"budget of {self.derivation.limits['agent_memory_mib']} MiB")
        return out


def detect(root: Path | str = "/") -> Detection:
    facts = probe(root)
    model, boards = load_profiles()
    return Detection(facts, derive(facts, model, boards))


def systemd_dropin(detection: Detection | None = None) -> str:
    """The [Service] drop-in with MemoryMax= and CPUQuota= (`macula hw --systemd-dropin`)."""
    detection = detect() if detection is None else detection
    lim = detection.derivation.limits
    return (f"# Written at boot by macula-agent's systemd generator from hardware profile "
            f"{detection.derivation.profile_name!r}\n"
            f"# (see `macula hw`). Override with `systemctl edit {UNIT}`.\n"
            "[Service]\n"
            f"MemoryMax={detection.memory_max_mib}M\n"
            f"CPUQuota={lim['cpu_quota_percent']}%\n")


def report_data(detection: Detection) -> dict[str, Any]:
    facts, der = detection.facts, detection.derivation
    rev = facts.revision
    return {
        "board": {
            "model": facts.model or None,
            "revision": None if rev is None else f"{rev.code:06x}",
            "type": None if rev is None else rev.type_name,
            "processor": None if rev is None else rev.processor,
            "nominal_ram_mib": facts.nominal_ram_mib,
        },
        "ram_mib": facts.ram_mib,
        "cpus": facts.cpus,
        "cgroup_memory_mib": None if facts.cgroup_memory_bytes is None
        else facts.cgroup_memory_bytes // MIB,
        "cgroup_cpu_percent": facts.cgroup_cpu_percent,
        "memory_controller": facts.memory_controller,
        "profile": der.profile_name,
        "profile_file": None if der.profile is None else str(der.profile.path),
        "limits": der.limits,
        "estimated_agent_mib": round(estimate_agent_mib(der.limits), 1),
        "systemd": {"MemoryMax": f"{detection.memory_max_mib}M",
                    "CPUQuota": f"{der.limits['cpu_quota_percent']}%"},
        "notes": der.notes,
        "warnings": detection.warnings(),
    }


def render_text(data: dict[str, Any]) -> str:
    board = data["board"]
    if board["revision"]:
        board_line = (f"{board['model'] or 'Raspberry Pi'} (revision {board['revision']}: "
                      f"{board['type']}, {board['processor']}, {board['nominal_ram_mib']} MiB)")
    else:
        board_line = board["model"] or "no board model (not a device-tree machine)"
    cgroup_mem = "none" if data["cgroup_memory_mib"] is None else f"{data['cgroup_memory_mib']} MiB"
    cgroup_cpu = "none" if data["cgroup_cpu_percent"] is None else f"{data['cgroup_cpu_percent']:g} %"
    controller = {True: "enabled", False: "DISABLED", None: "unknown"}[data["memory_controller"]]
    lines = [
        f"board:    {board_line}",
        f"memory:   {data['ram_mib']} MiB RAM; cgroup limit {cgroup_mem}; "
        f"memory controller {controller}",
        f"cpus:     {data['cpus']}; cgroup quota {cgroup_cpu}",
        f"profile:  {data['profile']}" + (f" ({data['profile_file']})" if data["profile_file"] else ""),
        f"systemd:  MemoryMax={data['systemd']['MemoryMax']} CPUQuota={data['systemd']['CPUQuota']}",
        f"estimate: agent {data['estimated_agent_mib']:g} MiB at its bounds, budget "
        f"{data['limits']['agent_memory_mib']} MiB",
        "limits:",
    ]
    width = max(len(k) for k in data["limits"])
    lines += [f"  {k:<{width}}  {v}" for k, v in data["limits"].items()]
    lines += [f"note:     {n}" for n in data["notes"]]
    lines += [f"WARNING:  {w}" for w in data["warnings"]]
    return "\n".join(lines)


def hw_report(as_json: bool = False, root: Path | str = "/") -> str:
    data = report_data(detect(root))
    return json.dumps(data, indent=2) if as_json else render_text(data)
