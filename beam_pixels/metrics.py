"""The Beam metric namespaces of a job: ``beam_pixels.source`` (polling and decoding) and
``beam_pixels.sink`` (writing and committing), one per table in a job of several tables.

A job of several tables (``tables=...``) polls, decodes and commits them all in one set of
steps, so a metric names its table in its namespace: ``beam_pixels.source.orders`` counts the
records of table ``orders``. A job of one table keeps the plain namespaces.
"""

from __future__ import annotations

SOURCE = "beam_pixels.source"
SINK = "beam_pixels.sink"


def table_namespace(namespace: str, table_label: str) -> str:
    """``namespace`` of the table named ``table_label`` in ``tables`` (``""``: the job's only table)."""
    return f"{namespace}.{table_label}" if table_label else namespace
