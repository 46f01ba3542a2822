"""Apache Paimon sink: commit the change stream to a Paimon table exactly once, and keep
the table healthy under a stream that never ends.

- :mod:`.writer`: :class:`WriteToPaimon` and the table writer (commits, checkpoints).
- :mod:`.merge_on_read`: deletion-vector commits (the stored rows of touched keys marked deleted).
- :mod:`.deletion_vectors`: where each live key is (its entry in the shared key-index cache)
  and each bucket's deletion vectors.
- :mod:`.compaction`: bucket compaction between commits (Paimon's universal compaction).
- :mod:`.dv_compaction`: compaction of deletion-vector tables (tiered merges, delete-ratio rewrites).
- :mod:`.append_compaction`: small-file compaction of append (changelog) tables.
- :mod:`.expiration`: snapshot expiration by the table's retention options.
- :mod:`.maintenance`: one maintenance pass after a commit, its log line and metrics.
- :mod:`.background`: the committer's maintenance passes, run one at a time in the background.
- :mod:`.options`: typed, checked values of the table's options.
- :mod:`.bucketing`: Paimon's fixed bucket hash on whole columns.
- :mod:`._pypaimon_private`: every use of pypaimon's private API.
"""

from beam_pixels.sinks.paimon.bucketing import bucket_ids
from beam_pixels.sinks.paimon.writer import ROW_KIND_COLUMN, PaimonTableWriter, WriteToPaimon

__all__ = ["ROW_KIND_COLUMN", "PaimonTableWriter", "WriteToPaimon", "bucket_ids"]
