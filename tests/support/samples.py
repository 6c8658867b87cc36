"""One fully populated instance of every message model, for round-trip and contract tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from nodeheal.schemas import (
    AckOption,
    Anomaly,
    CloudSystemEvent,
    CrashSignature,
    DeadLetter,
    Diagnosis,
    Evidence,
    FileHandles,
    FileSystem,
    FleetCorrelation,
    LoadAverage,
    NodeCommand,
    NodeCommandResult,
    NodeInventory,
    NodeProbe,
    PolicyCheck,
    ProberResult,
    ProberResults,
    Reachability,
    RecommendedAction,
    RemediationRecord,
    ServiceState,
)

T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)


def all_samples() -> list[BaseModel]:
    evidence = Evidence(kind="probe", summary="kubelet inactive", value="inactive", ref="p1", observed_at=T0)
    return [
        NodeProbe(
            cluster="prod-1",
            node="cn-hangzhou.10.0.0.1",
            source="agent",
            seq=42,
            boot_id="b-1",
            uptime_s=3600.5,
            reachability=(Reachability(check="tcp", target="10.0.0.1:22", ok=True, latency_ms=0.4),),
            load=LoadAverage(load1=1.5, load5=1.0, load15=0.5),
            cpu_count=64,
            filesystems=(FileSystem(mount="/", device="/dev/nvme0n1p1", used_pct=71.2, inodes_used_pct=3.0),),
            file_handles=FileHandles(allocated=1024, max=1_000_000),
            services=(ServiceState(name="kubelet", state="active", restarts=0, healthy=True),),
            kernel_log=("EXT4-fs error (device sda1): ext4_find_entry:1455: inode #2",),
            kernel_release="5.10.134-16.al8.x86_64",
            os_image="Alibaba Cloud Linux 3",
            ready=True,
        ),
        CloudSystemEvent(
            cluster="prod-1",
            node="n1",
            cloud="alibaba",
            channel="cms_notification",
            provider_event_id="e-bp1",
            provider_event_type="SystemMaintenance.Redeploy",
            provider_status="Scheduled",
            action="redeploy",
            cause="planned_maintenance",
            phase="scheduled",
            is_terminal=False,
            instance_id="i-bp1",
            region="cn-hangzhou",
            published_at=T0,
            not_before=T0 + timedelta(hours=24),
            severity="critical",
            ack=(AckOption(method="alibaba.RedeployInstance", valid_until=T0 + timedelta(hours=24)),),
            local_data_loss=True,
            observed_at=T0,
            raw={"content": {"eventId": "e-bp1"}},
        ),
        Anomaly(
            cluster="prod-1",
            node="n1",
            anomaly_key="n1/service_down/kubelet",
            kind="service_down",
            status="firing",
            severity="major",
            subject="kubelet",
            fault_onset=T0,
            detected_at=T0 + timedelta(seconds=5),
            evidence=(evidence,),
            probe_ids=("p1",),
        ),
        Diagnosis(
            cluster="prod-1",
            node="n1",
            anomaly_ids=("a1",),
            anomaly_kinds=("kernel_fault",),
            category="kernel",
            cause="kernel_panic",
            confidence=0.9,
            evidence=(evidence,),
            kernel_classes=("kernel_panic",),
            crash_signature=CrashSignature(
                kind="panic", bucket="abc", rip_func="tcp_v4_rcv", top_frames=("ip_rcv",), taint="G"
            ),
            fleet_correlation=FleetCorrelation(
                finding_id="f1",
                dimension="kernel",
                value="5.10.1",
                group_rate=0.1,
                fleet_rate=0.01,
                ratio=10.0,
                p_value=1e-6,
                affected_nodes=12,
            ),
            recommended=(RecommendedAction(action="reboot", reason="kernel panic", timeout_s=600),),
            fault_onset=T0,
            identified_at=T0 + timedelta(seconds=8),
        ),
        RemediationRecord(
            cluster="prod-1",
            node="n1",
            action_id="act-1",
            action="reboot",
            phase="intent",
            reason="kernel panic",
            checks=(PolicyCheck(name="budget.zone", passed=True, detail="1/5"),),
            actor="remediator-0",
            lease_revision=7,
            diagnosis_id="d1",
            rung=2,
            trace_id="0af7651916cd43dd",
            started_at=T0,
        ),
        NodeCommand(cluster="prod-1", node="n1", command="restart_service", target="kubelet", action_id="act-2"),
        NodeCommandResult(action_id="act-2", node="n1", ok=True, detail="restarted"),
        DeadLetter.of(service="detector", reason="bad json", raw=b"\xff\x00", subject="x.y"),
        NodeInventory(
            cluster="prod-1",
            node="n1",
            instance_id="i-bp1",
            zone="cn-hangzhou-h",
            rack="r12",
            machine_model="ecs.ebmg7.32xlarge",
            kernel="5.10.134",
            labels={"pool": "gpu"},
        ),
        ProberResults(
            cluster="c1",
            node="_r0",
            seq=12,
            results=(
                ProberResult(
                    node="n1",
                    reachability=(Reachability(check="tcp", target="10.0.0.1:10250", ok=True, latency_ms=0.4),),
                    ready=True,
                ),
                ProberResult(
                    node="n2",
                    reachability=(
                        Reachability(
                            check="kubelet_healthz", target="https://10.0.0.2:10250/healthz", ok=False, error="HTTP 500"
                        ),
                    ),
                ),
            ),
        ),
    ]
