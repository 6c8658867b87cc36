"""The decision table on scenario sequences (pure Diagnoser, no broker)."""

from __future__ import annotations

from datetime import timedelta

from nodeheal.diagnoser.kb import default_matcher
from nodeheal.diagnoser.reasoning import Diagnoser, DiagnoserConfig
from nodeheal.schemas import Diagnosis, RemediationRecord
from tests.unit.diagnoser.scenarios import CLUSTER, OOPS_A, OOPS_B, anomaly, cloud_event, inventory, later, sample_lines


def make(nodes: int = 10, racks: int = 2) -> Diagnoser:
    # a 5 s lone hold: these tests are about the verdicts; the default hold is test_domain_hold.py's
    diag = Diagnoser(matcher=default_matcher(), config=DiagnoserConfig(node_down_hold=timedelta(seconds=5)))
    for i in range(nodes):
        diag.on_inventory(inventory(f"n{i}", rack=f"r{i % racks}", zone="z1"))
    return diag


def run(diag: Diagnoser, node: str, now_s: float) -> Diagnosis:
    out = diag.evaluate(f"{CLUSTER}/{node}", now=later(now_s))
    assert out.diagnosis is not None, out
    return out.diagnosis


def actions(d: Diagnosis) -> list[str]:
    return [r.action for r in d.recommended]


def test_not_ready_during_a_host_redeploy_is_ops() -> None:
    diag = make()
    diag.on_cloud_event(cloud_event("n1", action="redeploy", phase="in_progress"))
    diag.on_anomaly(anomaly("n1", "node_not_ready", at=later(5)))
    d = run(diag, "n1", 6)
    assert (d.cause, d.category) == ("host_maintenance_redeploy", "ops")
    assert actions(d)[0] == "wait_for_cloud_event" and "reboot" not in actions(d)


def test_kubelet_crash_loop_is_software_with_restart_first() -> None:
    diag = make()
    diag.on_anomaly(anomaly("n1", "service_down", subject="kubelet"))
    diag.on_anomaly(anomaly("n1", "node_not_ready", at=later(2)))
    d = run(diag, "n1", 3)
    assert (d.cause, d.category) == ("kubelet_down", "software")
    assert actions(d)[:3] == ["restart_service", "cordon", "drain"]
    assert d.recommended[0].target == "kubelet"


def test_rack_dropping_off_the_network_is_a_partition_with_no_reboot() -> None:
    diag = make(nodes=12, racks=2)  # rack r0: n0 n2 n4 n6 n8 n10
    for i, node in enumerate(["n0", "n2"]):
        diag.on_anomaly(anomaly(node, "node_down", at=later(i * 0.2)))
    # two dark nodes: the rack may be going dark, the verdict waits for it to be quiet for 15 s
    assert diag.evaluate(f"{CLUSTER}/n0", now=later(0.3)).hold_until == later(0.2 + 15)
    # four of six: a partition already, which no later arrival can change — judged at once
    for i, node in enumerate(["n4", "n6"], start=2):
        diag.on_anomaly(anomaly(node, "node_down", at=later(i * 0.2)))
    d = run(diag, "n0", 0.7)
    assert (d.cause, d.category) == ("rack_partition", "network")
    assert actions(d) == ["escalate"]


def test_single_node_down_with_healthy_peers_is_a_node_crash_after_the_hold() -> None:
    diag = make()
    diag.on_anomaly(anomaly("n3", "node_down"))
    assert diag.evaluate(f"{CLUSTER}/n3", now=later(1)).diagnosis is None
    d = run(diag, "n3", 5.5)
    assert d.cause == "node_crash" and "reboot" in actions(d)


def test_node_down_diagnosis_is_updated_when_the_rack_burst_shows_up_later() -> None:
    diag = make(nodes=12, racks=2)
    diag.on_anomaly(anomaly("n0", "node_down"))
    assert run(diag, "n0", 5.5).cause == "node_crash"
    touched: set[str] = set()
    for i, node in enumerate(["n2", "n4", "n6"]):
        touched |= diag.on_anomaly(anomaly(node, "node_down", at=later(6 + i)))
    assert f"{CLUSTER}/n0" in touched
    assert run(diag, "n0", 9).cause == "rack_partition"


