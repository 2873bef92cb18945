"""Field validators for message schemas.

A validator is a callable ``v(value) -> None`` that raises FieldError when the
decoded msgpack value is not what the schema says. They check exact types (a bool is
not an int, a str is not bytes), lengths and ranges, and are plain closures so a
check costs a function call and an isinstance, not a framework.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable

Validator = Callable[[Any], None]


class FieldError(ValueError):
    """A value does not match its schema. ``path`` says where (e.g. ``nodes[3][1]``)."""

    def __init__(self, reason: str, path: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path

    def at(self, segment: str) -> "FieldError":
        self.path = segment + self.path
        return self

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


def Int(lo: int, hi: int) -> Validator:
    def check(v: Any) -> None:
        if type(v) is not int:
            raise FieldError(f"expected int, got {type(v).__name__}")
        if v < lo or v > hi:
            raise FieldError(f"{v} out of range [{lo}, {hi}]")
    return check


U8 = Int(0, 0xFF)
U16 = Int(0, 0xFFFF)
U32 = Int(0, 0xFFFF_FFFF)
U64 = Int(0, 0xFFFF_FFFF_FFFF_FFFF)


def Float(lo: float = float("-inf"), hi: float = float("inf")) -> Validator:
    def check(v: Any) -> None:
        t = type(v)
        if t is not float and t is not int:
            raise FieldError(f"expected number, got {t.__name__}")
        if not lo <= v <= hi:  # also rejects NaN
            raise FieldError(f"{v} out of range [{lo}, {hi}]")
    return check


def Bool() -> Validator:
    def check(v: Any) -> None:
        if type(v) is not bool:
            raise FieldError(f"expected bool, got {type(v).__name__}")
    return check


def Str(max_len: int, min_len: int = 0, pattern: str | None = None,
        choices: Iterable[str] | None = None) -> Validator:
    regex = re.compile(pattern) if pattern else None
    allowed = frozenset(choices) if choices is not None else None

    def check(v: Any) -> None:
        if type(v) is not str:
            raise FieldError(f"expected str, got {type(v).__name__}")
        if not min_len <= len(v) <= max_len:
            raise FieldError(f"length {len(v)} not in [{min_len}, {max_len}]")
        if regex is not None and regex.fullmatch(v) is None:
            raise FieldError(f"{v[:40]!r} does not match {regex.pattern}")
        if allowed is not None and v not in allowed:
            raise FieldError(f"{v[:40]!r} not one of {sorted(allowed)}")
    return check


def Bytes(max_len: int, min_len: int = 0) -> Validator:
    def check(v: Any) -> None:
        if type(v) is not bytes:
            raise FieldError(f"expected bytes, got {type(v).__name__}")
        if not min_len <= len(v) <= max_len:
            raise FieldError(f"length {len(v)} not in [{min_len}, {max_len}]")
    return check


def Opt(inner: Validator) -> Validator:
    def check(v: Any) -> None:
        if v is not None:
            inner(v)
    return check


def ListOf(item: Validator, max_items: int, min_items: int = 0) -> Validator:
    def check(v: Any) -> None:
        if type(v) is not tuple and type(v) is not list:
            raise FieldError(f"expected array, got {type(v).__name__}")
        if not min_items <= len(v) <= max_items:
            raise FieldError(f"{len(v)} items not in [{min_items}, {max_items}]")
        for i, x in enumerate(v):
            try:
                item(x)
            except FieldError as e:
                raise e.at(f"[{i}]") from None
    return check


def Struct(*members: Validator) -> Validator:
    """A fixed-length array whose positions have their own validators."""
    n = len(members)

    def check(v: Any) -> None:
        if type(v) is not tuple and type(v) is not list:
            raise FieldError(f"expected array, got {type(v).__name__}")
        if len(v) != n:
            raise FieldError(f"expected {n} items, got {len(v)}")
        for i, (m, x) in enumerate(zip(members, v)):
            try:
                m(x)
            except FieldError as e:
                raise e.at(f"[{i}]") from None
    return check


def MapOf(key: Validator, value: Validator, max_items: int) -> Validator:
    def check(v: Any) -> None:
        if type(v) is not dict:
            raise FieldError(f"expected map, got {type(v).__name__}")
        if len(v) > max_items:
            raise FieldError(f"{len(v)} entries > {max_items}")
        for k, x in v.items():
            try:
                key(k)
                value(x)
            except FieldError as e:
                raise e.at(f"[{str(k)[:20]!r}]") from None
    return check


_SCALARS = (type(None), bool, int, float, str, bytes)


def AnyValue(max_depth: int = 16) -> Validator:
    """Any plain msgpack value (no extension types), nested at most ``max_depth``."""

    def walk(v: Any, depth: int) -> None:
        t = type(v)
        if t in _SCALARS:
            return
        if depth >= max_depth:
            raise FieldError(f"nested deeper than {max_depth}")
        if t is tuple or t is list:
            for x in v:
                walk(x, depth + 1)
        elif t is dict:
            for k, x in v.items():
                walk(k, depth + 1)
                walk(x, depth + 1)
        else:
            raise FieldError(f"{t.__name__} is not a plain msgpack value")

    def check(v: Any) -> None:
        walk(v, 0)
    return check
