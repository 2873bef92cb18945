"""systemd generator: writes the unit's MemoryMax=/CPUQuota= drop-in from the hardware
profile at every boot and daemon-reload.

Detecting at boot rather than in postinst matters for SBC images: the package is often
installed while the image is built (in a chroot, under qemu, on another machine), and a
card moves between boards. The drop-in goes to the generator's normal directory, so a
drop-in the admin writes in /etc/systemd/system/macula-agent.service.d/ overrides it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from macula.hw import detect, systemd_dropin
from macula.hw.report import DROPIN_NAME, UNIT


def write_dropin(unit_dir: Path, root: Path | str = "/") -> Path:
    target = unit_dir / f"{UNIT}.d" / DROPIN_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(systemd_dropin(detect(root)))
    return target


def main(argv: list[str] | None = None, root: Path | str = "/") -> int:
    # systemd passes the normal, early and late output directories.
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: macula-agent-generator NORMAL_DIR [EARLY_DIR LATE_DIR]", file=sys.stderr)
        return 2
    try:
        write_dropin(Path(args[0]), root)
    except Exception as exc:  # a failed generator must not hide why: say it, unit runs unlimited
        print(f"macula-agent-generator: no resource limits written: {exc!r}", file=sys.stderr)
        return 1
    return 0
