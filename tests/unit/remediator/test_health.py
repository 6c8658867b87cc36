"""One definition of healthy: the detector's thresholds are the remediator's verification thresholds."""

from __future__ import annotations

from nodeheal.detector.rules import RuleConfig
from nodeheal.remediator.settings import RemediatorSettings
from nodeheal.schemas.health import HealthThresholds, probe_problems
from nodeheal.schemas.probe import FileHandles, FileSystem, LoadAverage, NodeProbe, Reachability, ServiceState


def _probe(**over: object) -> NodeProbe:
    values: dict[str, object] = {
        "cluster": "c",
        "node": "n",
        "source": "agent",
        "seq": 1,
        "boot_id": "b",
        "load": LoadAverage(load1=1.0, load5=1.0, load15=1.0),
        "cpu_count": 4,
        "filesystems": (FileSystem(mount="/", used_pct=50, inodes_used_pct=10),),
        "file_handles": FileHandles(allocated=100, max=1000),
        "services": (ServiceState(name="kubelet", state="active"),),
    }
    values.update(over)
    return NodeProbe(**values)  # type: ignore[arg-type]


def test_the_detector_clears_where_the_remediator_verifies() -> None:
    rules, health = RuleConfig(), RemediatorSettings().health
    assert (rules.disk_clear_pct, rules.inode_clear_pct, rules.fd_clear_ratio, rules.high_load_clear_ratio) == (
        health.disk_clear_pct,
        health.inode_clear_pct,
        health.fd_clear_ratio,
        health.high_load_clear_ratio,
    )
    assert rules.services == health.services and rules.readonly_ignore_mounts == health.readonly_ignore_mounts


def test_only_a_complete_agent_probe_below_the_clear_thresholds_is_healthy() -> None:
    assert probe_problems(_probe()) == []
    prober = _probe(source="prober", reachability=(Reachability(check="tcp", target="x:22", ok=True),))
    assert "no disk" in probe_problems(prober)[0]
    assert any("no file-handle data" in p for p in probe_problems(_probe(file_handles=None)))
    # 92 % is below the detector's fire threshold (95) but not below its clear threshold (90): not verified
    assert probe_problems(_probe(filesystems=(FileSystem(mount="/", used_pct=92, inodes_used_pct=10),)))
    assert probe_problems(_probe(file_handles=FileHandles(allocated=850, max=1000)))
    assert probe_problems(_probe(load=LoadAverage(load1=7.0, load5=1, load15=1)))  # 1.75 per CPU
    assert probe_problems(_probe(services=(ServiceState(name="containerd", state="failed"),)))
    assert probe_problems(_probe(services=(ServiceState(name="custom", state="failed"),))) == []  # not watched
    assert probe_problems(_probe(), HealthThresholds(disk_clear_pct=40))