def test_ext4_errors_after_nvme_io_errors_are_a_disk_failure() -> None:
    diag = make()
    diag.on_anomaly(anomaly("n1", "kernel_fault", subject="hardware", lines=sample_lines("nvme_disk_io_error", 0)))
    fs = ["EXT4-fs error (device nvme2n1p1): ext4_find_entry:1455: inode #2: comm ls: reading directory lblock 0"]
    diag.on_anomaly(anomaly("n1", "kernel_fault", subject="filesystem", lines=fs, at=later(3)))
    d = run(diag, "n1", 4)
    assert (d.cause, d.category) == ("disk_failure", "hardware")
    assert "redeploy" in actions(d) and "reboot" not in actions(d)


def test_ext4_errors_without_io_errors_are_filesystem_corruption() -> None:
    diag = make()
    diag.on_anomaly(anomaly("n1", "kernel_fault", subject="filesystem", lines=sample_lines("ext4_error", 1)))
    d = run(diag, "n1", 1)
    assert (d.cause, d.category) == ("filesystem_corruption", "kernel")


def test_different_crash_signatures_on_one_host_point_at_hardware() -> None:
    diag = make()
    diag.on_anomaly(anomaly("n1", "kernel_fault", subject="crash", lines=OOPS_A))
    assert run(diag, "n1", 1).category == "kernel"
    diag.on_anomaly(anomaly("n1", "kernel_fault", subject="crash", status="resolved"))
    diag.evaluate(f"{CLUSTER}/n1", now=later(200))
    diag.on_anomaly(anomaly("n1", "kernel_fault", subject="crash", lines=OOPS_B, at=later(3600)))
    d = run(diag, "n1", 3601)
    assert (d.cause, d.category) == ("heterogeneous_crashes", "hardware")


def test_one_signature_on_many_hosts_is_a_kernel_defect() -> None:
    diag = make()
    for i in range(4):
        diag.on_anomaly(anomaly(f"n{i}", "kernel_fault", subject="crash", lines=OOPS_A, at=later(i)))
    d = run(diag, "n3", 5)
    assert (d.cause, d.category) == ("kernel_oops_null_deref", "kernel")
    assert d.crash_signature is not None and d.crash_signature.rip_func == "tcp_v4_rcv"
    assert any(e.kind == "fleet" for e in d.evidence)


def test_pending_approval_event_is_drained_then_accepted() -> None:
    diag = make()
    diag.on_cloud_event(cloud_event("n1", phase="pending_approval", not_before=later(86400)))
    diag.on_anomaly(anomaly("n1", "cloud_maintenance", subject="e-1"))
    d = run(diag, "n1", 1)
    assert actions(d)[:3] == ["cordon", "drain", "accept_cloud_event"]


def test_imminent_host_reboot_replaces_our_reboot_with_waiting() -> None:
    diag = make()
    diag.on_cloud_event(cloud_event("n1", action="reboot", phase="scheduled", not_before=later(600)))
    diag.on_anomaly(anomaly("n1", "node_hang"))
    d = run(diag, "n1", 5)
    assert d.cause == "node_hang"
    assert "reboot" not in actions(d) and "wait_for_cloud_event" in actions(d)


def test_repeated_hardware_failures_escalate() -> None:
    diag = make()
    for i in range(3):
        diag.on_audit(
            RemediationRecord(
                cluster=CLUSTER, node="n1", action_id=f"a{i}", action="reboot", phase="succeeded", reason="x",
                actor="r", time=later(-3600 + i * 60),
            )
        )  # fmt: skip
    diag.on_anomaly(anomaly("n1", "kernel_fault", subject="hardware", lines=sample_lines("mce_fatal_panic")))
    d = run(diag, "n1", 1)
    assert d.category == "hardware"
    assert actions(d) == ["cordon", "escalate"]


def test_resolution_publishes_a_resolved_update_once() -> None:
    diag = make()
    diag.on_anomaly(anomaly("n1", "disk_full", subject="/"))
    first = run(diag, "n1", 1)
    assert first.cause == "disk_full" and actions(first)[0] == "clean_disk"
    # what to clean, in the agent's allow-list terms, not the full mount point ("/" is always refused)
    assert first.recommended[0].target == "container-images,/var/log/pods,journal"
    assert first.episode_id == first.anomaly_ids[0]
    assert diag.evaluate(f"{CLUSTER}/n1", now=later(2)).diagnosis is None  # unchanged → nothing new
    diag.on_anomaly(anomaly("n1", "disk_full", subject="/", status="resolved", at=later(30), onset=later(0)))
    resolved = run(diag, "n1", 31)
    assert resolved.resolved and resolved.cause == "disk_full"
    assert diag.evaluate(f"{CLUSTER}/n1", now=later(32)).diagnosis is None


