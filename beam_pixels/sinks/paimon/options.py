"""Typed values of a Paimon table's options (strings in its schema), in the manner of
pyiceberg's ``utils/properties.py``: a missing option gives its default, a bad one an
error naming the option, its value and what is accepted."""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping

_T = typing.TypeVar("_T")


def table_option(
    options: Mapping[str, str], name: str, default: _T, parse: Callable[[str], _T], valid: Callable[[_T], bool], accepted: str
) -> _T:
    """``parse`` of option ``name`` (stripped), which must be ``valid``; ``default`` when it is not set."""
    text = options.get(name)
    if text is None:
        return default
    try:
        value = parse(str(text).strip())
    except (ValueError, TypeError):
        value = None
    if value is None or not valid(value):
        raise ValueError(f"Paimon table option {name}={text!r} is not valid; accepted: {accepted}")
    return value


def int_option(options: Mapping[str, str], name: str, default: int, lowest: int) -> int:
    """An integer option of at least ``lowest``."""
    return table_option(options, name, default, int, lambda v: v >= lowest, f"an integer >= {lowest}")


def ratio_option(options: Mapping[str, str], name: str, default: float) -> float:
    """A share, in (0, 1]."""
    return table_option(options, name, default, float, lambda v: 0 < v <= 1, "a number in (0, 1]")
