"""What a sans-IO core has produced and not yet handed over: messages to send and
events, drained by the edge (or the simulator) after every input."""

from __future__ import annotations

from collections import deque
from typing import Any

_EMPTY: tuple = ()


class CoreOutputs:
    """The output half of the core shape (docs/ARCHITECTURE.md): ``out`` and ``events``
    are appended to by the core; ``messages_to_send`` / ``next_event`` drain them. An
    edge on a hot path may test ``out`` / ``events`` before calling."""

    def __init__(self) -> None:
        self.out: list = []
        self.events: deque[Any] = deque()

    def messages_to_send(self) -> list | tuple:
        out = self.out
        if not out:
            return _EMPTY   # nothing: no new list per input
        self.out = []
        return out

    def next_event(self) -> Any:
        return self.events.popleft() if self.events else None
