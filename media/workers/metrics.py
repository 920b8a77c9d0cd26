"""The workers' SFU metrics on the front's ``/metrics``.

Each worker sends its Prometheus samples with every ``load`` frame; this
collector, registered on the front's registry, serves the latest of each under
the usual names with a ``worker`` label (``sum without (worker)`` gives the
node's figure), plus the pool's own gauges: workers up and restarts.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from .pool import WorkerPool


class WorkerMetrics(Collector):
    def __init__(self, pool: WorkerPool, prefix: str = "video_call") -> None:
        self._pool = pool
        self._prefix = prefix

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for link in self._pool.live_workers():
            worker = str(link.index)
            for family in _families(link.metrics_text):
                if family.name.endswith("_created"):
                    continue  # the creation times of the worker's counters: not merged
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                into.samples.extend(
                    Sample(s.name, {**s.labels, "worker": worker}, s.value, s.timestamp)
                    for s in family.samples
                    if not s.name.endswith("_created")
                )
        yield from merged.values()
        up = GaugeMetricFamily(
            f"{self._prefix}_sfu_workers_up", "Media worker processes up and serving"
        )
        up.add_metric([], len(self._pool.live_workers()))
        yield up
        restarts = CounterMetricFamily(
            f"{self._prefix}_sfu_worker_restarts", "Media worker processes restarted after dying"
        )
        restarts.add_metric([], self._pool.restarts)
        yield restarts


def _families(text: str) -> list[Metric]:
    try:
        return list(text_string_to_metric_families(text))
    except ValueError:
        return []
