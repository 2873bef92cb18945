"""Trust on first use: the first identity key seen for a (realm, node name) is pinned.

A later connection that claims the same name with another key is refused with
PEER_KEY_CHANGED until an operator runs `macula keys forget NAME`. The store is
bounded: when full, the pin seen least recently is dropped (an attacker cannot grow
the file, only push out stale pins). Writes are atomic.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from macula.errors import ErrorCode, SessionRefused, StateError
from macula.identity.files import write_atomic

TOFU_FILE = "known_peers.json"


class TofuStore:
    def __init__(self, path: Path | None, capacity: int,
                 wall_clock: Callable[[], float] = time.time) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.path = Path(path) if path is not None else None
        self.capacity = capacity
        self._wall = wall_clock
        # "realm/name" -> {"key": hex, "first_seen": t, "last_seen": t}; LRU order
        self._pins: OrderedDict[str, dict] = OrderedDict()
        if self.path is not None and self.path.exists():
            self._load()

    def __len__(self) -> int:
        return len(self._pins)

    def _load(self) -> None:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text())
            pins = data["peers"]
            entries = sorted(pins.items(), key=lambda kv: kv[1]["last_seen"])
            for name, pin in entries[-self.capacity:]:
                bytes.fromhex(pin["key"])
                self._pins[name] = {"key": pin["key"], "first_seen": float(pin["first_seen"]),
                                    "last_seen": float(pin["last_seen"])}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateError(f"pinned-peer store {self.path} is unreadable ({exc}); "
                             f"move it away to start pinning afresh") from None

    def _save(self) -> None:
        if self.path is None:
            return
        body = json.dumps({"version": 1, "peers": self._pins}, indent=1, sort_keys=True)
        write_atomic(self.path, body.encode(), 0o600)

    def check_and_pin(self, realm: str, name: str, identity_key: bytes) -> bool:
        """Raise SessionRefused if ``name`` is pinned to another key; pin it if new.

        Returns True when a new pin was made.
        """
        label = f"{realm}/{name}"
        key_hex = identity_key.hex()
        now = self._wall()
        pin = self._pins.get(label)
        if pin is not None:
            if pin["key"] != key_hex:
                since = time.strftime("%Y-%m-%d %H:%M", time.gmtime(pin["first_seen"]))
                raise SessionRefused(
                    f"peer {name!r} presented identity key {key_hex[:16]}... but it is pinned to "
                    f"{pin['key'][:16]}... since {since} UTC; if the node was reinstalled, run "
                    f"'macula keys forget {name}'", code=ErrorCode.PEER_KEY_CHANGED)
            pin["last_seen"] = now
            self._pins.move_to_end(label)
            return False
        self._pins[label] = {"key": key_hex, "first_seen": now, "last_seen": now}
        while len(self._pins) > self.capacity:
            self._pins.popitem(last=False)
        self._save()
        return True

    def forget(self, name: str, realm: str | None = None) -> int:
        labels = [lb for lb in self._pins
                  if lb.split("/", 1)[1] == name and (realm is None or lb.split("/", 1)[0] == realm)]
        for lb in labels:
            del self._pins[lb]
        if labels:
            self._save()
        return len(labels)

    def entries(self) -> list[tuple[str, str, float, float]]:
        return [(label, p["key"], p["first_seen"], p["last_seen"]) for label, p in self._pins.items()]
