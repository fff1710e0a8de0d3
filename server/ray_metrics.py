"""One /metrics for every replica: each replica reports its own Prometheus text to a hub, and /metrics,
whichever replica the proxy picks, answers every replica's samples with a `replica` label.

Why a hub and not Ray's metrics export: Ray exports application metrics from each node's agent under its own
names (a `ray_` prefix, no colons), so vLLM-compatible names and PromQL would change, every metric would be
declared twice (prometheus-client for the single process, ray.util.metrics for Ray), and a scrape would need
Ray's per-node service discovery. Here a scrape of the server's one URL sees all replicas, under the names the
single-process server uses; sum by the `replica` label away to get the deployment's totals.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

REPORT_SECONDS = 1.0    # how often a replica reports; /metrics also reports the answering replica first
STALE_SECONDS = 10.0    # a replica silent this long is gone (killed, or scaled down) and leaves the merge


# Replicas report every second: no access log line for that.
@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, logging_config={"enable_access_log": False})
class MetricsHub:
    """The last text each replica reported, merged on demand."""

    def __init__(self):
        self.reports: dict[str, tuple[float, str]] = {}

    def report(self, replica: str, text: str) -> None:
        self.reports[replica] = (time.monotonic(), text)

    def merged(self) -> bytes:
        now = time.monotonic()
        self.reports = {replica: (at, text) for replica, (at, text) in self.reports.items()
                        if now - at < STALE_SECONDS}
        return merge({replica: text for replica, (_, text) in self.reports.items()})


class _Families:
    """A collector that yields already-built metric families, so prometheus-client renders the merge."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def merge(texts: dict[str, str]) -> bytes:
    """Every replica's samples under one family per metric, each sample labelled with its replica."""
    families: dict[str, Metric] = {}
    for replica, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type,
                                                             family.unit))
            merged.samples.extend(sample._replace(labels=sample.labels | {"replica": replica})
                                  for sample in family.samples)
    registry = CollectorRegistry()
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)
