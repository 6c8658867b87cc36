"""Full probes and heartbeats: full-only conditions (services, file systems, readiness) stand on the last
full probe; a heartbeat neither raises nor clears them, and is judged on what it carries (boot id, load,
file handles, kernel lines). A node whose agent sends heartbeats but no full probe for `full_overdue_s`
has a degraded agent. Fake clock, no broker."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from nodeheal.detector.fastpath import FastProbe, probe_decoder
from nodeheal.detector.rules import Detector, RuleConfig
from nodeheal.schemas import FileHandles, LoadAverage, NodeProbe
from tests.unit.detector.helpers import T0, agent_probe

INTERVAL = 5.0


def make(**overrides: object) -> Detector:
    config = RuleConfig(probe_interval_s=INTERVAL, **overrides)  # type: ignore[arg-type]
    return Detector(config=config, started_at=T0)


def heartbeat(
    *,
    t: float,
    node: str = "n1",
    seq: int = 1,
    boot_id: str = "boot-1",
    load1: float = 1.0,
    fd: int = 1000,
    kernel: tuple[str, ...] = (),
) -> FastProbe:
    """What the agent sends between full probes: no file systems, services or readiness."""
    probe = NodeProbe(
        id=f"h-{node}-{seq}",
        time=datetime.fromtimestamp(t, tz=UTC),
        cluster="c1",
        node=node,
        source="agent",
        seq=seq,
        boot_id=boot_id,
        uptime_s=100.0,
        load=LoadAverage(load1=load1, load5=load1, load15=load1),
        cpu_count=8,
        file_handles=FileHandles(allocated=fd, max=100_000),
        kernel_log=kernel,
        full=False,
    )
    return probe_decoder.decode(probe.to_json())


def drain(det: Detector) -> list[tuple[str, str, str | None]]:
    out = [(a.kind, a.status, a.subject) for a in det.outbox]
    det.outbox.clear()
    return out


def run(det: Detector, t: float, probes: int, *, full_every: int = 6, **full: object) -> float:
    """`probes` probes of n1 at the interval: a full one (with `full`'s values) every `full_every`."""
    for i in range(probes):
        seq = int(t * 10)
        if i % full_every == 0:
            det.observe_probe(agent_probe(t=t, seq=seq, **full), now=t)  # type: ignore[arg-type]
        else:
            det.observe_probe(heartbeat(t=t, seq=seq), now=t)
        det.tick(now=t)
        t += INTERVAL
    return t


def test_old_probes_without_the_field_are_full() -> None:
    raw = NodeProbe(cluster="c1", node="n1", source="agent", seq=1).to_json()
    assert probe_decoder.decode(raw.replace(b'"full":true,', b"").replace(b',"full":true', b"")).full is True


@pytest.mark.parametrize(
    ("kind", "subject", "bad"),
    [
        ("service_down", "kubelet", {"kubelet": "failed"}),
        ("disk_full", "/", {"used": 97.0}),
        ("readonly_fs", "/", {"readonly": True}),
        ("node_not_ready", None, {"ready": False}),
    ],
)
def test_a_full_only_condition_stands_on_the_last_full_probe_across_heartbeats(
    kind: str, subject: str | None, bad: dict[str, object]
) -> None:
    det = make()
    t = run(det, T0, 12)
    assert drain(det) == []
    # the fault shows in the next full probe; the five heartbeats after it neither clear it nor raise it again
    t = run(det, t, 6, **bad)
    assert drain(det) == [(kind, "firing", subject)]
    t = run(det, t, 12, **bad)
    assert drain(det) == []
    # repaired: two clear *full* probes resolve it (clear_probes=2), not the heartbeats between them
    t = run(det, t, 1)
    for i in range(5):
        det.observe_probe(heartbeat(t=t + i * INTERVAL, seq=int(t * 10) + i), now=t + i * INTERVAL)
    assert drain(det) == []
    t = run(det, t + 5 * INTERVAL, 1)
    assert drain(det) == [(kind, "resolved", subject)]


def test_heartbeats_alone_never_raise_a_service_anomaly() -> None:
    det = make()
    t = T0
    det.observe_probe(agent_probe(t=t, seq=1), now=t)
    for i in range(2, 12):
        t += INTERVAL
        det.observe_probe(heartbeat(t=t, seq=i), now=t)
    assert drain(det) == []
    assert det.nodes["c1/n1"].conds is None


def test_heartbeats_are_judged_on_what_they_carry() -> None:
    """Load, file handles, kernel lines and the boot id are in every heartbeat: found at once."""
    det = make()
    t = run(det, T0, 6)
    assert drain(det) == []
    det.observe_probe(heartbeat(t=t, seq=100, fd=95_000), now=t)
    det.observe_probe(
        heartbeat(t=t + 5, seq=101, kernel=("BUG: soft lockup - CPU#3 stuck for 22s! [kworker:1]",)), now=t + 5
    )
    det.observe_probe(heartbeat(t=t + 10, seq=102, boot_id="boot-2"), now=t + 10)
    out = drain(det)
    assert ("fd_exhaustion", "firing", None) in out
    assert any(k == "kernel_fault" and s == "firing" for k, s, _ in out)
    assert ("unexpected_reboot", "firing", None) in out


def test_a_full_probe_overdue_is_the_agent_degraded_and_a_full_probe_ends_it() -> None:
    det = make(full_overdue_s=90.0)
    t = run(det, T0, 6)
    assert drain(det) == []
    last_full = t - 6 * INTERVAL
    seq = 1000
    while t - last_full <= 90.0:  # heartbeats only, up to the limit: nothing yet
        det.observe_probe(heartbeat(t=t, seq=seq), now=t)
        det.tick(now=t)
        seq += 1
        t += INTERVAL
    assert drain(det) == []
    det.observe_probe(heartbeat(t=t, seq=seq), now=t)  # past it
    anomalies = list(det.outbox)
    assert drain(det) == [("service_down", "firing", "nodeheal-agent")]
    assert anomalies[0].evidence[0].details["full_probe_age_s"] > 90
    for _ in range(5):  # it fires once
        t += INTERVAL
        seq += 1
        det.observe_probe(heartbeat(t=t, seq=seq), now=t)
    assert drain(det) == []
    t += INTERVAL
    det.observe_probe(agent_probe(t=t, seq=seq + 1), now=t)
    assert drain(det) == [("service_down", "resolved", "nodeheal-agent")]


def test_a_degraded_agent_that_then_falls_silent_stays_one_anomaly() -> None:
    det = make(full_overdue_s=30.0)
    t = run(det, T0, 6)
    seq = 1000
    for _ in range(8):
        det.observe_probe(heartbeat(t=t, seq=seq), now=t)
        det.tick(now=t)
        seq += 1
        t += INTERVAL
    assert drain(det) == [("service_down", "firing", "nodeheal-agent")]
    # the prober still reaches the node and its kubelet: the agent's silence is the same anomaly
    node = det.nodes["c1/n1"]
    node.reach_ok = node.reach_seen = 1 | 2 | 8
    for _ in range(10):
        node.last_prober = t
        det.observe_probe(agent_probe(t=t, node="n2", seq=seq), now=t)  # the feed is alive
        det.tick(now=t)
        t += INTERVAL
    assert drain(det) == []
    assert node.silence is not None
    t += INTERVAL
    det.observe_probe(agent_probe(t=t, seq=seq), now=t)  # the restarted agent: its first probe is full
    assert drain(det) == [("service_down", "resolved", "nodeheal-agent")]


def test_the_overdue_limit_follows_a_stretched_fleet_cadence() -> None:
    """When the whole fleet probes 3× slower than configured (a busy simulator), full probes come 3× less
    often too: that is not every agent degraded."""
    det = make(full_overdue_s=40.0)
    nodes = [f"n{i}" for i in range(100)]
    every = 3 * INTERVAL
    t = T0
    for r in range(30):
        for i, name in enumerate(nodes):
            at = t + i * every / len(nodes)
            seq = r * 1000 + i
            if (r + i) % 6 == 0:
                det.observe_probe(agent_probe(t=at, node=name, seq=seq), now=at)
            else:
                det.observe_probe(heartbeat(t=at, node=name, seq=seq), now=at)
        t += every
        det.tick(now=t)
    assert det.cadence_s == pytest.approx(every)
    # (the first rounds found the fleet silent once before its cadence was learnt: tested in test_rules)
    assert [a for a in drain(det) if a[2] == "nodeheal-agent"] == []


def test_after_a_restart_a_restored_degraded_agent_resolves_at_its_next_probe_and_fires_again_if_still_overdue() -> (
    None
):
    det = make(full_overdue_s=30.0)
    t = run(det, T0, 6)
    seq = 1000
    for _ in range(8):
        det.observe_probe(heartbeat(t=t, seq=seq), now=t)
        seq += 1
        t += INTERVAL
    [firing] = list(det.outbox)
    assert (firing.kind, firing.subject) == ("service_down", "nodeheal-agent")
    det.outbox.clear()
    restarted = make(full_overdue_s=30.0)
    restarted.restore(firing, now=t)
    out = []
    for _ in range(8):
        restarted.observe_probe(heartbeat(t=t, seq=seq), now=t)
        out += drain(restarted)
        seq += 1
        t += INTERVAL
    assert out == [("service_down", "resolved", "nodeheal-agent"), ("service_down", "firing", "nodeheal-agent")]
