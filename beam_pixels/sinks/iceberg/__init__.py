"""The Apache Iceberg sink: commit the change stream into an Iceberg table through pyiceberg.

- :mod:`.writer`: the table writer and ``WriteToIceberg`` (checkpoints, schema checks).
- :mod:`.merge_on_read`: commits that delete replaced rows by position (the default),
  finding them with the shared :mod:`beam_pixels.sinks.key_index`.
- :mod:`.copy_on_write`: commits that rewrite the data files holding touched keys.
- :mod:`.files`: writing data files in row order and position-delete files.
- :mod:`.maintenance`: keeping a long-running table healthy (expiration, compaction, orphans).
- :mod:`._pyiceberg_private`: every use of pyiceberg's private or undocumented API.
"""

from beam_pixels.sinks.iceberg.writer import (
    DEFAULT_TABLE_PROPERTIES,
    WRITE_MODES,
    IcebergSchemaMismatch,
    IcebergTableWriter,
    WriteToIceberg,
)

__all__ = ["DEFAULT_TABLE_PROPERTIES", "WRITE_MODES", "IcebergSchemaMismatch", "IcebergTableWriter", "WriteToIceberg"]
