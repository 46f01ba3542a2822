"""Rewrite the configuration reference in docs/configuration.md from beam_pixels.config.KEYS.

    python scripts/update_config_reference.py
"""

import pathlib

from beam_pixels.config import describe

REFERENCE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
START = "### Pixels server"
END = "Any `iceberg.catalog.<k>`"

text = REFERENCE.read_text(encoding="utf-8")
begin, end = text.index(START), text.index(END)
REFERENCE.write_text(text[:begin] + describe() + "\n\n" + text[end:], encoding="utf-8")
print(f"updated {REFERENCE}")