def test_redelivered_anomaly_changes_nothing_and_ids_are_deterministic() -> None:
    a, b = make(), make()
    for diag in (a, b):
        diag.on_anomaly(anomaly("n1", "service_down", subject="containerd"))
    da, db = run(a, "n1", 1), run(b, "n1", 1 + timedelta(seconds=0).total_seconds())
    assert da.id == db.id and da.cause == "container_runtime_down"
    assert a.on_anomaly(anomaly("n1", "service_down", subject="containerd")) == set()


def test_a_long_partition_still_reads_as_a_partition_when_re_evaluated_late() -> None:
    diag = make(nodes=12, racks=2)
    for i, node in enumerate(["n0", "n2", "n4", "n6"]):
        diag.on_anomaly(anomaly(node, "node_down", at=later(i * 0.2)))
    assert run(diag, "n0", 16).cause == "rack_partition"
    diag.on_anomaly(anomaly("n0", "flapping", at=later(3600)))  # an hour later, something new fires
    d = diag.evaluate(f"{CLUSTER}/n0", now=later(3601)).diagnosis
    assert d is None or d.cause == "rack_partition"


def test_downtime_after_our_own_reboot_is_planned_even_while_the_original_fault_still_fires() -> None:
    """An OOM led to our reboot; the node_down that follows is ours, not a new crash (found in the demo).
    Inside the OOM's open episode nothing is said at all: the OOM verdict stands while the remediator
    verifies its reboot (the chaos demo: "planned_reboot" superseded the ladder with "none", and the OOM
    verdict said again when the node came back had its first id — dropped as a duplicate by JetStream —,
    so the ladder ended escalated as exhausted). A node with no open episode is told planned_reboot."""
    diag = make()
    diag.on_anomaly(anomaly("n1", "kernel_fault", subject="software", lines=sample_lines("oom_killer")))
    first = run(diag, "n1", 1)
    assert first.cause == "oom_killer"
    reboot = {"action": "reboot", "phase": "started", "reason": "x", "actor": "r", "time": later(20)}
    diag.on_audit(RemediationRecord(cluster=CLUSTER, node="n1", action_id="a1", **reboot))
    down = anomaly("n1", "node_down", at=later(30))
    for key in diag.on_anomaly(down):
        assert diag.evaluate(key, now=later(35)).diagnosis is None  # neither planned_reboot nor a crash
    back = anomaly("n1", "node_down", at=later(50), status="resolved", onset=down.fault_onset)
    for key in diag.on_anomaly(back):
        assert diag.evaluate(key, now=later(51)).diagnosis is None  # the OOM verdict still stands

    diag.on_audit(RemediationRecord(cluster=CLUSTER, node="n2", action_id="a2", **reboot))
    diag.on_anomaly(anomaly("n2", "node_down", at=later(30)))
    d = run(diag, "n2", 35)
    assert (d.cause, d.category) == ("planned_reboot", "ops")
    assert actions(d) == ["none"]


def test_a_node_down_before_our_action_is_not_excused_by_it() -> None:
    diag = make()
    diag.on_anomaly(anomaly("n1", "kernel_fault", subject="software", lines=sample_lines("oom_killer"), at=later(0)))
    diag.on_anomaly(anomaly("n1", "node_down", at=later(5)))
    diag.on_audit(
        RemediationRecord(
            cluster=CLUSTER, node="n1", action_id="a1", action="reboot", phase="started", reason="x",
            actor="r", time=later(20),
        )
    )  # fmt: skip
    d = run(diag, "n1", 25)
    assert d.cause != "planned_reboot"


def test_a_partition_first_read_as_crashes_does_not_become_a_crash_rate_finding() -> None:
    diag = make(nodes=12, racks=2)  # rack r0: n0 n2 n4 n6 n8 n10
    diag.on_anomaly(anomaly("n0", "node_down", at=later(0)))
    assert run(diag, "n0", 5).cause == "node_crash"  # alone after the hold
    for i, node in enumerate(["n2", "n4", "n6"]):
        diag.on_anomaly(anomaly(node, "node_down", at=later(6 + i * 0.2)))
    for node in ["n0", "n2", "n4", "n6"]:
        diag.evaluate(f"{CLUSTER}/{node}", now=later(12))
    assert all(not k.endswith("|category:hardware") for k in diag.fleet.fault_events)
    findings, _ = diag.correlate(now=later(13), cluster=CLUSTER)
    assert not [f for f in findings if f.kind == "rate_outlier"]


