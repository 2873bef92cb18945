"""Field validators: exact types, bounds, nesting, error paths and their descriptions."""

import math

import msgpack
import pytest

from macula.wire.fields import (
    U8, U16, U32, U64, AnyValue, Bool, Bytes, FieldError, Float, Int, ListOf, MapOf, Opt, Str,
    Struct,
)
from macula.wire.messages import NAME_PATTERN, REGISTRY


def accepts(check, value) -> bool:
    try:
        check(value)
    except FieldError:
        return False
    return True


@pytest.mark.parametrize("check,lo,hi", [(U8, 0, 0xFF), (U16, 0, 0xFFFF), (U32, 0, 2**32 - 1),
                                         (U64, 0, 2**64 - 1), (Int(-5, 5), -5, 5)])
def test_int_bounds_are_inclusive(check, lo, hi):
    assert accepts(check, lo) and accepts(check, hi)
    assert not accepts(check, lo - 1) and not accepts(check, hi + 1)


def test_int_refuses_bool_float_and_str():
    for value in (True, False, 1.0, "1", b"\x01", None):
        assert not accepts(U32, value), value


def test_float_accepts_ints_refuses_nan_bool_and_out_of_range():
    check = Float(0.0, 10.0)
    assert accepts(check, 0) and accepts(check, 10.0) and accepts(check, 2.5)
    for value in (math.nan, -0.1, 10.5, True, "1.0", math.inf):
        assert not accepts(check, value), value
    assert accepts(Float(), -math.inf)


def test_bool_is_exact():
    assert accepts(Bool(), True) and accepts(Bool(), False)
    assert not accepts(Bool(), 0) and not accepts(Bool(), 1) and not accepts(Bool(), None)


def test_str_length_pattern_and_choices():
    check = Str(4, 2)
    assert accepts(check, "ab") and accepts(check, "abcd")
    assert not accepts(check, "a") and not accepts(check, "abcde")
    assert not accepts(check, b"ab"), "bytes are not str"
    name = Str(64, 1, pattern=NAME_PATTERN)
    assert accepts(name, "a" * 64) and accepts(name, "n0de_1.x-y")
    for bad in ("a" * 65, "-lead", ".lead", "has space", "slash/no", "", "é"):
        assert not accepts(name, bad), bad
    role = Str(8, choices=("node", "client"))
    assert accepts(role, "client") and not accepts(role, "admin")


def test_bytes_length_and_type():
    check = Bytes(32, 32)
    assert accepts(check, b"\0" * 32)
    assert not accepts(check, b"\0" * 31) and not accepts(check, b"\0" * 33)
    assert not accepts(check, "x" * 32) and not accepts(check, bytearray(32))


def test_opt_allows_none_and_checks_the_rest():
    check = Opt(U8)
    assert accepts(check, None) and accepts(check, 7)
    assert not accepts(check, 256)


def test_list_bounds_and_error_path():
    check = ListOf(U8, 3, 1)
    assert accepts(check, (1,)) and accepts(check, [1, 2, 3])
    assert not accepts(check, ()) and not accepts(check, (1, 2, 3, 4))
    assert not accepts(check, {1: 2}) and not accepts(check, b"\x01")
    with pytest.raises(FieldError) as info:
        check((1, 2, 300))
    assert info.value.path == "[2]"
    assert str(info.value).startswith("[2]: ")


def test_struct_length_and_nested_path():
    check = ListOf(Struct(Bytes(2, 2), U16), 4)
    assert accepts(check, ((b"ab", 1), (b"cd", 65535)))
    assert not accepts(check, ((b"ab", 1, 2),))
    assert not accepts(check, ((b"ab",),))
    with pytest.raises(FieldError) as info:
        check(((b"ab", 1), (b"cd", -1)))
    assert info.value.path == "[1][1]"


def test_map_bounds_and_key_checks():
    check = MapOf(Str(4, 1), U8, 2)
    assert accepts(check, {"a": 1, "b": 2})
    assert not accepts(check, {"a": 1, "b": 2, "c": 3})
    assert not accepts(check, {"": 1}) and not accepts(check, {"a": 300})
    assert not accepts(check, (("a", 1),))
    with pytest.raises(FieldError) as info:
        check({"k": -1})
    assert "'k'" in info.value.path


def nested(depth: int):
    value: tuple = ()
    for _ in range(depth - 1):
        value = (value,)
    return value


def test_any_value_depth_bound():
    check = AnyValue(max_depth=16)
    assert accepts(check, nested(16))
    assert not accepts(check, nested(17))
    assert accepts(check, {"a": [1, 2.5, None, True, "s", b"b", {"b": ()}]})


def test_any_value_refuses_extension_types_and_non_string_keys():
    check = AnyValue()
    assert not accepts(check, msgpack.ExtType(1, b"x"))
    assert not accepts(check, (set(),))
    # the decoder refuses these keys (strict_map_key), so the validator must too
    assert not accepts(check, {1: "x"})
    assert not accepts(check, {(1,): "x"})
    assert accepts(check, {b"k": "x", "k": 1})


def test_every_registered_field_describes_itself():
    """Docs and the property tests read ``kind``/``params``; every field needs them."""
    kinds = {"int", "float", "bool", "str", "bytes", "opt", "list", "struct", "map", "any"}

    def walk(check):
        assert check.kind in kinds
        for value in check.params.values():
            if callable(value):
                walk(value)
            elif isinstance(value, tuple) and value and callable(value[0]):
                for member in value:
                    walk(member)

    for spec in REGISTRY.values():
        for _, check in spec.validators:
            walk(check)
