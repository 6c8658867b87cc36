"""The fast-path decoder agrees with the pydantic model on what it reads; the kernel pre-filter
recognises the shared samples of known trouble."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from nodeheal.detector.fastpath import probe_decoder
from nodeheal.detector.kernel import KERNEL_CLASSES, classify_line, classify_lines
from nodeheal.schemas import NodeProbe
from tests.support.samples import all_samples

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "kernel-log-samples.jsonl"


def test_full_probe_sample_decodes_with_the_same_values() -> None:
    probe = next(m for m in all_samples() if isinstance(m, NodeProbe))
    fast = probe_decoder.decode(probe.to_json())
    assert (fast.cluster, fast.node, fast.seq, fast.boot_id) == (probe.cluster, probe.node, probe.seq, probe.boot_id)
    assert fast.time == probe.time
    assert [f.used_pct for f in fast.filesystems] == [f.used_pct for f in probe.filesystems]
    assert fast.kernel_log == probe.kernel_log


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"seq": -1}, "seq"),
        ({"schema": "nodeheal.probe/v9"}, "schema"),
        ({"source": "martian"}, "source"),
        ({"time": "2026-01-01T00:00:00"}, "time"),
        ({"filesystems": [{"mount": "/", "used_pct": 140, "inodes_used_pct": 1}]}, "used_pct"),
        ({"file_handles": {"allocated": 1, "max": 0}}, "max"),
        ({"node": ""}, "node"),
    ],
)
def test_values_pydantic_rejects_are_rejected_with_the_field_named(patch: dict[str, object], field: str) -> None:
    probe = next(m for m in all_samples() if isinstance(m, NodeProbe))
    raw = json.loads(probe.to_json())
    raw.update(patch)
    data = json.dumps(raw).encode()
    with pytest.raises(ValueError):  # noqa: PT011 - pydantic's ValidationError is a ValueError
        NodeProbe.model_validate_json(data)
    with pytest.raises(msgspec.ValidationError, match=field):
        probe_decoder.decode(data)


def test_unknown_fields_are_ignored() -> None:
    probe = next(m for m in all_samples() if isinstance(m, NodeProbe))
    raw = json.loads(probe.to_json())
    raw["added_in_a_later_version"] = {"x": 1}
    assert probe_decoder.decode(json.dumps(raw).encode()).node == probe.node


def test_every_sample_is_caught_including_a_planned_shutdown() -> None:
    missed = []
    for line in SAMPLES.read_text().splitlines():
        sample = json.loads(line)
        found = classify_lines(sample["lines"])
        if not found:
            missed.append(sample["class"])
        if sample["class"] == "planned_shutdown_reboot":
            assert set(found) == {"planned"}
        assert set(found) <= set(KERNEL_CLASSES)
    assert missed == []


def test_ordinary_lines_are_not_trouble() -> None:
    for line in (
        "[    0.000000] Linux version 5.10.134-16.al8.x86_64",
        "systemd[1]: Started Kubernetes Kubelet.",
        "IPv6: ADDRCONF(NETDEV_CHANGE): eth0: link becomes ready",
    ):
        assert classify_line(line) is None
