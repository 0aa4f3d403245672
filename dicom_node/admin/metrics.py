"""Prometheus metrics of a node, read from its index at each scrape (``GET /metrics``).

The index is the source of truth shared by the node's threads and its workers, so the numbers are the
same whichever process serves them and survive a restart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from dicom_node.index import Index

__all__ = ["NodeCollector", "metrics_registry"]


class NodeCollector(Collector):
    """Counts by state of studies, jobs, actions and deliveries, the association log, the spool, tool time."""

    def __init__(self, index: Index, scp_listening: Callable[[], bool]) -> None:
        self.index = index
        self.scp_listening = scp_listening

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        counts = self.index.state_counts()
        described = {
            "studies": ("medagent_studies", "Studies in the index by state", "state"),
            "jobs": ("medagent_jobs", "Jobs by state", "state"),
            "actions": ("medagent_actions", "Tool actions by state", "state"),
            "deliveries": ("medagent_deliveries", "Outbox rows (object x destination) by state", "state"),
            "associations": ("medagent_associations", "Audited associations by outcome", "outcome"),
        }
        for key, (name, documentation, label) in described.items():
            family = GaugeMetricFamily(name, documentation, labels=[label])
            for value, count in sorted(counts[key].items()):
                family.add_metric([value], count)
            yield family
        instances, size = self.index.instance_totals()
        yield GaugeMetricFamily("medagent_instances", "Instances held in the spool", value=instances)
        yield GaugeMetricFamily("medagent_spool_bytes", "Bytes of the instances in the spool", value=size)
        seconds = CounterMetricFamily(
            "medagent_action_seconds", "Time spent in finished tool actions", labels=["tool", "state"]
        )
        finished = CounterMetricFamily(
            "medagent_actions_finished", "Finished tool actions", labels=["tool", "state"]
        )
        for row in self.index.action_durations():
            seconds.add_metric([row["api_name"], row["state"]], float(row["seconds"] or 0.0))
            finished.add_metric([row["api_name"], row["state"]], int(row["n"]))
        yield seconds
        yield finished
        yield GaugeMetricFamily(
            "medagent_scp_up", "1 when the SCP listens", value=1 if self.scp_listening() else 0
        )


def metrics_registry(index: Index, scp_listening: Callable[[], bool]) -> CollectorRegistry:
    """A registry of its own per app (not the process-wide default), holding the node's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(index, scp_listening))
    return registry
