"""Config values against annotations: what fits, how it is named in an error, what it becomes."""

from __future__ import annotations

from typing import Any

import pytest

from vlpipe.utils.typecheck import coerce, describe, matches


@pytest.mark.parametrize(("value", "hint", "fits"), [
    (3, int, True), (True, int, False), ("3", int, False),  # a bool is never a number
    (3, float, True), (2.5, float, True), (False, float, False),
    (None, int | None, True), ("x", int | None, False),
    ([1, 2], tuple[int, ...], True), ([1, "a"], tuple[int, ...], False), (5, tuple[int, ...], False),
    ([0.9, 0.99], tuple[float, float], True), ([0.9], tuple[float, float], False),
    ({"mlm": 1.0}, dict[str, float], True), ({"mlm": "1"}, dict[str, float], False),
    ("anything", Any, True),
])
def test_matches(value: Any, hint: Any, fits: bool) -> None:
    assert matches(value, hint) is fits


def test_describe_names_the_expected_form() -> None:
    assert describe(int) == "an integer" and describe(bool) == "true or false"
    assert describe(int | None) == "an integer or null"
    assert describe(tuple[str, ...]) == "a list of strings"
    assert describe(tuple[float, float]) == "a list of 2 numbers"
    assert describe(dict[str, float]) == "a table/object mapping names to numbers"


def test_coerce_gives_the_fields_own_types() -> None:
    assert coerce([1, 2, 3], tuple[int, ...]) == (1, 2, 3)
    assert coerce([0, 1, 0], tuple[float, float, float]) == (0.0, 1.0, 0.0)
    assert isinstance(coerce(2, float), float) and coerce(True, bool) is True
    assert coerce("gelu", str) == "gelu"
