"""Each anomaly kind: it fires once, its hysteresis holds, it resolves once. Fake clock, no broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from nodeheal.detector.handlers import stream_lag
from nodeheal.detector.rules import Detector, RuleConfig, anomaly_msg_id
from nodeheal.detector.state import PING_MASK
from nodeheal.schemas import Anomaly, CloudSystemEvent, Reachability, RemediationRecord
from tests.unit.detector.helpers import T0, agent_probe, prober_probe

INTERVAL = 10.0


def make(**overrides: object) -> Detector:
    return Detector(config=RuleConfig(**overrides), started_at=T0)  # type: ignore[arg-type]


def drain(det: Detector) -> list[tuple[str, str, str | None]]:
    out = [(a.kind, a.status, a.subject) for a in det.outbox]
    det.outbox.clear()
    return out


def feed(det: Detector, steps: int, start: float = T0, **kw: object) -> float:
    t = start
    for _ in range(steps):
        det.observe_probe(agent_probe(t=t, seq=int(t), **kw), now=t)  # type: ignore[arg-type]
        det.tick(now=t)
        t += INTERVAL
    return t


def test_healthy_node_emits_nothing_and_keeps_no_conditions() -> None:
    det = make()
    feed(det, 20)
    assert drain(det) == []
    assert det.nodes["c1/n1"].conds is None


@pytest.mark.parametrize(
    ("kind", "subject", "bad", "band", "good"),
    [
        ("disk_full", "/", {"used": 97.0}, {"used": 92.0}, {"used": 50.0}),
        ("inode_exhaustion", "/", {"inodes": 99.0}, {"inodes": 93.0}, {"inodes": 10.0}),
        ("fd_exhaustion", None, {"fd": 95_000}, {"fd": 85_000}, {"fd": 1000}),
        ("high_load", None, {"load1": 20.0}, {"load1": 14.0}, {"load1": 1.0}),
        ("readonly_fs", "/", {"readonly": True}, {"readonly": True}, {"readonly": False}),
        ("service_down", "kubelet", {"kubelet": "failed"}, {"kubelet": "failed"}, {"kubelet": "active"}),
        ("node_not_ready", None, {"ready": False}, {"ready": None}, {"ready": True}),
    ],
)
def test_threshold_kind_fires_once_holds_in_band_and_resolves_once(
    kind: str, subject: str | None, bad: dict[str, object], band: dict[str, object], good: dict[str, object]
) -> None:
    det = make()
    t = feed(det, 3)
    assert drain(det) == []
    t = feed(det, 4, start=t, **bad)
    assert drain(det) == [(kind, "firing", subject)]
    # Inside the hysteresis band (or still bad): still firing, nothing re-emitted.
    t = feed(det, 4, start=t, **band)
    assert drain(det) == []
    t = feed(det, 1, start=t, **good)
    assert drain(det) == []  # one clear probe is not enough (clear_probes=2)
    t = feed(det, 5, start=t, **good)
    assert drain(det) == [(kind, "resolved", subject)]


def test_high_load_needs_consecutive_bad_probes_and_fault_onset_is_the_first() -> None:
    det = make()
    t = feed(det, 2)
    first_bad = t
    det.observe_probe(agent_probe(t=t, load1=30.0), now=t)
    assert drain(det) == []  # one probe is a spike, not sustained load
    det.observe_probe(agent_probe(t=t + INTERVAL, load1=30.0), now=t + INTERVAL + 0.2)
    fired = det.outbox[0]
    assert (fired.kind, fired.status) == ("high_load", "firing")
    assert fired.fault_onset.timestamp() == first_bad
    assert fired.detected_at.timestamp() == pytest.approx(t + INTERVAL + 0.2)
    assert fired.evidence[0].value == pytest.approx(30.0 / 8, rel=1e-3)


def test_a_spike_that_clears_before_the_count_never_fires() -> None:
    det = make()
    t = feed(det, 2)
    t = feed(det, 1, start=t, load1=30.0)
    feed(det, 5, start=t)
    assert drain(det) == []


def test_firing_and_resolved_share_the_key_and_ids_are_deterministic() -> None:
    det = make()
    t = feed(det, 2, used=99.0)
    feed(det, 3, start=t)
    fired, resolved = det.outbox
    assert fired.anomaly_key == resolved.anomaly_key == "c1/n1/disk_full//"
    assert fired.id == anomaly_msg_id(fired.anomaly_key, "firing", fired.fault_onset)
    assert resolved.id == anomaly_msg_id(fired.anomaly_key, "resolved", fired.fault_onset)
    assert fired.id != resolved.id
    assert resolved.resolved_at is not None


def test_each_mount_is_its_own_anomaly_and_a_vanished_mount_does_not_stay_firing() -> None:
    det = make()
    t = feed(det, 2, used=99.0, mounts=("/", "/var/lib/kubelet"))
    assert sorted(drain(det)) == [("disk_full", "firing", "/"), ("disk_full", "firing", "/var/lib/kubelet")]
    # /var/lib/kubelet disappears from the probes (unmounted): it clears instead of going stale.
    feed(det, 3, start=t, used=50.0, mounts=("/",))
    assert sorted(drain(det)) == [("disk_full", "resolved", "/"), ("disk_full", "resolved", "/var/lib/kubelet")]


def test_unwatched_service_is_ignored() -> None:
    det = make(services=("containerd",))
    feed(det, 3, kubelet="failed")
    assert drain(det) == []


def test_a_dead_cri_o_runtime_is_watched_by_its_unit_name() -> None:
    # CRI-O's systemd unit is crio.service: the default watch list named "cri-o", which no agent reports
    det = make()
    feed(det, 4, runtime=("crio", "failed"))
    assert drain(det) == [("service_down", "firing", "crio")]


def test_readonly_by_design_mounts_are_ignored() -> None:
    det = make()
    feed(det, 3, readonly=True, mounts=("/usr",))
    assert drain(det) == []


def _silence(det: Detector, start: float, seconds: float, **reach: bool) -> float:
    t = start
    end = start + seconds
    while t <= end:
        if reach:
            det.observe_probe(prober_probe(t=t, seq=int(t), **reach), now=t)
        det.tick(now=t)
        t += 1.0
    return t


def test_node_down_after_missed_intervals_when_unreachable_then_resolves_when_back() -> None:
    det = make()
    t = feed(det, 3)
    last_agent = t - INTERVAL
    t = _silence(det, t, 14, icmp=False, tcp=False)
    assert drain(det) == []  # 2.5 intervals = 25 s of silence not reached yet
    t = _silence(det, t, 20, icmp=False, tcp=False)
    out = det.outbox[:]
    assert [(a.kind, a.status) for a in out] == [("node_down", "firing")]
    assert out[0].fault_onset.timestamp() == last_agent + INTERVAL
    assert out[0].expected is False
    drain(det)
    t = _silence(det, t, 30, icmp=False, tcp=False)
    assert drain(det) == []  # fires once
    feed(det, 1, start=t)
    assert drain(det) == [("node_down", "resolved", None)]


def test_the_agents_own_reachability_entry_is_not_the_probers_verdict() -> None:
    det = make()
    t = feed(det, 1)
    det.observe_probe(prober_probe(t=t, icmp=True, tcp=True, ssh_banner=True, kubelet_healthz=True), now=t)
    # The agent reports its own `agent` check on every probe; the prober's verdict must survive it.
    t = feed(det, 2, start=t + 1, reachability=(Reachability(check="agent", target="127.0.0.1:9100", ok=True),))
    node = det.nodes["c1/n1"]
    assert node.reach_ok & PING_MASK == PING_MASK
    assert node.last_prober == T0 + INTERVAL


def test_node_hang_when_pingable_but_ssh_and_kubelet_silent() -> None:
    det = make()
    t = feed(det, 3)
    _silence(det, t, 40, icmp=True, tcp=True, ssh_banner=False, kubelet_healthz=False)
    assert drain(det) == [("node_hang", "firing", None)]


def test_agent_silent_but_node_fine_is_the_agent_service_down() -> None:
    det = make()
    t = feed(det, 3)
    _silence(det, t, 40, icmp=True, tcp=True, ssh_banner=True, kubelet_healthz=True)
    assert drain(det) == [("service_down", "firing", "nodeheal-agent")]


def _prober_rounds(
    det: Detector,
    *,
    agent_every: float,
    prober_every: float,
    prober_phase: float,
    dark_at: float,
    end: float,
    hung: bool,
) -> list[tuple[str, str, str | None]]:
    """Agents every `agent_every`, the prober every `prober_every` (from `prober_phase`); node n1 goes dark
    (powered off) or hangs at `dark_at`, n2 keeps probing; what fired and resolved up to `end`, tick by 0.5 s."""
    out: list[tuple[str, str, str | None]] = []
    t = T0
    next_agent, next_prober = T0, T0 + prober_phase
    while t <= T0 + end:
        bad = t >= T0 + dark_at
        if t >= next_agent:
            if not bad:
                det.observe_probe(agent_probe(t=t, seq=int(t * 10)), now=t)
            det.observe_probe(agent_probe(t=t, seq=int(t * 10), node="n2"), now=t)  # the rest of the fleet
            next_agent += agent_every
        if t >= next_prober:
            up = not bad or hung
            det.observe_probe(prober_probe(t=t, seq=int(t * 10), tcp=up, kubelet_healthz=not bad), now=t)
            next_prober += prober_every
        det.tick(now=t)
        out += drain(det)
        t += 0.5
    return out


def test_a_node_dark_just_after_the_probers_verdict_waits_for_the_next_one_not_read_as_the_agent_down() -> None:
    # agents every 5 s (silence after 12.5 s), the prober every 10 s: its verdict at 14 s says "fine", the node
    # goes dark at 14.5 s (last agent probe at 10 s), its silence is due at 22.5 s, before the next verdict (24 s).
    det = make(probe_interval_s=5.0, prober_interval_s=10.0, warmup_s=0.0)
    out = _prober_rounds(det, agent_every=5.0, prober_every=10.0, prober_phase=4.0, dark_at=14.5, end=40.0, hung=False)
    assert out == [("node_down", "firing", None)]  # not a service_down (the agent) first


def test_a_hang_stays_a_hang_between_two_prober_rounds_when_agents_probe_faster() -> None:
    # agents every 2 s (silence after 5 s), the prober every 20 s: its verdict is older than the silence timeout
    # for most of a round, and must not turn the hang into a node_down until the next round.
    det = make(probe_interval_s=2.0, prober_interval_s=20.0, warmup_s=0.0)
    out = _prober_rounds(det, agent_every=2.0, prober_every=20.0, prober_phase=1.0, dark_at=20.5, end=60.0, hung=True)
    assert out == [("node_hang", "firing", None)]


def test_a_silence_waits_for_a_prober_verdict_at_most_one_round() -> None:
    # the prober stops with the node (its last verdict at 13 s, "fine"): the node is judged once the next
    # verdict is overdue (13 + 10 x 1.25 s), as down (no fresh verdict), not as the agent down at 22.5 s
    det = make(probe_interval_s=5.0, prober_interval_s=10.0, warmup_s=0.0)
    out: list[tuple[str, str, str | None]] = []
    t = T0
    while t <= T0 + 40:
        if (t - T0) % 5 == 0:
            if t < T0 + 14:
                det.observe_probe(agent_probe(t=t, seq=int(t)), now=t)
            det.observe_probe(agent_probe(t=t, seq=int(t), node="n2"), now=t)  # the rest of the fleet
        if t == T0 + 3 or t == T0 + 13:
            det.observe_probe(prober_probe(t=t, seq=int(t), tcp=True, kubelet_healthz=True), now=t)
        det.tick(now=t)
        if drain(det) and not out:
            out.append(("node_down", "fired at", str(t - T0)))
        t += 0.5
    assert out == [("node_down", "fired at", "26.0")]


def test_a_filtered_ssh_port_does_not_turn_an_agent_outage_into_a_hang() -> None:
    # stock node: the prober reaches the kubelet (TLS on 10250 answers) but port 22 is filtered
    det = make()
    t = feed(det, 3)
    _silence(det, t, 40, tcp=True, ssh_banner=False, kubelet_healthz=True)
    assert drain(det) == [("service_down", "firing", "nodeheal-agent")]


def test_without_a_kubelet_check_a_failing_ssh_banner_still_means_hang() -> None:
    det = make()
    t = feed(det, 3)
    _silence(det, t, 40, tcp=True, ssh_banner=False)
    assert drain(det) == [("node_hang", "firing", None)]


def test_hang_that_stops_answering_ping_becomes_down() -> None:
    det = make()
    t = feed(det, 3)
    t = _silence(det, t, 40, icmp=True, tcp=True, ssh_banner=False)
    t = _silence(det, t, 5, icmp=False, tcp=False, ssh_banner=False)
    assert drain(det) == [("node_hang", "firing", None), ("node_hang", "resolved", None), ("node_down", "firing", None)]


def test_a_partitions_heal_does_not_flap_node_hang_between_the_probers_verdict_and_the_agents_return() -> None:
    """A partitioned rack comes back: one batch carries the prober's first verdict (ping answers, the kubelet
    check not yet) and the agent's first probe. Judged between the two, the node_down became a node_hang
    resolved in the same millisecond (4 rows of every chaos demo's rack); the sweep judges it after the batch."""
    det = make()
    t = feed(det, 3)
    t = _silence(det, t, 40, icmp=False, tcp=False, ssh_banner=False, kubelet_healthz=False)
    assert drain(det) == [("node_down", "firing", None)]
    det.observe_probe(prober_probe(t=t, seq=int(t), icmp=True, tcp=True, kubelet_healthz=False), now=t)
    det.observe_probe(agent_probe(t=t, seq=int(t)), now=t)  # the same batch: no sweep in between
    det.tick(now=t + 1.0)
    assert drain(det) == [("node_down", "resolved", None)]


def test_a_silence_judged_down_becomes_a_hang_at_the_next_sweep_when_ping_comes_back_alone() -> None:
    det = make()
    t = feed(det, 3)
    t = _silence(det, t, 40, icmp=False, tcp=False, ssh_banner=False, kubelet_healthz=False)
    assert drain(det) == [("node_down", "firing", None)]
    det.observe_probe(prober_probe(t=t, seq=int(t), icmp=True, tcp=True, kubelet_healthz=False), now=t)
    assert drain(det) == []  # judged by the sweep, not inside the batch
    det.tick(now=t + 2.0)
    assert drain(det) == [("node_down", "resolved", None), ("node_hang", "firing", None)]


def test_no_node_down_during_warmup_or_when_the_whole_input_is_silent() -> None:
    det = make()
    feed(det, 1)
    # No probe at all reaches the detector for 5 minutes: our feed is broken, not the fleet.
    for s in range(300):
        det.tick(now=T0 + s)
    assert drain(det) == []


def test_cloud_reboot_makes_downtime_expected_and_new_boot_id_not_unexpected() -> None:
    det = make()
    t = feed(det, 3)
    event = _cloud(phase="in_progress", t=t)
    det.observe_cloud(event, now=t)
    assert drain(det) == [("cloud_maintenance", "firing", "reboot:e-1")]
    t = _silence(det, t, 40, icmp=False, tcp=False)
    down = det.outbox[0]
    assert (down.kind, down.expected) == ("node_down", True)
    drain(det)
    det.observe_cloud(_cloud(phase="completed", t=t), now=t)
    assert drain(det) == []  # terminal, but the node is not back yet
    feed(det, 2, start=t + 1, boot_id="boot-2")
    assert drain(det) == [("node_down", "resolved", None), ("cloud_maintenance", "resolved", "reboot:e-1")]
    assert det.counters.explained_reboots == 1


def test_late_non_terminal_phase_never_reopens_a_terminal_event() -> None:
    det = make()
    t = feed(det, 2)
    det.observe_cloud(_cloud(phase="scheduled", t=t), now=t)
    det.observe_cloud(_cloud(phase="completed", t=t), now=t)
    t = feed(det, 1, start=t + 1)
    det.observe_cloud(_cloud(phase="in_progress", t=t), now=t)
    feed(det, 1, start=t)
    assert drain(det) == [
        ("cloud_maintenance", "firing", "reboot:e-1"),
        ("cloud_maintenance", "resolved", "reboot:e-1"),
    ]


def test_unexpected_reboot_fires_once_and_resolves_after_the_hold() -> None:
    det = make(event_hold_s=60)
    t = feed(det, 2, boot_id="boot-1")
    t = feed(det, 3, start=t, boot_id="boot-2")
    out = det.outbox[:]
    assert [(a.kind, a.status) for a in out] == [("unexpected_reboot", "firing")]
    assert out[0].evidence[0].details["previous_boot_id"] == "boot-1"
    drain(det)
    feed(det, 5, start=t, boot_id="boot-2")
    assert drain(det) == [("unexpected_reboot", "resolved", None)]


def test_our_own_reboot_is_not_unexpected() -> None:
    det = make()
    t = feed(det, 2, boot_id="boot-1")
    det.observe_remediation(_record(t), now=t)
    feed(det, 2, start=t, boot_id="boot-2")
    assert drain(det) == []


@pytest.mark.parametrize("adopt_unknown", [True, False])
def test_our_own_reboot_of_a_node_not_known_yet_counts_from_its_first_probe(adopt_unknown: bool) -> None:
    """A record of our reboot can come before any probe of the node (the what-if sandbox starts at its window; a
    replica whose node has not probed since its start). Before, it was dropped: the node's first boot was taken as
    unexpected. It is kept for the node's first probe, and a `blocked` one after it still takes the grace back."""
    det = Detector(config=RuleConfig(), started_at=T0, adopt_unknown=adopt_unknown)
    det.observe_remediation(_record(T0), now=T0)
    assert "c1/n1" not in det.nodes  # the record alone tracks no node (no silence of a node that never probed)
    t = feed(det, 2, start=T0 + INTERVAL, boot_id="boot-1")
    feed(det, 2, start=t, boot_id="boot-2")
    assert drain(det) == []
    other = make()
    other.observe_remediation(_record(T0), now=T0)
    other.observe_remediation(_record(T0).model_copy(update={"phase": "blocked"}), now=T0)
    t = feed(other, 2, start=T0 + INTERVAL, boot_id="boot-1")
    feed(other, 2, start=t, boot_id="boot-2")
    assert [(a.kind, a.status) for a in other.outbox] == [("unexpected_reboot", "firing")]


def test_kernel_fault_carries_the_raw_lines_and_one_anomaly_per_class() -> None:
    det = make(event_hold_s=30)
    lines = (
        "[12032.818764] NMI watchdog: BUG: soft lockup - CPU#6 stuck for 22s! [kubelet:1663]",
        "nothing to see",
        "EXT4-fs error (device sda1): ext4_lookup:1607: inode #525615: deleted inode referenced",
    )
    t = feed(det, 1, kernel=lines)
    t = feed(det, 1, start=t, kernel=lines[:1])  # recurrence while firing: no second firing
    firing = {a.subject: a for a in det.outbox}
    assert sorted(firing) == ["filesystem", "lockup"]
    assert firing["lockup"].evidence[0].details["lines"] == [lines[0]]
    drain(det)
    feed(det, 6, start=t)
    assert sorted(drain(det)) == [("kernel_fault", "resolved", "filesystem"), ("kernel_fault", "resolved", "lockup")]


def test_flapping_after_k_cycles_in_the_window() -> None:
    det = make(flap_count=3, clear_probes=1, flap_window_s=600)
    t = T0
    for _ in range(3):
        t = feed(det, 1, start=t, used=99.0)
        t = feed(det, 1, start=t, used=10.0)
    kinds = drain(det)
    assert kinds.count(("disk_full", "firing", "/")) == 3
    assert kinds[-1] == ("flapping", "firing", "disk_full:/")
    feed(det, 70, start=t)
    assert drain(det) == [("flapping", "resolved", "disk_full:/")]


def test_restore_after_restart_does_not_refire_and_resolves_once() -> None:
    det = make()
    t = feed(det, 2, used=99.0)
    t = _silence(det, t, 40, icmp=False, tcp=False)
    published = det.outbox[:]
    assert [(a.kind, a.status) for a in published] == [("disk_full", "firing"), ("node_down", "firing")]
    det.outbox.clear()

    # A new process: rebuilt from the stream of anomalies, warm-up grace, then the node stays silent.
    again = Detector(config=RuleConfig(), started_at=t)
    for anomaly in published:
        again.restore(Anomaly.model_validate_json(anomaly.to_json()), now=t)
    _silence(again, t, 60, icmp=False, tcp=False)
    assert drain(again) == []  # no burst: both were already firing
    feed(again, 3, start=t + 61, used=50.0)
    assert sorted(drain(again)) == [("disk_full", "resolved", "/"), ("node_down", "resolved", None)]


def test_a_restored_anomaly_of_a_node_never_probed_makes_no_node_and_its_reboot_still_resolves() -> None:
    """A replayed unexpected_reboot of a node no probe is known of: no node (so no silence, no node_down), the
    reboot resolves when its hold ends, and nothing of the node is kept after it."""
    first = make()
    feed(first, 1, node="i-0abc", boot_id="b1")  # an earlier process saw the node reboot
    feed(first, 1, start=T0 + 10, node="i-0abc", boot_id="b2")
    fired = [a for a in first.outbox if a.kind == "unexpected_reboot"]
    assert len(fired) == 1

    det = make()
    det.restore(Anomaly.model_validate_json(fired[0].to_json()), now=T0)
    assert "c1/i-0abc" not in det.nodes
    t = feed(det, 40, start=T0, node="other")  # the feed is alive; 200 s pass, past the hold (120 s)
    assert drain(det) == [("unexpected_reboot", "resolved", None)]
    assert det.restored_only == {}
    assert "c1/i-0abc" not in det.nodes
    feed(det, 40, start=t, node="other")
    assert drain(det) == []  # never found down


def test_an_episode_the_replay_saw_resolved_is_not_raised_again_from_its_probes() -> None:
    """Probes delivered again after a restart (killed before their ack) are judged again: an episode they fired and
    resolved, which the replay of ANOMALIES saw resolved, is not raised a second time; a new episode is."""
    first = make()
    t = feed(first, 1, used=99.0)
    t = feed(first, 2, start=t, used=10.0)
    published = first.outbox[:]
    assert [(a.kind, a.status) for a in published] == [("disk_full", "firing"), ("disk_full", "resolved")]

    again = make()
    for anomaly in published:
        again.restore(Anomaly.model_validate_json(anomaly.to_json()), now=t)
    t2 = feed(again, 1, used=99.0)  # the same probes, judged again
    feed(again, 2, start=t2, used=10.0)
    assert drain(again) == []
    assert again.counters.duplicates == 1
    t3 = feed(again, 1, start=t + 100, used=99.0)  # the disk fills again: a new episode
    feed(again, 2, start=t3, used=10.0)
    assert drain(again) == [("disk_full", "firing", "/"), ("disk_full", "resolved", "/")]


def test_fresh_detector_gives_known_nodes_a_warmup_grace() -> None:
    det = make()
    for i in range(100):
        det.seed_last_probe(agent_probe(t=T0 - 3600, node=f"n{i}"), now=T0)
    for s in range(20):
        det.tick(now=T0 + s)
    assert drain(det) == []  # within the warm-up nobody is declared down


def test_a_node_dark_before_a_restart_is_found_down_on_time_after_it() -> None:
    # a rebuild that read each node's last stored probe: n1 probes on, n2 went dark 30 s before the restart
    det = make()
    det.seed_last_probe(agent_probe(t=T0 - 5, node="n1"), now=T0, stored_at=T0 - 5)
    det.seed_last_probe(agent_probe(t=T0 - 30, node="n2"), now=T0, stored_at=T0 - 30)
    det.seeded(now=T0)
    det.observe_probe(agent_probe(t=T0 + 1, node="n1"), now=T0 + 1)
    det.tick(now=T0 + 1)
    assert [(a.node, a.kind) for a in det.outbox] == [("n2", "node_down")]  # not a silence timeout later
    assert det.outbox[0].fault_onset.timestamp() < T0  # it went dark before the restart


def test_a_rebuild_after_the_whole_feed_stopped_declares_nobody_down() -> None:
    det = make()
    for i in range(100):  # every last stored probe is an hour old: the feed is what stopped
        det.seed_last_probe(agent_probe(t=T0 - 3600, node=f"n{i}"), now=T0, stored_at=T0 - 3600)
    det.seeded(now=T0)
    for s in range(20):
        det.tick(now=T0 + s)
    assert drain(det) == []


def test_sweep_looks_only_at_due_nodes() -> None:
    det = make()
    for i in range(1000):
        det.observe_probe(agent_probe(t=T0, node=f"n{i}"), now=T0)
    looked = sum(det.tick(now=T0 + s * 0.5) for s in range(20))  # 10 s: nobody due yet
    assert looked == 0


def _cloud(*, phase: str, t: float) -> CloudSystemEvent:
    terminal = phase in ("completed", "canceled", "failed", "avoided")
    at = datetime.fromtimestamp(t, tz=UTC)
    return CloudSystemEvent(
        cluster="c1",
        node="n1",
        cloud="alibaba",
        channel="simulator",
        provider_event_id="e-1",
        provider_event_type="SystemMaintenance.Reboot",
        action="reboot",
        cause="planned_maintenance",
        phase=phase,  # type: ignore[arg-type]
        is_terminal=terminal,
        instance_id="i-1",
        published_at=at - timedelta(minutes=5),
        observed_at=at,
    )


def _record(t: float) -> RemediationRecord:
    return RemediationRecord(
        cluster="c1",
        node="n1",
        action_id="a-1",
        action="reboot",
        phase="started",
        reason="test",
        actor="remediator-0",
        time=datetime.fromtimestamp(t, tz=UTC),
    )


def test_a_replica_behind_its_stream_does_not_take_its_own_lag_for_silence() -> None:
    """A replica reading a backlog sees each node's probes a minute apart; that is its lag, not the
    node's silence (at 50,000 nodes a lagging detector once declared most of the fleet down)."""
    det = make()
    t = feed(det, 3)

    def minute(start: float, *, with_agent: bool) -> float:
        for s in range(60):  # the feed itself is alive: other nodes' probes keep arriving
            det.observe_probe(agent_probe(t=start + s, node="other", seq=int(start + s)), now=start + s)
            det.tick(now=start + s)
        end = start + 60
        if with_agent:
            det.observe_probe(agent_probe(t=end, seq=int(end)), now=end)
        return end

    det.feed_lag = 90.0  # the newest probe read was stored 90 s ago
    for _ in range(4):
        t = minute(t, with_agent=True)
    assert drain(det) == []
    det.feed_lag = 0.0  # caught up: a minute without the node's probe is silence
    minute(t, with_agent=False)
    assert drain(det) == [("node_down", "firing", None)]


def test_stream_lag_is_read_from_the_ack_subject() -> None:
    stored = 1_700_000_000.0
    v1 = f"$JS.ACK.PROBES.det.1.42.40.{int(stored * 1e9)}.7"
    v2 = f"$JS.ACK.hub.ACCHASH.PROBES.det.1.42.40.{int(stored * 1e9)}.7.token"
    assert stream_lag(v1, stored + 12.5) == 12.5
    assert stream_lag(v2, stored + 3.0) == 3.0
    assert stream_lag("_INBOX.abc", stored) is None
    assert stream_lag(v1, stored - 1.0) == 0.0  # clock skew never makes a negative lag


def _fleet_round(det: Detector, t: float, nodes: list[str], *, every: float) -> float:
    """Each node's agent probe once, spread over `every` seconds (a fleet probing at that cadence)."""
    step = every / len(nodes)
    for i, name in enumerate(nodes):
        at = t + i * step
        det.observe_probe(agent_probe(t=at, node=name, seq=int(at * 10)), now=at)
        det.tick(now=at)
    return t + every


def test_a_fleet_whose_agents_all_probe_slower_is_not_declared_down_and_a_silent_node_still_is() -> None:
    """The simulator of a fleet too large for its machine stretches every node's cadence evenly, more as
    the machine gets busier (here from the configured 10 s to 30 s): the detector judges silence against
    the cadence the agents really have (the median gap between a node's probes), so the fleet is not
    "down"; a node that stops sending is still found down, after 2.5 of those intervals."""
    det = make()
    nodes = [f"n{i}" for i in range(200)]
    t, every = T0, INTERVAL
    for _ in range(14):
        t = _fleet_round(det, t, nodes, every=every)
        every = min(3 * INTERVAL, every * 1.1)
    for _ in range(11):  # the median of the last 2,048 gaps: ten rounds of 200 nodes
        t = _fleet_round(det, t, nodes, every=every)
    assert drain(det) == []
    assert det.cadence_s == pytest.approx(3 * INTERVAL, rel=0.05)
    # n0 goes silent; the rest keep their 30 s cadence
    last = t - every
    t = _fleet_round(det, t, nodes[1:], every=every)
    assert drain(det) == []  # 30 s: one missed probe is not silence
    for _ in range(3):
        t = _fleet_round(det, t, nodes[1:], every=every)
    out = drain(det)
    assert len(out) == 1 and out[0][0] in ("node_down", "agent_down") and out[0][1] == "firing", out
    assert det.nodes["c1/n0"].silence is not None
    assert t - last > 2.5 * 3 * INTERVAL


def test_a_fleet_probing_at_its_configured_interval_keeps_the_configured_silence_timeout() -> None:
    det = make()
    nodes = [f"n{i}" for i in range(1000)]  # the last 2,048 gaps: about two rounds
    t = T0
    for _ in range(5):
        t = _fleet_round(det, t, nodes, every=INTERVAL)
    assert det.cadence_s == pytest.approx(INTERVAL)
    # no slower than configured (probes come faster: the configured timeout still holds) ...
    for _ in range(5):
        t = _fleet_round(det, t, nodes, every=INTERVAL / 2)
    assert det.cadence_s == INTERVAL
    # ... and never widened beyond `max_cadence_factor` (4×) however slow the agents get
    every = INTERVAL
    for _ in range(30):
        t = _fleet_round(det, t, nodes, every=every)
        every = min(6 * INTERVAL, every * 1.1)
    assert drain(det) == []
    assert det.cadence_s == 4 * INTERVAL


def test_a_fleet_whose_cadence_jumps_past_the_timeout_is_found_silent_once_then_learnt() -> None:
    """Every node's cadence jumps from 10 s to 30 s at once (a simulator's machine suddenly busy): each node
    is found silent once, before the new cadence is known; the gaps across those silences teach it, and
    the storm stops instead of repeating at every round."""
    det = make()
    nodes = [f"n{i}" for i in range(1000)]
    t = T0
    for _ in range(3):
        t = _fleet_round(det, t, nodes, every=INTERVAL)
    for _ in range(3):
        t = _fleet_round(det, t, nodes, every=3 * INTERVAL)
    firing = [a for a in drain(det) if a[1] == "firing"]
    assert 0 < len(firing) <= len(nodes)
    assert det.cadence_s == pytest.approx(3 * INTERVAL, rel=0.05)
    for _ in range(5):
        t = _fleet_round(det, t, nodes, every=3 * INTERVAL)
    assert [a for a in drain(det) if a[1] == "firing"] == []


def test_the_detectors_prober_round_is_the_probers_default() -> None:
    from nodeheal.cloud_events.prober.settings import ProberSettings

    assert RuleConfig().prober_interval_s == ProberSettings().interval_s


def test_an_old_reboot_record_read_late_does_not_explain_a_crash_now() -> None:
    """After a detector restart (or a backlog), its durable AUDIT consumer redelivers records from the past. Each
    one was taken as if it had just happened: an old reboot record read now gave the node 15 more minutes in which
    a crash reboot was counted as ours, with no `unexpected_reboot`. A record now counts from its own time."""
    det = make()
    t = feed(det, 2, boot_id="boot-1")
    det.observe_remediation(_record(t - 7200), now=t)  # a reboot two hours ago, read just now
    feed(det, 2, start=t, boot_id="boot-2")
    assert [(a.kind, a.status) for a in det.outbox] == [("unexpected_reboot", "firing")]


@pytest.mark.parametrize("outage_s", [15.0, 20.0, 30.0])
def test_a_nats_restart_makes_no_healthy_node_silent(outage_s: float) -> None:
    """NATS restarts: for `outage_s` nothing is stored and the detector reads nothing. When it is back, each agent's
    probes arrive only once that agent has reconnected (within a couple of seconds, each at its own moment).
    The input guard only stopped judging after a whole silence timeout without input, and judged again at the first
    probe after it: every node whose agent had not reconnected yet looked silent (outages of 20 s gave about a third
    of a 200-node fleet `node_down` or `agent_down`). Now the service tells the detector when its own connection
    drops and comes back (`lost_feed`, `feed_back`): nothing is judged while it is down, and every node gets a full
    silence timeout from the return."""
    det = make(warmup_s=0.0)
    nodes = [f"n{i}" for i in range(200)]
    phase = {n: (i * 0.05) % INTERVAL for i, n in enumerate(nodes)}
    reconnect = {n: (i * 0.01) % 2.0 for i, n in enumerate(nodes)}
    down_from, back_at = T0 + 100.0, T0 + 100.0 + outage_s
    seq: dict[str, int] = dict.fromkeys(nodes, 0)
    t = T0
    while t < back_at + 120.0:
        for n in nodes:
            # probes go out every INTERVAL; during the outage none is stored; after it, an agent sends again once
            # it has reconnected (its first probe then is the one it kept)
            due = (t - T0 - phase[n]) % INTERVAL < 0.1
            reconnected = t >= back_at + reconnect[n]
            if (t < down_from and due) or (t >= back_at and reconnected and (due or seq[n] < 0)):
                seq[n] = abs(seq[n]) + 1
                det.observe_probe(agent_probe(t=t, node=n, seq=seq[n]), now=t)
            elif down_from <= t < back_at and seq[n] > 0:
                seq[n] = -seq[n]  # a probe is kept in the agent's outbox, sent after its reconnect
        if down_from <= t < back_at and not det.feed_away:
            det.lost_feed()  # the service saw its connection drop (the server it is connected to restarted)
        elif t >= back_at and det.feed_away:
            det.feed_back(now=t)
        det.tick(now=t)
        t = round(t + 0.1, 3)
    assert drain(det) == []


def _fleet_through_a_stream_outage(
    det: Detector, nodes: list[str], *, down_from: float, back_at: float, until: float, dead: frozenset[str]
) -> dict[str, float]:
    """Every node probes every INTERVAL at its own phase, as an agent does; from `down_from` to `back_at` the
    stream stores nothing (its leader lost, another being elected) while the detector's own connection stays up.
    An agent whose probe was refused keeps it and sends it with its next one, an interval later. Each 0.1 s is one
    chunk read, its stored times given to `stream_stored` first, as the service does. `dead` nodes stop probing
    for good at `down_from - 1`. Returns when each node was first found silent."""
    steps = round(INTERVAL / 0.1)  # 0.1 s steps a cadence
    slot = {n: i * steps // len(nodes) for i, n in enumerate(nodes)}  # each node's phase, spread over the cadence
    seq: dict[str, int] = dict.fromkeys(nodes, 0)
    found: dict[str, float] = {}
    k = 0
    while (t := round(T0 + k * 0.1, 3)) < until:
        k += 1
        stored = []
        for n in nodes:
            if (k - 1) % steps != slot[n] or (n in dead and t >= down_from - 1):
                continue
            seq[n] += 1
            if not down_from <= t < back_at:
                stored.append(n)
        if stored:
            det.stream_stored(first=t, last=t, count=len(stored), now=t)
            for n in stored:
                det.observe_probe(agent_probe(t=t, node=n, seq=seq[n]), now=t)
        det.tick(now=t)
        for a in det.outbox:
            if a.kind in ("node_down", "node_hang") and a.status == "firing":
                found.setdefault(a.node, t)
        det.outbox.clear()
    return found


@pytest.mark.parametrize("outage_s", [6.5, 12.0, 40.0])
def test_an_election_of_the_probe_streams_leader_makes_no_healthy_node_silent(outage_s: float) -> None:
    """A server of a cluster that led PROBES dies: the stream stores nothing until another is elected (6.5 s in a
    `--nats-cluster 3 --chaos` demo), the detector's own connection to another server never drops. Each agent
    whose probe fell into it sends that probe with its next one, an interval later; the others' come back the
    moment it stores again. Before, the nodes whose probes fell into the election were judged silent: in the middle
    of it (the input guard waited for a whole silence timeout without input), or at the first probes after it (a
    fifth of a 300-node demo went `node_down`, read as rack and zone partitions; at this 10 s cadence it takes an
    outage longer than half a cadence, 12 s and 40 s here, while 6.5 s stays a check). A node dead before the outage
    is still found down, late by no more than the pause (and the sweep's next look)."""
    det = make(warmup_s=0.0)
    nodes = [f"n{i}" for i in range(200)]
    down_from = T0 + 100.0
    found = _fleet_through_a_stream_outage(
        det, nodes, down_from=down_from, back_at=down_from + outage_s, until=down_from + 150, dead=frozenset({"n7"})
    )
    assert sorted(found) == ["n7"]
    timeout = INTERVAL * RuleConfig().down_after_missed
    # judged as if the stream had not paused: its own timeout, plus the pause (and the sweep's next look, 5 s)
    assert found["n7"] <= down_from - 1 + timeout + outage_s + RuleConfig().silence_recheck_s
    assert det.counters.feed_pauses == 1


def test_without_a_stream_outage_a_dead_node_is_found_on_time_and_no_pause_is_taken() -> None:
    """The fleet's own gaps between stored probes (a small fleet's are seconds long) are no outage: a node that
    stops is found down one silence timeout after its last probe, as before."""
    for size in (3, 40, 200):
        det = make(warmup_s=0.0)
        nodes = [f"n{i}" for i in range(size)]
        down_from = T0 + 100.0
        found = _fleet_through_a_stream_outage(
            det, nodes, down_from=down_from, back_at=down_from, until=down_from + 60, dead=frozenset({"n1"})
        )
        timeout = INTERVAL * RuleConfig().down_after_missed
        assert sorted(found) == ["n1"], size
        assert found["n1"] <= down_from - 1 + timeout + 0.2, size
        assert det.counters.feed_pauses == 0, size


def test_a_fleet_that_mostly_dies_at_once_is_found_down_within_one_more_timeout() -> None:
    """290 of 300 nodes lose power together: the survivors' probes leave gaps the stream's recent rate (still the
    whole fleet's) takes for pauses, for about one cadence, and no silence counts them. The dead are still found,
    at most one cadence and one timeout later than their own timeout."""
    det = make(warmup_s=0.0)
    nodes = [f"n{i}" for i in range(300)]
    dead = frozenset(nodes[10:])
    down_from = T0 + 100.0
    found = _fleet_through_a_stream_outage(
        det, nodes, down_from=down_from, back_at=down_from, until=down_from + 120, dead=dead
    )
    timeout = INTERVAL * RuleConfig().down_after_missed
    assert set(found) == dead
    assert max(found.values()) <= down_from - 1 + INTERVAL + 2 * timeout + 0.2


# ---------------------------------------------------------------- an older agent probe delivered again


def test_an_older_probe_after_a_newer_one_does_not_fire_a_second_reboot() -> None:
    """A probe older than one already judged (delivered again after `ack_wait`, `_unfinished`'s leftovers) is
    no news: judged as new, its boot id flipped back and fired an unexpected_reboot that never happened."""
    det = Detector(config=RuleConfig(), started_at=T0 - 1000)
    det.observe_probe(agent_probe(t=T0, seq=1, boot_id="A"), now=T0)
    det.observe_probe(agent_probe(t=T0 + 10, seq=2, boot_id="B"), now=T0 + 10)  # the real reboot
    assert [(a.kind, a.status) for a in det.outbox] == [("unexpected_reboot", "firing")]
    det.outbox.clear()
    det.tick(now=T0 + 200)  # the reboot's hold ends: resolved
    det.outbox.clear()
    duplicates = det.counters.duplicates
    det.observe_probe(agent_probe(t=T0, seq=1, boot_id="A"), now=T0 + 201)  # boot A's probe, again
    assert [(a.kind, a.status) for a in det.outbox] == []
    assert det.nodes["c1/n1"].boot_id == "B"
    assert det.counters.duplicates == duplicates + 1


def test_a_dead_nodes_old_probe_delivered_again_does_not_reopen_its_outage() -> None:
    """A dead node's last probes delivered again are no sign of life: node_down must not resolve and then fire
    again under a new onset (a second episode, a second repair downstream)."""
    det = Detector(config=RuleConfig(), started_at=T0 - 1000)
    for i in range(3):
        det.observe_probe(agent_probe(t=T0 + 5 * i, seq=i + 1), now=T0 + 5 * i)
    for i in range(3, 25):  # another node keeps the feed alive
        det.observe_probe(agent_probe(t=T0 + 5 * i, seq=i + 1, node="other"), now=T0 + 5 * i)
        det.tick(now=T0 + 5 * i)
    assert [(a.kind, a.status) for a in det.outbox if a.node == "n1"] == [("node_down", "firing")]
    det.outbox.clear()
    det.observe_probe(agent_probe(t=T0 + 5, seq=2), now=T0 + 125)  # probe 2, two minutes old, again
    for i in range(25, 45):
        det.observe_probe(agent_probe(t=T0 + 5 * i, seq=i + 1, node="other"), now=T0 + 5 * i)
        det.tick(now=T0 + 5 * i)
    assert [(a.kind, a.status) for a in det.outbox if a.node == "n1"] == []


def test_an_older_probe_does_not_clear_a_condition_a_newer_one_raised() -> None:
    det = Detector(config=RuleConfig(threshold_probes=1, clear_probes=1), started_at=T0 - 1000)
    det.observe_probe(agent_probe(t=T0, seq=1, used=10.0), now=T0)
    det.observe_probe(agent_probe(t=T0 + 5, seq=2, used=99.0), now=T0 + 5)
    assert [(a.kind, a.status) for a in det.outbox] == [("disk_full", "firing")]
    det.outbox.clear()
    det.observe_probe(agent_probe(t=T0, seq=1, used=10.0), now=T0 + 6)  # the older, healthy probe again
    assert det.outbox == []


# ---------------------------------------------------------------- a cloud event never makes a node


def test_an_unmapped_cloud_event_makes_no_phantom_node_that_goes_down() -> None:
    """ingest publishes an event for an instance not in the inventory under node=<instance id>,
    node_mapped=False. Unpartitioned (adopt_unknown), the detector tracked that name as a node: it never
    probes, so node_down fired for a machine that is not a node (and again after each restart)."""
    det = Detector(config=RuleConfig(), started_at=T0 - 1000)
    event = _cloud(phase="scheduled", t=T0).model_copy(update={"node": "i-0abc", "node_mapped": False})
    det.observe_cloud(event, now=T0)
    for i in range(1, 40):  # the real fleet probes on
        det.observe_probe(agent_probe(t=T0 + 5 * i, seq=i, node="real"), now=T0 + 5 * i)
        det.tick(now=T0 + 5 * i)
    assert [(a.node, a.kind, a.status) for a in det.outbox if a.node == "i-0abc"] == []
    assert "c1/i-0abc" not in det.nodes
    det.observe_probe(agent_probe(t=T0 + 300, seq=1, node="i-0abc"), now=T0 + 300)
    assert det.nodes["c1/i-0abc"].cloud is None  # not parked either: it was no node's event


def test_a_cloud_event_for_a_node_not_probed_yet_waits_for_its_first_probe() -> None:
    """Unpartitioned too, a cloud event for a node not known yet does not create it (nothing would ever
    probe a name known only from an event: node_down for it): parked, and applied at its first probe."""
    det = Detector(config=RuleConfig(), started_at=T0 - 1000)
    det.observe_cloud(_cloud(phase="in_progress", t=T0), now=T0)
    for i in range(1, 40):
        det.observe_probe(agent_probe(t=T0 + 5 * i, seq=i, node="other"), now=T0 + 5 * i)
        det.tick(now=T0 + 5 * i)
    assert [a for a in det.outbox if a.node == "n1"] == []
    assert "c1/n1" not in det.nodes
    det.observe_probe(agent_probe(t=T0 + 200, seq=1), now=T0 + 200)
    assert [(a.kind, a.status, a.subject) for a in det.outbox if a.node == "n1"] == [
        ("cloud_maintenance", "firing", "reboot:e-1")
    ]


def test_a_stream_pause_is_forgotten_two_timeouts_after_it_ended() -> None:
    """A pause no longer decides anything two silence timeouts after it ended: the sweep drops it and computes no
    credit for anyone after that."""
    det = make(warmup_s=0.0)
    nodes = [f"n{i}" for i in range(200)]
    down_from = T0 + 100.0
    _fleet_through_a_stream_outage(
        det, nodes, down_from=down_from, back_at=down_from + 12.0, until=down_from + 40, dead=frozenset()
    )
    assert det.counters.feed_pauses == 1 and len(det._pauses) == 1
    timeout = INTERVAL * RuleConfig().down_after_missed
    det.tick(now=down_from + 12.0 + 2 * timeout + 1.0)
    assert len(det._pauses) == 0
