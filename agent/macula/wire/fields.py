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


def _described(check: Validator, kind: str, **params: Any) -> Validator:
    """Record what ``check`` accepts (``kind`` and its parameters) on the function itself,
    so docs and test generators can read a schema without calling it. Costs nothing
    at check time."""
    check.kind = kind  # type: ignore[attr-defined]
    check.params = params  # type: ignore[attr-defined]
    return check


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
    return _described(check, "int", lo=lo, hi=hi)


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
    return _described(check, "float", lo=lo, hi=hi)


def Bool() -> Validator:
    def check(v: Any) -> None:
        if type(v) is not bool:
            raise FieldError(f"expected bool, got {type(v).__name__}")
    return _described(check, "bool")


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
    return _described(check, "str", max_len=max_len, min_len=min_len, pattern=pattern,
                      choices=tuple(sorted(allowed)) if allowed is not None else None)


def Bytes(max_len: int, min_len: int = 0) -> Validator:
    def check(v: Any) -> None:
        if type(v) is not bytes:
            raise FieldError(f"expected bytes, got {type(v).__name__}")
        if not min_len <= len(v) <= max_len:
            raise FieldError(f"length {len(v)} not in [{min_len}, {max_len}]")
    return _described(check, "bytes", max_len=max_len, min_len=min_len)


def Opt(inner: Validator) -> Validator:
    def check(v: Any) -> None:
        if v is not None:
            inner(v)
    return _described(check, "opt", inner=inner)


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
    return _described(check, "list", item=item, max_items=max_items, min_items=min_items)


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
    return _described(check, "struct", members=members)


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
    return _described(check, "map", key=key, value=value, max_items=max_items)


_SCALARS = (type(None), bool, int, float, str, bytes)


ANY_MAX_ITEMS = 65536  # elements in one `any` value: a 1 MiB frame of 1M tiny items
                       # would cost the node ~135 ms to validate (hardening issue)


def AnyValue(max_depth: int = 16, max_items: int = ANY_MAX_ITEMS) -> Validator:
    """Any plain msgpack value (no extension types), nested at most ``max_depth``, with
    at most ``max_items`` array elements and map entries in all (the decoder also caps
    each array and map at ``max_items`` before it builds them: wire.codec).

    Map keys must be str or bytes: the decoder refuses any other key (strict_map_key),
    so a value this accepts is one a peer can decode.
    """

    def walk(v: Any, depth: int, left: list[int]) -> None:
        t = type(v)
        if t in _SCALARS:
            return
        if depth >= max_depth:
            raise FieldError(f"nested deeper than {max_depth}")
        if t is tuple or t is list or t is dict:
            left[0] -= len(v)
            if left[0] < 0:
                raise FieldError(f"more than {max_items} elements")
        if t is tuple or t is list:
            for x in v:
                walk(x, depth + 1, left)
        elif t is dict:
            for k, x in v.items():
                if type(k) is not str and type(k) is not bytes:
                    raise FieldError(f"map key {type(k).__name__} is not str or bytes")
                walk(x, depth + 1, left)
        else:
            raise FieldError(f"{t.__name__} is not a plain msgpack value")

    def check(v: Any) -> None:
        walk(v, 0, [max_items])
    return _described(check, "any", max_depth=max_depth, max_items=max_items)


def max_container(v: Validator) -> int:
    """The most elements any one array or map may have in a value ``v`` accepts: the
    decoder refuses a longer one while unpacking, before it allocates it."""
    kind = getattr(v, "kind", None)
    p = getattr(v, "params", {})
    if kind == "list":
        return max(p["max_items"], max_container(p["item"]))
    if kind == "map":
        return max(p["max_items"], max_container(p["key"]), max_container(p["value"]))
    if kind == "struct":
        return max([len(p["members"])] + [max_container(m) for m in p["members"]])
    if kind == "opt":
        return max_container(p["inner"])
    if kind == "any":
        return p["max_items"]
    return 0
