"""The Prometheus metrics of nodeheal, defined once so every service names them the same way and
the Grafana 1-5-10 dashboard (deploy/grafana/nodeheal-1-5-10.json) can rely on them. Every family is
registered even if a service never touches it (an empty family keeps dashboards from breaking).
The families, who records them and how the "time to" histograms are measured: docs/observability.md.
"""

from __future__ import annotations

from datetime import datetime

from nats.js.api import ConsumerInfo
from nats.js.client import JetStreamContext
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

DETECT_BUDGET_S = 60.0
IDENTIFY_BUDGET_S = 300.0
REPAIR_BUDGET_S = 600.0

_DETECT_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)
_IDENTIFY_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 450, 600, 900)
_REPAIR_BUCKETS = (10, 30, 60, 90, 120, 180, 240, 300, 450, 600, 900, 1200, 1800, 3600)


class PipelineMetrics:
    """The shared metric families, registered in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = registry if registry is not None else REGISTRY
        self.registry = reg
        self.messages_consumed = Counter(
            "nodeheal_messages_consumed", "Messages handled by this process's consumers", ["stream"], registry=reg
        )
        self.messages_published = Counter(
            "nodeheal_messages_published", "Messages published and acknowledged by a stream", ["stream"], registry=reg
        )
        self.messages_dead_lettered = Counter(
            "nodeheal_messages_dead_lettered",
            "Rejected input kept in the DLQ with its reason",
            ["service"],
            registry=reg,
        )
        self.consumer_recreated = Counter(
            "nodeheal_consumer_recreated",
            "Durables of a consumer found gone under the running service (deleted by hand, or with their stream) "
            "and created again from their last known acknowledged position",
            ["service", "consumer"],
            registry=reg,
        )
        self.consumer_loop_restarts = Counter(
            "nodeheal_consumer_loop_restarts",
            "Pull loops of a consumer that ended with an error and were started again by faststream "
            "(`error`: the exception's type; TimeoutError is an idle fetch on a busy event loop)",
            ["service", "consumer", "error"],
            registry=reg,
        )
        self.consumer_pending = Gauge(
            "nodeheal_consumer_pending_messages",
            "Messages in the stream not yet delivered to the durable consumer (consumer lag)",
            ["stream", "consumer"],
            registry=reg,
        )
        self.consumer_ack_pending = Gauge(
            "nodeheal_consumer_ack_pending_messages",
            "Messages delivered to the durable consumer and not yet acknowledged",
            ["stream", "consumer"],
            registry=reg,
        )
        self.fleet_rate = Gauge(
            "nodeheal_fleet_rate",
            "Fleet KPIs as the diagnoser sees them: crash (episodes per node per day, last 24 h), "
            "schedulable and online (share of the inventory's nodes)",
            ["kpi"],
            registry=reg,
        )
        self.anomalies = Counter(
            "nodeheal_anomalies", "Anomalies published by the detector", ["kind", "status"], registry=reg
        )
        self.diagnoses = Counter(
            "nodeheal_diagnoses", "Diagnoses published by the diagnoser", ["category", "cause"], registry=reg
        )
        self.time_to_detect = Histogram(
            "nodeheal_time_to_detect_seconds",
            "From the fault's onset to the anomaly (budget 60 s)",
            ["fault_class"],
            buckets=_DETECT_BUCKETS,
            registry=reg,
        )
        self.time_to_identify = Histogram(
            "nodeheal_time_to_identify_seconds",
            "From the fault's onset to the diagnosis (budget 300 s)",
            ["fault_class"],
            buckets=_IDENTIFY_BUCKETS,
            registry=reg,
        )
        self.time_to_repair = Histogram(
            "nodeheal_time_to_repair_seconds",
            "From the fault's onset to the verified repair (budget 600 s)",
            ["fault_class"],
            buckets=_REPAIR_BUCKETS,
            registry=reg,
        )
        self.remediation_actions = Counter(
            "nodeheal_remediation_actions",
            "Audit records written, by action and outcome (record phase)",
            ["action", "outcome"],
            registry=reg,
        )
        self.ledger_writes_lost = Counter(
            "nodeheal_ledger_writes_lost",
            "Budget-slot releases / re-tags the remediator could not land in the shared ledger within its deadline",
            ["op"],
            registry=reg,
        )
        self.policy_blocks = Counter(
            "nodeheal_policy_blocks",
            "Actions a policy check refused (budgets, storm guard, pause, flap, stale)",
            ["check"],
            registry=reg,
        )

    async def report_consumer_lag(self, js: JetStreamContext, *, stream: str, consumer: str) -> tuple[int, int]:
        """Read a durable consumer's pending counts from the server into the gauges; returns
        (pending, ack_pending). Call it periodically (e.g. every 15 s) or from the readiness check."""
        return self.set_consumer_lag(await js.consumer_info(stream, consumer), stream=stream, consumer=consumer)

    def set_consumer_lag(self, info: ConsumerInfo, *, stream: str, consumer: str) -> tuple[int, int]:
        """The gauges from a consumer's info already read; returns (pending, ack_pending)."""
        pending = int(info.num_pending or 0)
        ack_pending = int(info.num_ack_pending or 0)
        self.consumer_pending.labels(stream=stream, consumer=consumer).set(pending)
        self.consumer_ack_pending.labels(stream=stream, consumer=consumer).set(ack_pending)
        return pending, ack_pending


_DEFAULT: PipelineMetrics | None = None


def pipeline_metrics() -> PipelineMetrics:
    """The process-wide instance on prometheus_client's default registry (created on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = PipelineMetrics()
    return _DEFAULT


def elapsed_s(*, start: datetime, end: datetime) -> float:
    """Seconds from `start` to `end` (both aware), never negative: clocks of different machines may
    disagree by a little, and a negative duration would corrupt a histogram."""
    if start.tzinfo is None or end.tzinfo is None:
        msg = f"naive datetime in elapsed_s (start={start!r}, end={end!r}): use timezone-aware UTC"
        raise ValueError(msg)
    return max(0.0, (end - start).total_seconds())


def observe_stage(histogram: Histogram, *, fault_class: str, onset: datetime, at: datetime) -> float:
    """Record one incident's time to detect / identify / repair (a `PipelineMetrics.time_to_*`
    histogram); returns the seconds recorded."""
    seconds = elapsed_s(start=onset, end=at)
    histogram.labels(fault_class=fault_class).observe(seconds)
    return seconds
