"""The shared metric families: names the dashboard relies on, stage timing, consumer lag read from
a real server."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import prometheus_client
import pytest
from nats.js.client import JetStreamContext
from prometheus_client import CollectorRegistry

from nodeheal.agent import app as agent_app
from nodeheal.detector.handlers import Metrics as DetectorMetrics
from nodeheal.runtime.jetstream import ensure_pull_consumer
from nodeheal.runtime.metrics import PipelineMetrics, elapsed_s, observe_stage
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.subjects import probe_subject

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def sample(registry: CollectorRegistry, name: str, labels: dict[str, str]) -> float | None:
    return registry.get_sample_value(name, labels)


def test_stage_times_land_in_the_fault_class_histogram() -> None:
    metrics = PipelineMetrics(registry=CollectorRegistry())
    assert observe_stage(metrics.time_to_detect, fault_class="disk_full", onset=T0, at=T0 + timedelta(seconds=12)) == 12
    observe_stage(metrics.time_to_detect, fault_class="disk_full", onset=T0, at=T0 + timedelta(seconds=90))
    reg = metrics.registry
    assert sample(reg, "nodeheal_time_to_detect_seconds_count", {"fault_class": "disk_full"}) == 2
    assert sample(reg, "nodeheal_time_to_detect_seconds_bucket", {"fault_class": "disk_full", "le": "60.0"}) == 1
    # clocks of two machines may disagree: a diagnosis "before" the onset counts as 0, not negative
    assert observe_stage(metrics.time_to_identify, fault_class="kernel", onset=T0, at=T0 - timedelta(seconds=1)) == 0
    with pytest.raises(ValueError, match="naive datetime"):
        elapsed_s(start=datetime(2026, 1, 1), end=T0)


def test_two_services_in_one_process_keep_separate_registries() -> None:
    a, b = PipelineMetrics(registry=CollectorRegistry()), PipelineMetrics(registry=CollectorRegistry())
    a.policy_blocks.labels(check="storm_guard").inc()
    assert sample(a.registry, "nodeheal_policy_blocks_total", {"check": "storm_guard"}) == 1
    assert sample(b.registry, "nodeheal_policy_blocks_total", {"check": "storm_guard"}) is None


def test_the_dashboard_queries_only_metrics_that_exist() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "nodeheal-1-5-10.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 8
    # the shared families, the detector's own (its probe path counts probes and their dead letters itself) and
    # the node agent's (module-level, in the default registry): each counted where the dashboard says
    metrics = PipelineMetrics(registry=CollectorRegistry())
    detector = CollectorRegistry()
    DetectorMetrics(detector)
    assert agent_app.PROBES_PUBLISHED is not None  # imported: registered in the default registry
    exposed = "".join(
        prometheus_client.generate_latest(reg).decode()
        for reg in (metrics.registry, detector, prometheus_client.REGISTRY)
    )
    families = set(re.findall(r"^# TYPE (\S+) (\S+)", exposed, flags=re.M))
    names = set()
    for family, kind in families:
        names.add(family)
        if kind == "counter":
            names.add(f"{family}_total")
        if kind == "histogram":
            names.update(f"{family}_{s}" for s in ("bucket", "sum", "count"))
    used = {m for expr in exprs for m in re.findall(r"\b(nodeheal_[a-z_]+)", expr)}
    assert used and used <= names, used - names
    for budget in ("60", "300", "600"):
        assert any(budget in json.dumps(p) for p in dashboard["panels"]), budget


@pytest.mark.nats
async def test_consumer_lag_is_read_from_the_server(js: JetStreamContext, topology_ready: NatsSettings) -> None:
    stream = topology_ready.topology().stream(f"{topology_ready.stream_prefix}PROBES").name
    await ensure_pull_consumer(js, stream=stream, durable="lag-test")
    for i in range(5):
        await js.publish(probe_subject("c", f"n{i}", prefix=topology_ready.prefix), b"{}")
    metrics = PipelineMetrics(registry=CollectorRegistry())
    assert await metrics.report_consumer_lag(js, stream=stream, consumer="lag-test") == (5, 0)
    sub = await js.pull_subscribe_bind("lag-test", stream=stream)
    await sub.fetch(2, timeout=5)  # delivered, not acked
    assert await metrics.report_consumer_lag(js, stream=stream, consumer="lag-test") == (3, 2)
    labels = {"stream": stream, "consumer": "lag-test"}
    assert sample(metrics.registry, "nodeheal_consumer_pending_messages", labels) == 3
    assert sample(metrics.registry, "nodeheal_consumer_ack_pending_messages", labels) == 2
