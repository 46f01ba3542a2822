"""The pipeline options a run on Flink gets from beam-pixels: those the configuration sets
(:func:`submission_options`) and a default of its own for one of Flink's (:class:`FlinkBundleOptions`)."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions


def submission_options(pipeline_args: list[str], checkpoint_interval_ms: int, *, streaming: bool = True) -> PipelineOptions:
    """``pipeline_args`` with what a run on Flink needs whatever the user passed:

    - ``checkpointing_interval``: Flink checkpoints (and so the journal trims) every
      ``checkpoint.interval.ms``, the windows' length;
    - ``finish_bundle_before_checkpointing``: a bundle left open (seen with a job's first bundle,
      holding Beam's impulse) is finished at the next checkpoint, else the job may never poll
      (docs/flink-cluster.md#start-up);
    - ``object_reuse``: operators chained in one task hand elements on as they are instead of
      copying each by encoding and decoding it. Beam's coders make a fresh object of every decoded
      element, so nothing shares a mutable one. Without it a window's gathered batches were copied
      whole on their way from the grouping to the SDK worker: a 600,000-row window ran a 1 GB
      TaskManager out of heap there (docs/performance.md#on-flink).
    """
    return PipelineOptions(
        pipeline_args,
        streaming=streaming,
        checkpointing_interval=checkpoint_interval_ms,
        finish_bundle_before_checkpointing=True,
        object_reuse=True,
    )


class FlinkBundleOptions(PipelineOptions):
    """``--max_bundle_time_mills``: Flink's job server option, declared here to give it our default
    (defining the class registers the option, so importing this module is enough).

    Flink's runner finishes a bundle after at most this long (its own default: 1000 ms). A window's
    commit waits for the watermark to pass the poller, the data-file writers and the committer, and
    each stage passes it on when its bundle finishes: with 1 s bundles a commit came 2-4 s after its
    window's end, with 100 ms about 1 s (``benchmarks/flink_throughput.py``, docs/performance.md).
    """

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--max_bundle_time_mills", type=int, default=100,
            help="Flink: the longest a bundle stays open, in ms (beam-pixels' default: 100; Beam's: 1000)")
