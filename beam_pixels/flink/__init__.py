"""What a run needs from Flink beside Beam's runner: :mod:`.rest` reads a job's state and
counters from the JobManager's REST API (``--detach``, the Flink soak), :mod:`.job_server`
ties a job server the run starts to the run's own life, :mod:`.placement` spreads the poll groups
over the poller's subtasks, :mod:`.options` sets the pipeline options a run on Flink needs, :mod:`.gc_log` reads the
TaskManagers' GC logs (the Flink soak's live heap, the throughput benchmark's pauses)."""
