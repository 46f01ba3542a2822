"""Lakehouse sinks: each takes the decoded change stream and commits it exactly once.

- :mod:`.committing`: the write transform every sink is (:class:`~.committing.WriteChanges`
  over a :class:`~.committing.TableWriter`), and :class:`~.committing.SinkConfigurationError`.
- :mod:`.iceberg`: ``WriteToIceberg`` and its table writer; :mod:`.paimon`: ``WriteToPaimon``.
- :mod:`.key_index`: where each stored key is, and the process's one cache of key indexes,
  shared by both sinks' merge-on-read commits.

:func:`sink_for` picks the sink ``sink.type`` names, as Beam's ``WriteToBigQuery``
picks its write method; ``beam-pixels run`` and ``pipelines/pixels_to_lakehouse.py`` use it.
"""

from __future__ import annotations

import typing

if typing.TYPE_CHECKING:
    from beam_pixels.sinks.committing import WriteChanges


def sink_for(config, window_ms: int | None = None) -> WriteChanges:
    """``WriteToIceberg`` or ``WriteToPaimon``, as ``config.sink_type`` (a
    :class:`~beam_pixels.config.PixelsConfig`) says, built by its ``from_config``."""
    if config.sink_type == "paimon":
        from beam_pixels.sinks.paimon import WriteToPaimon

        return WriteToPaimon.from_config(config, window_ms)
    from beam_pixels.sinks.iceberg import WriteToIceberg

    return WriteToIceberg.from_config(config, window_ms)