def test_one_burst_with_several_reports_is_one_crash_not_failing_hardware() -> None:
    """The hard-lockup sample carries a hard lockup and the other CPUs' soft lockups: one crash."""
    diag = make()
    diag.on_anomaly(anomaly("n1", "kernel_fault", subject="kernel", lines=sample_lines("hard_lockup")))
    d = run(diag, "n1", 1)
    assert d.cause == "hard_lockup"
    assert d.category == "kernel"


def test_fd_exhaustion_restarts_the_descriptor_holder_never_a_guessed_kubelet() -> None:
    diag = make()
    diag.on_anomaly(anomaly("n1", "fd_exhaustion"))
    d = run(diag, "n1", 1)
    assert d.cause == "fd_exhaustion"
    assert [(r.action, r.target) for r in d.recommended] == [("restart_service", "fd-holder"), ("escalate", None)]


def _zone_of_three_racks() -> Diagnoser:
    diag = Diagnoser(matcher=default_matcher(), config=DiagnoserConfig(node_down_hold=timedelta(seconds=5)))
    for i in range(30):  # racks r0 r1 r2 of ten nodes each, one zone
        diag.on_inventory(inventory(f"n{i}", rack=f"r{i // 10}", zone="z1"))
    return diag


def test_a_zone_going_dark_across_its_racks_is_a_zone_partition() -> None:
    diag = _zone_of_three_racks()
    for i, node in enumerate(["n0", "n1", "n2", "n10", "n11", "n20", "n21", "n22", "n12", "n3"]):
        diag.on_anomaly(anomaly(node, "node_down", at=later(i * 0.5)))
    d = run(diag, "n10", 60)
    assert (d.cause, d.category) == ("zone_partition", "network")


def test_a_hang_next_to_a_partitioned_rack_is_not_absorbed_by_its_zone() -> None:
    # seed 7's lost fault: a whole rack drops off the network (a third of the zone), and a node of the
    # next rack hangs a few seconds later; its own rack is up, so it is a node fault, not the network
    diag = _zone_of_three_racks()
    for i in range(10):
        diag.on_anomaly(anomaly(f"n{i}", "node_down", at=later(i * 0.3)))
    assert run(diag, "n0", 40).cause == "rack_partition"
    diag.on_anomaly(anomaly("n14", "node_hang", at=later(8)))
    d = run(diag, "n14", 60)
    assert d.category != "network" and "zone_partition" not in d.cause


def test_a_dead_service_seen_only_in_its_log_lines_is_restarted_by_its_unit() -> None:
    """A kubelet or runtime crash found in the journal / kernel lines (before any full probe says the
    unit is down) names the unit to restart; the demo saw `restart_service` sent with no unit, refused by
    the agent, and the ladder went on to cordon, drain and reboot for a kubelet crash."""
    cases = [
        (
            ["systemd[1]: kubelet.service: Main process exited, code=exited, status=255/n/a"],
            "kubelet_down",
            "kubelet",
        ),
        (
            ["systemd[1]: containerd.service: Main process exited, code=killed, status=9/KILL"],
            "container_runtime_down",
            "containerd",
        ),
        (  # the kubelet's view: the unit comes from the CRI socket it cannot reach
            [
                'E0412 09:12:01.000000    1234 remote_runtime.go:116] "RunPodSandbox from runtime service failed"'
                ' err="rpc error: code = Unavailable desc = connection error: desc = \\"transport: Error while'
                ' dialing dial unix /run/crio/crio.sock: connect: connection refused\\""',
                "I0412 09:12:01.000000    1234 kubelet.go:2341] skipping pod synchronization - [container runtime is down]",
            ],
            "container_runtime_down",
            "crio",
        ),
        (  # no unit and no socket in the line: the cause's usual unit
            [
                "I0229 18:37:39.342791    4318 kubelet.go:2341] skipping pod synchronization - [container runtime is down]"
            ],
            "container_runtime_down",
            "containerd",
        ),
    ]
    for lines, cause, unit in cases:
        diag = make()
        diag.on_anomaly(anomaly("n1", "kernel_fault", subject="journal", lines=lines))
        d = run(diag, "n1", 1)
        assert d.cause == cause, (lines, d.cause)
        assert actions(d)[0] == "restart_service"
        assert d.recommended[0].target == unit, (lines, d.recommended[0].target)


