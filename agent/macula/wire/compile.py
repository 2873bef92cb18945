"""Per-message decoders generated from the schema (as dataclasses and attrs generate
their __init__): every simple field check is inlined, so validating a PUBLISH costs a
few type tests instead of a loop of validator calls on the hot path.

The generated code only decides pass or fail. On failure it calls the field's own
validator, so the error (code, field path, reason) is exactly the one the validator
gives; complex fields (lists, structs, maps, any) always go through their validator.
"""

from __future__ import annotations

from typing import Any, Callable

from macula.wire.fields import FieldError, Validator


def _inline(v: Validator, x: str) -> str | None:
    """A boolean expression that is True when ``x`` is valid, or None if not inlinable."""
    kind = getattr(v, "kind", None)
    p = getattr(v, "params", {})
    if kind == "int":
        return f"(type({x}) is int and {p['lo']} <= {x} <= {p['hi']})"
    if kind == "bool":
        return f"(type({x}) is bool)"
    if kind == "bytes":
        return f"(type({x}) is bytes and {p['min_len']} <= len({x}) <= {p['max_len']})"
    if kind == "str" and not p.get("pattern") and not p.get("choices"):
        return f"(type({x}) is str and {p['min_len']} <= len({x}) <= {p['max_len']})"
    if kind == "opt":
        inner = _inline(p["inner"], x)
        return None if inner is None else f"({x} is None or {inner})"
    return None  # patterns, choices, containers: their validator runs


def compile_decoder(cls: type, validators: tuple[tuple[str, Validator], ...], required: int,
                    defaults: tuple) -> Callable[[tuple, int], Any]:
    """``decode(fields, n)``: validate the n decoded fields and build the message."""
    total = len(validators)
    env: dict[str, Any] = {"_make": cls._make, "_defaults": defaults, "FieldError": FieldError}
    lines = ["def decode(f, n):"]
    indent = "    "
    for i, (_, v) in enumerate(validators):
        if i >= required:  # optional trailing fields: only those the sender sent
            lines.append(f"{indent}if n > {i}:")
            indent += "    "
        env[f"_v{i}"] = v
        lines.append(f"{indent}x = f[{i}]")
        expr = _inline(v, "x")
        if expr is None:
            lines.append(f"{indent}_check({i}, _v{i}, x)")
        else:
            lines.append(f"{indent}if not {expr}: _fail({i}, _v{i}, x)")
    lines.append("    if n == %d: return _make(f)" % total)
    lines.append("    return _make(f + _defaults[n - %d:])" % required)
    names = tuple(name for name, _ in validators)

    def _check(i: int, v: Validator, x: Any) -> None:
        try:
            v(x)
        except FieldError as exc:
            raise FieldError(exc.reason, names[i] + exc.path) from None

    def _fail(i: int, v: Validator, x: Any) -> None:
        _check(i, v, x)  # raises with the validator's own reason
        raise FieldError("value rejected", names[i])  # inline check and validator disagree

    env["_check"] = _check
    env["_fail"] = _fail
    exec("\n".join(lines), env)  # noqa: S102 - source built above from the schema only
    return env["decode"]
