"""First-boot configuration: /boot/firmware/macula.toml, dropped on the card's FAT boot
partition before the first boot (as Raspberry Pi OS takes its first-boot settings), is
checked and moved to /etc/macula/agent.toml once. Run as root by
macula-agent-firstboot.service before the agent starts.

An invalid file is renamed macula.toml.invalid and the installed config is kept, so a
typo cannot leave a headless board without a working agent.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

from macula.config import DEFAULT_PATH, load_config
from macula.errors import ConfigError
from macula.hw import detect_limits

BOOT_CONFIG = Path("/boot/firmware/macula.toml")
log = logging.getLogger(__name__)


def apply_boot_config(source: Path = BOOT_CONFIG, dest: Path = DEFAULT_PATH) -> str:
    """Returns 'absent', 'invalid' or 'applied'."""
    if not source.is_file():
        return "absent"
    try:
        load_config(source, env={}, limits=detect_limits()[1])
    except ConfigError as exc:
        rejected = source.with_name(source.name + ".invalid")
        os.replace(source, rejected)
        log.error("%s is invalid, kept %s and moved it to %s: %s", source, dest, rejected, exc)
        return "invalid"
    data = source.read_bytes()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".agent.toml.")
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dest)
    source.unlink()
    # The boot partition is FAT and often pulled without a clean shutdown.
    dir_fd = os.open(source.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    log.info("applied first-boot config %s to %s", source, dest)
    return "applied"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = sys.argv[1:] if argv is None else argv
    source = Path(args[0]) if args else BOOT_CONFIG
    dest = Path(args[1]) if len(args) > 1 else DEFAULT_PATH
    return 1 if apply_boot_config(source, dest) == "invalid" else 0
