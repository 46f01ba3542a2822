"""Dead letters: records that could not be decoded, kept where an operator can find them.

Each :class:`~beam_pixels.decode.DeadLetter` becomes one JSON file named by its
source table, poll group and position, so a replayed record (after a crash)
rewrites its file instead of adding another. The file holds the reason and the
raw ``RowRecord`` bytes (base64), enough to decode it again once the schema is
fixed.
"""

from __future__ import annotations

import base64
import json
import logging
import typing

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_pixels.metrics import SOURCE, table_namespace
from beam_pixels.storage import Location

_LOG = logging.getLogger(__name__)


class WriteDeadLetters(beam.PTransform):
    """Write each DeadLetter durably under ``location`` (outputs the paths written), or,
    with no location, only log and count it. In a job of several tables ``location`` maps
    each table's label to its location (``DeadLetter.table_label`` picks it)."""

    def __init__(self, location: str | None | typing.Mapping[str, str | None]):
        super().__init__()
        self._locations = dict(location) if isinstance(location, typing.Mapping) else {"": location}

    def expand(self, letters):
        return letters | "WriteDeadLetter" >> beam.ParDo(_WriteDeadLetterFn(self._locations))


class _WriteDeadLetterFn(beam.DoFn):
    def __init__(self, locations: typing.Mapping[str, str | None]):
        self._files = {label: Location(location) if location else None for label, location in locations.items()}
        self._written = {label: Metrics.counter(table_namespace(SOURCE, label), "dead_letters_written")
                         for label in locations}

    def process(self, letter):
        files = self._files[letter.table_label]
        if files is None:
            _LOG.error("undecodable record of %s at poll group %d position %d: %s",
                       letter.source_table, letter.poll_group, letter.position, letter.reason)
            return
        document = {
            "source_table": letter.source_table,
            "poll_group": letter.poll_group,
            "position": letter.position,
            "op": letter.op,
            "reason": letter.reason,
            "record_base64": base64.b64encode(letter.record).decode("ascii"),
        }
        relative = f"{letter.source_table}/group-{letter.poll_group:04d}/{letter.position:020d}.json"
        path = files.write(relative, json.dumps(document, indent=1).encode("utf-8"))
        self._written[letter.table_label].inc()
        _LOG.error("undecodable record of %s at poll group %d position %d (%s) written to %s",
                   letter.source_table, letter.poll_group, letter.position, letter.reason, path)
        yield path


def read_dead_letters(location: str, source_table: str) -> list[dict]:
    """The dead letters of ``source_table`` under ``location``, in (group, position) order."""
    files = Location(location)
    found = sorted(files.list(source_table, recursive=True), key=lambda info: info.path)
    return [json.loads(files.read(info.path)) for info in found if info.base_name.endswith(".json")]
