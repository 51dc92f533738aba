"""Plain values (JSON, TOML, command-line text) checked against dataclass field annotations.

Configs are typed by whoever wrote them; a wrong type must be named where the file and key are
known, not surface as a `TypeError` deep inside training. Only the annotation forms vlpipe's
config dataclasses use are understood: bool, int, float, str, None, unions, tuples and dicts.
"""

from __future__ import annotations

import types
import typing
from typing import Any


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def matches(value: Any, expected: Any) -> bool:
    """Whether `value` fits the annotation `expected` (only the forms the config dataclasses use)."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if expected is Any:
        return True
    if expected is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in args)
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return _is_number(value)
    if expected is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args, strict=True))
    if origin is dict:
        return isinstance(value, dict) and all(matches(k, args[0]) and matches(v, args[1])
                                               for k, v in value.items())
    return True  # an annotation this checker does not know: leave it to `validate`


def describe(expected: Any, plural: bool = False) -> str:
    """`int` -> "an integer", `tuple[str, ...]` -> "a list of strings": the words of an error message."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    names = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
             str: ("a string", "strings"), type(None): ("null", "nulls")}
    if expected in names:
        return names[expected][plural]
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg, plural) for arg in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe(args[0], True)}"
        return f"a list of {len(args)} {describe(args[0], True)}"
    if origin is dict:
        if args[1] is Any:
            return "a table/object of settings"
        return f"a table/object mapping names to {describe(args[1], True)}"
    return str(expected)


def coerce(value: Any, expected: Any) -> Any:
    """A value that `matches` `expected`, in the field's own type: lists become tuples, ints floats."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if expected is float and not isinstance(value, bool) and isinstance(value, int):
        return float(value)
    if origin is tuple and isinstance(value, list | tuple):
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        return tuple(coerce(v, a) for v, a in zip(value, items, strict=True))
    return value
