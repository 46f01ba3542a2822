"""Benchmarks: what ``beam-pixels bench`` and ``beam-pixels soak`` measure.

- :mod:`.throughput`: the pipeline into Iceberg and Paimon against a framework-free ceiling.
- :mod:`.server`: prebuilt poll responses served from their own process (throughput's server).
- :mod:`.soak`: one long run against an endless CDC stream, commit by commit.
- :mod:`.soak_server`: that endless stream, generated and served in its own process.
- :mod:`.workdir`: a run's work directory (given and empty, or temporary).
"""
