"""Logging setup for the CLI: plain stderr lines (journald integration comes with the service)."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if level.lower() != "debug":
        logging.getLogger("asyncio").setLevel(logging.WARNING)
