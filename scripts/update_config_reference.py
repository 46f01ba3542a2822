"""Rewrite the README's configuration reference from beam_pixels.config.KEYS.

    python scripts/update_config_reference.py
"""

import pathlib

from beam_pixels.config import describe

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
START = "### Pixels server"
END = "Any `iceberg.catalog.<k>`"

text = README.read_text(encoding="utf-8")
begin, end = text.index(START), text.index(END)
README.write_text(text[:begin] + describe() + "\n\n" + text[end:], encoding="utf-8")
print(f"updated {README}")