def test_a_dead_runtime_named_by_no_line_restarts_the_runtime_the_node_reports() -> None:
    """The kubelet's `container runtime is down` names no unit and no socket: the unit comes from the
    runtime the node's kubelet reports (`nodeInfo.containerRuntimeVersion` in the inventory), so a CRI-O
    or docker node is not sent a `systemctl restart containerd` its agent refuses."""
    line = "I0229 18:37:39.342791    4318 kubelet.go:2341] skipping pod synchronization - [container runtime is down]"
    for runtime, unit in [("cri-o", "crio"), ("docker", "docker"), ("containerd", "containerd"), (None, "containerd")]:
        diag = make()
        diag.on_inventory(inventory("n1").model_copy(update={"container_runtime": runtime}))
        diag.on_anomaly(anomaly("n1", "kernel_fault", subject="journal", lines=[line]))
        d = run(diag, "n1", 1)
        assert d.cause == "container_runtime_down"
        assert d.recommended[0].action == "restart_service" and d.recommended[0].target == unit, (
            runtime,
            d.recommended,
        )


def test_a_host_event_announced_days_ahead_does_not_swallow_a_kernel_panic_now() -> None:
    """A host reboot announced ten days ahead keeps `cloud_maintenance` firing on the node from the announcement on.
    That alone made every later fault of the node read as the host maintenance (`cloud_maintenance` in the firing
    kinds explained everything): a kernel panic three days later was never diagnosed, the node left dark for a
    week. An announced event now explains only itself; the panic is diagnosed as one."""
    diag = make()
    diag.on_cloud_event(cloud_event("n1", action="reboot", phase="scheduled", not_before=later(10 * 86400)))
    diag.on_anomaly(anomaly("n1", "cloud_maintenance", subject="e-1"))
    first = run(diag, "n1", 1)
    assert first.cause.startswith("host_maintenance")
    three_days = 3 * 86400
    diag.on_anomaly(
        anomaly("n1", "kernel_fault", subject="panic", lines=sample_lines("kernel_panic"), at=later(three_days))
    )
    diag.on_anomaly(anomaly("n1", "node_down", at=later(three_days + 20)))
    d = run(diag, "n1", three_days + 120)
    assert d is not None and not d.cause.startswith("host_maintenance"), d
    assert d.category in ("kernel", "hardware", "unknown"), d.category


def test_a_crash_after_our_reboot_was_verified_is_not_our_reboot() -> None:
    """Our reboot of the node was verified healthy; twenty minutes later the same kernel bug hangs it and it goes
    dark. Every downtime within 30 minutes of our own reboot was taken for that reboot (`planned_reboot`, ladder
    `none`), and nothing looked at the node again: it stayed dark. Downtime that began after the reboot was verified
    is a new fault."""
    diag = make()

    def record(phase: str, at_s: float) -> RemediationRecord:
        return RemediationRecord(
            cluster=CLUSTER, node="n1", action_id="a-reboot", action="reboot", phase=phase, reason="x", actor="r",
            time=later(at_s),
        )  # fmt: skip

    for phase, at_s in (("started", 0), ("succeeded", 5), ("verified", 120)):
        diag.on_audit(record(phase, at_s))
    diag.on_anomaly(anomaly("n1", "node_down", at=later(1200), onset=later(1190)))
    d = run(diag, "n1", 1300)
    assert d.cause != "planned_reboot" and "reboot" in actions(d), (d.cause, actions(d))


def test_downtime_while_our_reboot_runs_is_still_ours() -> None:
    diag = make()
    diag.on_audit(
        RemediationRecord(
            cluster=CLUSTER, node="n1", action_id="a-reboot", action="reboot", phase="started", reason="x", actor="r",
            time=later(0),
        )
    )  # fmt: skip
    diag.on_anomaly(anomaly("n1", "node_down", at=later(30), onset=later(20)))
    d = run(diag, "n1", 60)
    assert d.cause == "planned_reboot" and actions(d) == ["none"]
