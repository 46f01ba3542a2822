"""Reading ``pixels-client.properties`` files (Java properties syntax) and ``--set key=value`` overrides."""

from __future__ import annotations

import os
import re
from pathlib import Path

import jproperties

from beam_pixels.config.validators import invalid
from beam_pixels.errors import ConfigError


_LINE_BREAK = re.compile(r"(\r\n|\r|\n)")


def _blank_comments(text: str) -> str:
    """Blank out comment lines.

    jproperties reads ``#:`` comments as metadata and rejects some (``#:`` alone),
    where Java ignores every comment; a comment carries nothing, so drop its text.
    """
    parts = _LINE_BREAK.split(text)
    continued = False
    for i in range(0, len(parts), 2):
        line = parts[i]
        comment = not continued and line.lstrip(" \t\f")[:1] in ("#", "!")
        if comment:
            parts[i] = ""
        continued = not comment and (len(line) - len(line.rstrip("\\"))) % 2 == 1
    return "".join(parts)


def load_properties(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a Java ``.properties`` file into a dict.

    The file is read as UTF-8 (a byte-order mark is dropped), or as ISO-8859-1
    when it is not valid UTF-8, as Java 9+ resource bundles do.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read properties file {os.fspath(path)!r}: {e.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("iso-8859-1")
    props = jproperties.Properties()
    try:
        props.load(_blank_comments(text))
    except jproperties.ParseError as e:
        line = _LINE_BREAK.split(text)[2 * (e.line_number - 1)] if e.line_number else ""
        raise ConfigError(
            f"{os.fspath(path)} line {e.line_number}: {line!r} is not valid ({e.message}); "
            "accepted: Java properties syntax, \\uXXXX escapes with four hex digits"
        ) from None
    return dict(props.properties)


def parse_override(text: str) -> tuple[str, str]:
    """Split a ``--set key=value`` argument."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise invalid("--set", text, "key=value, e.g. --set pixels.server.port=9091", "no key=value")
    return key.strip(), value
