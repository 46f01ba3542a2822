"""Servers and readers a user or a test starts beside the connector, not part of it.

- :mod:`.mock_server`: a Pixels polling server in memory (``beam-pixels mock-server``).
- :mod:`.mock_data`: generated rows and CDC histories, and the final state they must give.
- :mod:`.encoding`: column values encoded as a server sends them (binary or text).
- :mod:`.server_process`: a polling server in its own spawned process (the benchmark servers).
- :mod:`.duckdb_reader`: DuckDB's Iceberg reader, the tests' and the soak's independent reader.
"""
