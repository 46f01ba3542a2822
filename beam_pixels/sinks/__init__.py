"""Lakehouse sinks: each takes the decoded change stream and commits it exactly once."""
