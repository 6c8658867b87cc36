"""Kubernetes Node JSON → NodeInventory, and providerID parsing for every cloud."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from nodeheal.cloud_events.inventory.mapping import LabelConfig, node_to_inventory, parse_provider_id


@pytest.mark.parametrize(
    ("provider_id", "expected"),
    [
        ("cn-hangzhou.i-bp1e2f3g4h5i6j7k8l9m", ("alibaba", "i-bp1e2f3g4h5i6j7k8l9m")),
        ("alicloud://cn-beijing.i-2ze0abcdef", ("alibaba", "i-2ze0abcdef")),
        ("aws:///us-east-1a/i-0123456789abcdef0", ("aws", "i-0123456789abcdef0")),
        (
            "azure:///subscriptions/sub/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/aks-vm-1",
            ("azure", "aks-vm-1"),
        ),
        (
            "azure:///subscriptions/sub/resourceGroups/mc_rg/providers/Microsoft.Compute/virtualMachineScaleSets/"
            "aks-nodepool1-12345678-vmss/virtualMachines/3",
            ("azure", "aks-nodepool1-12345678-vmss_3"),
        ),
        ("gce://my-project/us-central1-a/gke-pool-1-abcd", ("gce", "gke-pool-1-abcd")),
        ("kind://docker/kind/kind-control-plane", ("kind", None)),
        ("", (None, None)),
        (None, (None, None)),
    ],
)
def test_provider_ids(provider_id: str | None, expected: tuple[str | None, str | None]) -> None:
    assert parse_provider_id(provider_id) == expected


NODE = {
    "metadata": {
        "name": "cn-hangzhou.10.0.0.7",
        "labels": {
            "topology.kubernetes.io/zone": "cn-hangzhou-k",
            "topology.kubernetes.io/region": "cn-hangzhou",
            "node.kubernetes.io/instance-type": "ecs.ebmg7.32xlarge",
            "alibabacloud.com/nodepool-id": "np-123",
            "nodeheal.io/rack": "rack-17",
            "nodeheal.io/cpu-model": "Intel-Xeon-8369B",
            "kubernetes.io/arch": "amd64",
            "app.kubernetes.io/noise": "dropped",
        },
    },
    "spec": {"providerID": "cn-hangzhou.i-bp1abc", "unschedulable": True},
    "status": {
        "addresses": [
            {"type": "Hostname", "address": "iZbp1abc"},
            {"type": "InternalIP", "address": "10.0.0.7"},
        ],
        "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "False"}],
        "nodeInfo": {
            "osImage": "Alibaba Cloud Linux 3.2104 U10",
            "kernelVersion": "5.10.134-16.al8.x86_64",
            "containerRuntimeVersion": "containerd://1.6.28",
        },
    },
}


def test_node_to_inventory() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    inv = node_to_inventory(NODE, cluster="prod-1", labels_config=LabelConfig(), now=now)
    assert inv.node == "cn-hangzhou.10.0.0.7" and inv.cluster == "prod-1"
    assert (inv.cloud, inv.instance_id, inv.provider_id) == ("alibaba", "i-bp1abc", "cn-hangzhou.i-bp1abc")
    assert (inv.region, inv.zone, inv.rack, inv.node_pool) == ("cn-hangzhou", "cn-hangzhou-k", "rack-17", "np-123")
    assert (inv.machine_model, inv.cpu_model) == ("ecs.ebmg7.32xlarge", "Intel-Xeon-8369B")
    assert (inv.os_image, inv.kernel) == ("Alibaba Cloud Linux 3.2104 U10", "5.10.134-16.al8.x86_64")
    assert inv.addresses == ("10.0.0.7", "iZbp1abc")  # InternalIP first: the prober uses it
    assert inv.ready is False and inv.unschedulable is True
    assert "app.kubernetes.io/noise" not in inv.labels
    assert inv.labels["alibabacloud.com/nodepool-id"] == "np-123"
    assert inv.labels["kubernetes.io/arch"] == "amd64"
    assert inv.updated_at == now
    assert inv.container_runtime == "containerd"


@pytest.mark.parametrize(
    ("reported", "runtime"),
    [("cri-o://1.28.1", "cri-o"), ("docker://20.10.7", "docker"), ("", None), (None, None)],
)
def test_the_runtime_is_what_the_kubelet_reports_before_its_version(reported: str | None, runtime: str | None) -> None:
    node = {**NODE, "status": {**NODE["status"], "nodeInfo": {"containerRuntimeVersion": reported}}}
    inv = node_to_inventory(node, cluster="prod-1", labels_config=LabelConfig(), now=datetime(2026, 1, 1, tzinfo=UTC))
    assert inv.container_runtime == runtime


def test_configurable_rack_label_and_empty_node() -> None:
    config = LabelConfig(rack=("example.com/rack",))
    node = {"metadata": {"name": "n", "labels": {"example.com/rack": "r9"}}}
    inv = node_to_inventory(node, cluster="c", labels_config=config, now=datetime.now(tz=UTC))
    assert inv.rack == "r9" and inv.labels == {"example.com/rack": "r9"}
    assert inv.ready is None and inv.addresses == () and inv.instance_id is None


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2025-06-01T08:00:00Z", datetime(2025, 6, 1, 8, tzinfo=UTC)),
        ("2025-06-01T10:00:00+02:00", datetime(2025, 6, 1, 8, tzinfo=UTC)),
        ("2025-06-01T08:00:00", None),  # no zone: not what an API server writes
        ("yesterday", None),
        (None, None),
    ],
)
def test_created_at_is_the_creation_timestamp(stamp: str | None, expected: datetime | None) -> None:
    node = {"metadata": {"name": "n1", "creationTimestamp": stamp}}
    record = node_to_inventory(node, cluster="c", labels_config=LabelConfig(), now=datetime(2026, 1, 1, tzinfo=UTC))
    assert record.created_at == expected
