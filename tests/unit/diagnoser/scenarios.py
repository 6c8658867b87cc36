"""Builders for diagnoser scenarios, shared by the unit tests (pure `Diagnoser`) and the integration
tests (the same messages published into a real nats-server)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nodeheal.schemas import Anomaly, CloudSystemEvent, Evidence, NodeInventory
from nodeheal.schemas.ids import deterministic_id

T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
CLUSTER = "prod-1"
# the labelled real samples (tests/data/README.md names their public sources)
SAMPLES = Path(__file__).resolve().parents[2] / "data" / "kernel-log-samples.jsonl"


def samples_path() -> Path:
    return SAMPLES


def load_samples() -> list[tuple[int, str, list[str]]]:
    out = []
    for number, text in enumerate(samples_path().read_text().splitlines(), 1):
        if text.strip():
            row = json.loads(text)
            out.append((number, row["class"], list(row["lines"])))
    return out


def sample_lines(cls: str, index: int = 0) -> list[str]:
    return [lines for _, c, lines in load_samples() if c == cls][index]


def inventory(
    node: str, *, rack: str = "r1", zone: str = "z1", kernel: str = "5.10.134", model: str = "m1"
) -> NodeInventory:
    return NodeInventory(
        cluster=CLUSTER,
        node=node,
        instance_id=f"i-{node}",
        zone=zone,
        rack=rack,
        machine_model=model,
        cpu_model="cpu-a",
        os_image="os-1",
        kernel=kernel,
        node_pool="pool-a",
    )


def anomaly(
    node: str,
    kind: str,
    *,
    at: datetime = T0,
    subject: str | None = None,
    status: str = "firing",
    lines: list[str] | None = None,
    expected: bool = False,
    onset: datetime | None = None,
) -> Anomaly:
    key = f"{CLUSTER}/{node}/{kind}/{subject or '-'}"
    fault_onset = onset or at
    evidence: tuple[Evidence, ...] = ()
    if lines is not None:
        evidence = (
            Evidence(
                kind="kernel_log",
                summary=f"{len(lines)} kernel lines",
                value=lines[0][:500],
                observed_at=at,
                details={"lines": lines, "matched_lines": len(lines)},
            ),
        )
    return Anomaly.model_validate(
        {
            "id": deterministic_id(key, status, fault_onset.isoformat(), prefix="anomaly-"),
            "time": at,
            "cluster": CLUSTER,
            "node": node,
            "anomaly_key": key,
            "kind": kind,
            "status": status,
            "severity": "major",
            "subject": subject,
            "fault_onset": fault_onset,
            "detected_at": at,
            "resolved_at": at if status == "resolved" else None,
            "expected": expected,
            "evidence": evidence,
        }
    )


def cloud_event(
    node: str,
    *,
    action: str = "redeploy",
    phase: str = "in_progress",
    at: datetime = T0,
    not_before: datetime | None = None,
    event_id: str = "e-1",
    ack: bool = False,
) -> CloudSystemEvent:
    terminal = phase in {"completed", "avoided", "canceled", "failed"}
    return CloudSystemEvent.model_validate(
        {
            "cluster": CLUSTER,
            "node": node,
            "cloud": "alibaba",
            "channel": "simulator",
            "provider_event_id": event_id,
            "provider_event_type": f"SystemMaintenance.{action.capitalize()}",
            "action": action,
            "cause": "planned_maintenance",
            "phase": phase,
            "is_terminal": terminal,
            "instance_id": f"i-{node}",
            "not_before": not_before,
            "observed_at": at,
            "time": at,
            "expected_duration_s": 600,
            "ack": [{"method": "alibaba.RedeployInstance"}] if ack else [],
        }
    )


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


OOPS_A = [
    "[ 100.000001] BUG: unable to handle kernel NULL pointer dereference at 0000000000000010",
    "[ 100.000002] IP: tcp_v4_rcv+0x3a/0x9c0",
    "[ 100.000003] Oops: 0000 [#1] SMP",
    "[ 100.000004] CPU: 3 PID: 0 Comm: swapper/3 Tainted: G           OE   5.10.134-16.al8.x86_64 #1",
    "[ 100.000005] RIP: 0010:tcp_v4_rcv+0x3a/0x9c0",
    "[ 100.000006] Call Trace:",
    "[ 100.000007]  <IRQ>",
    "[ 100.000008]  ip_protocol_deliver_rcu+0x30/0x1c0",
    "[ 100.000009]  ? ktime_get+0x3a/0xa0",
    "[ 100.000010]  ip_local_deliver_finish.isra.0+0x44/0x50",
    "[ 100.000011]  ip_local_deliver+0xe1/0xf0",
    "[ 100.000012]  __netif_receive_skb_one_core+0x87/0xa0",
    "[ 100.000013]  process_one_work+0x1b4/0x380",
    "[ 100.000014] Kernel panic - not syncing: Fatal exception in interrupt",
]
OOPS_B = [
    "[ 200.1] general protection fault: 0000 [#1] SMP NOPTI",
    "[ 200.2] CPU: 7 PID: 4242 Comm: kworker/7:1 Not tainted 5.10.134-16.al8.x86_64 #1",
    "[ 200.3] RIP: 0010:ext4_mb_regular_allocator+0x2b1/0xd70",
    "[ 200.4] Call Trace:",
    "[ 200.5]  ext4_mb_new_blocks+0x2ec/0xea0",
    "[ 200.6]  ext4_ext_map_blocks+0x5d1/0x1590",
    "[ 200.7] Kernel panic - not syncing: Fatal exception",
]
