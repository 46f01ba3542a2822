"""Flink's REST API (the JobManager's web UI address), as ``beam-pixels run --detach`` uses it:
find the job a run submitted and read the source's Beam counters from it.

Beam's Flink runner reports a DoFn's ``Metrics.counter`` as a task metric named
``<namespace>_<name>`` (dots become underscores: ``beam_pixels_source_polls``, or
``beam_pixels_source_orders_polls`` for table ``orders`` of a job of several) on the vertex that
runs it, summed here over the job's vertices and subtasks.
"""

from __future__ import annotations

import json
import typing
import urllib.parse
import urllib.request

from beam_pixels.decode import METRICS_NAMESPACE
from beam_pixels.metrics import table_namespace

# Flink's job states after which a job runs no more.
FINISHED_STATES = frozenset({"CANCELED", "FAILED", "FINISHED"})


class FlinkRest:
    """The REST API at ``address`` (``host:port`` or ``http(s)://host:port``)."""

    def __init__(self, address: str, timeout_s: float = 10.0):
        self.url = (address if "://" in address else f"http://{address}").rstrip("/")
        self._timeout_s = timeout_s

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=self._timeout_s) as response:
            return json.loads(response.read() or b"{}")

    def jobs_named(self, name: str) -> list[dict]:
        """The jobs called ``name`` (the Beam pipeline option ``--job_name``), newest first:
        dicts with ``jid``, ``name``, ``state``."""
        jobs = [j for j in self.get("/jobs/overview")["jobs"] if j["name"] == name]
        return sorted(jobs, key=lambda j: j["start-time"], reverse=True)

    def source_counter(self, job_id: str, name: str, table_labels: typing.Sequence[str] = ("",)) -> int:
        """A ``beam_pixels.source`` counter (e.g. ``polls``, ``records``) summed over the job's subtasks
        and the tables labelled ``table_labels`` (``""``: a job of one table)."""
        suffixes = tuple("." + f"{table_namespace(METRICS_NAMESPACE, label)}_{name}".replace(".", "_")
                         for label in table_labels)
        total = 0
        for vertex in self.get(f"/jobs/{job_id}")["vertices"]:
            base = f"/jobs/{job_id}/vertices/{vertex['id']}/metrics"
            ids = [m["id"] for m in self.get(base) if m["id"].endswith(suffixes)]
            if ids:
                query = urllib.parse.quote(",".join(ids), safe="")
                total += sum(int(float(m["value"])) for m in self.get(f"{base}?get={query}"))
        return total

    def job_page(self, job_id: str) -> str:
        """The job's page in Flink's web UI."""
        return f"{self.url}/#/job/running/{job_id}/overview"
