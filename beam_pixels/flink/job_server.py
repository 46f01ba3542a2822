"""The job server a run starts (Beam's ``FlinkRunner`` with ``--flink_job_server_jar``) ends with the run.

Beam stops the job server it started at a normal exit and on Ctrl-C, but not when its process
is killed (SIGKILL, or SIGTERM, which Python does not turn into an exit by default): the JVM
then runs on, with the MiniCluster of ``--flink_master [local]``. :func:`tie_to_this_process`
makes Beam start the JVM through this module (``python -m beam_pixels.flink.job_server java ...``,
via Beam's ``--job_server_java_launcher``), which asks Linux to send the JVM SIGTERM when the
process that started it ends (``prctl(PR_SET_PDEATHSIG)``), then becomes ``java``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

from apache_beam.options.pipeline_options import JobServerOptions, PipelineOptions

_PR_SET_PDEATHSIG = 1


def tie_to_this_process(options: PipelineOptions) -> None:
    """Start any Java job server for ``options`` through this module (the user's launcher and
    JVM properties kept); on systems without ``prctl`` (not Linux) nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    job_server = options.view_as(JobServerOptions)
    launcher = job_server.job_server_java_launcher
    job_server.job_server_jvm_properties = ["-m", __name__, launcher, *job_server.job_server_jvm_properties]
    job_server.job_server_java_launcher = sys.executable


def main(argv: list[str]) -> None:
    """``python -m beam_pixels.flink.job_server LAUNCHER ARGS...``: exec LAUNCHER with ARGS, signalled
    with SIGTERM when this process's parent ends."""
    if not argv:
        sys.exit("usage: python -m beam_pixels.flink.job_server JAVA [ARGS...]")
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}")
    if os.getppid() != parent:  # the parent ended before prctl took effect
        sys.exit("the process that started the job server has ended")
    os.execvp(argv[0], argv)  # the death signal setting survives exec


if __name__ == "__main__":
    main(sys.argv[1:])
