"""The Apache Iceberg sink: commit the change stream into an Iceberg table through pyiceberg.

:mod:`.writer` holds the table writer and ``WriteToIceberg``; :mod:`.merge_on_read`
and :mod:`.copy_on_write` the two ways a commit replaces keys; :mod:`.key_index`
finds stored keys without a scan; :mod:`.maintenance` keeps a long-running table
healthy; :mod:`._pyiceberg_private` holds every use of pyiceberg's private API.
"""

from beam_pixels.sinks.iceberg.writer import (
    DEFAULT_TABLE_PROPERTIES,
    WRITE_MODES,
    IcebergSchemaMismatch,
    IcebergTableWriter,
    WriteToIceberg,
)

__all__ = ["DEFAULT_TABLE_PROPERTIES", "WRITE_MODES", "IcebergSchemaMismatch", "IcebergTableWriter", "WriteToIceberg"]
