"""Value parsers: each turns one stripped string into a typed value and says what it accepts.

A parser raises :class:`Rejected` with what is wrong; the caller (:class:`~.settings.PixelsConfig`)
adds the key and the value (:func:`invalid`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


from beam_pixels.errors import ConfigError
from beam_pixels.schema import SchemaError, SourceSchema


def invalid(key: str, value: str, accepted: str, problem: str = "") -> ConfigError:
    why = f" ({problem})" if problem else ""
    return ConfigError(f"{key}={value!r} is not valid{why}; accepted: {accepted}")


class Rejected(Exception):
    """Raised by a value parser with what is wrong; the caller adds the key and the value."""


class Parser(Protocol):
    accepted: str

    def __call__(self, text: str) -> Any: ...


_INT_RE = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class Int:
    lo: int
    hi: int | None = None

    @property
    def accepted(self) -> str:
        return f"an integer in {self.lo}..{self.hi}" if self.hi is not None else f"an integer >= {self.lo}"

    def __call__(self, text: str) -> int:
        if not _INT_RE.fullmatch(text):
            raise Rejected("not an integer")
        n = int(text)
        if n < self.lo or (self.hi is not None and n > self.hi):
            raise Rejected("out of range")
        return n


@dataclass(frozen=True)
class OptionalInt:
    lo: int

    @property
    def accepted(self) -> str:
        return f"empty or an integer >= {self.lo}"

    def __call__(self, text: str) -> int | None:
        return Int(self.lo)(text) if text else None


_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


@dataclass(frozen=True)
class Bool:
    accepted: str = "true, false, yes, no, 1 or 0 (any case)"

    def __call__(self, text: str) -> bool:
        try:
            return _BOOLEANS[text.lower()]
        except KeyError:
            raise Rejected("not a boolean") from None


@dataclass(frozen=True)
class Choice:
    """One of ``choices`` (any case); ``aliases`` map to a choice, ``refused`` values get a reason."""

    choices: tuple[str, ...]
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
    refused: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def accepted(self) -> str:
        names = [*self.choices, *(f"{a} (= {c})" for a, c in self.aliases.items())]
        return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names) + ", any case"

    def __call__(self, text: str) -> str:
        word = text.lower()
        if word in self.refused:
            raise Rejected(self.refused[word])
        word = self.aliases.get(word, word)
        if word not in self.choices:
            raise Rejected("unknown choice")
        return word


@dataclass(frozen=True)
class Text:
    accepted: str = "a non-empty string"

    def __call__(self, text: str) -> str:
        if not text:
            raise Rejected("empty")
        return text


_PART = r"[A-Za-z0-9_-]+"


@dataclass(frozen=True)
class Name:
    """A catalog identifier; ``qualified`` also allows one ``db.`` prefix."""

    qualified: bool

    @property
    def accepted(self) -> str:
        base = "letters, digits, '_' and '-'"
        return f"{base}, with at most one 'db.' prefix" if self.qualified else base

    def __call__(self, text: str) -> str:
        pattern = rf"(?:{_PART}\.)?{_PART}" if self.qualified else _PART
        if not re.fullmatch(pattern, text):
            raise Rejected("not a valid name")
        return text


@dataclass(frozen=True)
class Names:
    """Comma-separated distinct names (letters, digits, '_' and '-'); empty = none."""

    accepted: str = "empty, or comma-separated distinct names of letters, digits, '_' and '-'"

    def __call__(self, text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(",")) if text.strip() else ()
        bad = next((n for n in names if not re.fullmatch(_PART, n)), None)
        if bad is not None:
            raise Rejected(f"{bad!r} is not a valid name")
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice is not None:
            raise Rejected(f"{twice!r} is named twice")
        return names


def _absolute(path: str) -> str:
    """``path`` made absolute against the current directory, so the value means the same on every worker."""
    return os.path.abspath(os.path.expanduser(path))


@dataclass(frozen=True)
class ExistingFile:
    """An optional path of an existing file (empty = None), made absolute."""

    accepted: str = "the path of an existing file, or empty"

    def __call__(self, text: str) -> Path | None:
        if not text:
            return None
        path = Path(_absolute(text))
        if not path.is_file():
            raise Rejected("no such file")
        return path


LOCATION_OFF = "off"

_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")


@dataclass(frozen=True)
class Warehouse:
    accepted: str = (
        "a URI such as s3://bucket/path or file:///abs/path, or a local path "
        "(a relative path is resolved against the current directory)"
    )

    def __call__(self, text: str) -> str:
        if not text:
            raise Rejected("empty")
        if _URI_RE.match(text):
            return text
        return "file://" + _absolute(text)


@dataclass(frozen=True)
class OptionalLocation:
    """Empty (automatic), ``off``, or a location like a warehouse."""

    accepted: str = "empty (automatic), off, or a directory path or URI such as s3://bucket/path"

    def __call__(self, text: str) -> str:
        if not text or text.lower() == LOCATION_OFF:
            return text.lower()
        return Warehouse()(text)


@dataclass(frozen=True)
class Buckets:
    """Bucket numbers as lists and ranges (``0-127``, ``0,3,5-9``); empty = every bucket (an empty tuple)."""

    accepted: str = "bucket numbers and ranges such as 0-127 or 0,3,5-9, each bucket once, or empty for all"

    def __call__(self, text: str) -> tuple[int, ...]:
        buckets: list[int] = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            m = re.fullmatch(r"([0-9]+)(?:\s*-\s*([0-9]+))?", item)
            if not m:
                raise Rejected(f"{item!r} is not a bucket number or range")
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if hi < lo:
                raise Rejected(f"range {item!r} runs backwards")
            buckets.extend(range(lo, hi + 1))
        duplicates = sorted({b for b in buckets if buckets.count(b) > 1})
        if duplicates:
            raise Rejected(f"bucket {duplicates[0]} is listed twice")
        return tuple(buckets)


@dataclass(frozen=True)
class Schema:
    accepted: str = "comma-separated name:TYPE columns, e.g. id:BIGINT,name:STRING,price:DECIMAL(10,2)"

    def __call__(self, text: str) -> SourceSchema:
        try:
            return SourceSchema.parse(text)
        except SchemaError as e:
            raise Rejected(str(e)) from None


@dataclass(frozen=True)
class Columns:
    accepted: str = "comma-separated column names of source.schema, or empty for no key"

    def __call__(self, text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(",")) if text else ()
        if "" in names:
            raise Rejected("empty column name")
        return names


@dataclass(frozen=True)
class PartitionSpec:
    """An Iceberg partition spec such as ``day(ts),bucket(16,id)`` (empty = unpartitioned);
    its columns are checked against ``source.schema`` with the other keys."""

    accepted: str = "empty (unpartitioned), or " + (
        "comma-separated terms: col, year(col), month(col), day(col), hour(col), bucket(N,col), truncate(W,col)"
    )

    def __call__(self, text: str) -> tuple:
        from beam_pixels.sinks.iceberg.partitioning import PartitionSpecError, parse_spec

        try:
            return parse_spec(text) if text else ()
        except PartitionSpecError as e:
            raise Rejected(str(e)) from None
