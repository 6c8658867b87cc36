"""Crash reports of the node agents (CRASHES): classified with the knowledge base, bucketed with the
crash signatures, and counted in one fleet record per bucket.

`classify()` is pure: every evidence of a report (pstore record, kdump vmcore-dmesg, journal tail)
goes through `kb.analyse`; the verdict is the most decisive class found (the KB's rank), with the
crash signature of the report that holds it (kdump and pstore hold the same crash; the first with a
signature wins on equal rank). `CrashBuckets` keeps the bucket's fleet record in the
`<bucket_prefix>-crash-buckets` key-value bucket (`bucket.<key>`), updated with compare-and-set —
count, nodes, kernels, machine models, first and last seen, the (node, boot) pairs already counted
(so a redelivered report is not counted twice) and, once the kernel team was told about the bucket,
`noticed_at` (so it is told once, across restarts and replicas). `bucket_notice()` is that notice (a
`new_crash_bucket` finding). The consumer itself is the diagnoser's CRASHES consumer on the shared
consumer runtime (handlers.py); what the diagnosis makes of a verdict (hardware → take the machine
out; a kernel bucket → reboot) is decided in rules.py (`crash_bucket_decision`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from nodeheal.diagnoser.kb import Finding, Matcher, analyse
from nodeheal.diagnoser.kb.signature import signature_identified
from nodeheal.diagnoser.rules import fatal_hardware
from nodeheal.schemas.crash import CrashReport
from nodeheal.schemas.diagnosis import CrashSignature
from nodeheal.schemas.finding import FleetFinding
from nodeheal.schemas.ids import deterministic_id
from nodeheal.schemas.kernel import Category

log = logging.getLogger("nodeheal.diagnoser.crash")

MAX_RECORD_NODES = 100
MAX_RECORD_BOOTS = 500
_SOURCE_ORDER = {"kdump": 0, "pstore": 1, "journal": 2}


@dataclass(frozen=True, slots=True)
class CrashVerdict:
    report_id: str
    cluster: str
    node: str
    boot_id: str
    cls: str | None
    category: Category
    signature: CrashSignature | None
    evidence_path: str | None
    line: str | None  # the line that decided the class
    finding: Finding | None = None  # the knowledge-base finding of that line
    hardware: Finding | None = None  # a fatal hardware finding anywhere in the report (MCE, GHES, EDAC UE)
    at: datetime | None = None  # when the crash was written down (the evidence's time), else reported
    reported_at: datetime | None = None  # when the agent found it (the report's time)


def classify(report: CrashReport, matcher: Matcher) -> CrashVerdict:
    """The most decisive class in the report's evidence and the crash bucket that goes with it."""
    best: tuple[tuple[int, int, int], CrashVerdict] | None = None
    hardware: Finding | None = None
    for evidence in report.evidence:
        analysis = analyse(evidence.lines, matcher=matcher)
        if hardware is None:
            hardware = next((f for f in analysis.findings if fatal_hardware(f)), None)
        primary = analysis.primary
        if primary is None:
            continue
        signature = analysis.signature_of(primary)
        if signature is None and analysis.reports:
            signature = analysis.reports[-1].signature()
        verdict = CrashVerdict(
            report_id=report.id,
            cluster=report.cluster,
            node=report.node,
            boot_id=report.boot_id,
            cls=primary.cls,
            category=primary.category,
            signature=signature,
            evidence_path=evidence.path,
            line=primary.line,
            finding=primary,
            at=evidence.written_at or report.time,
            reported_at=report.time,
        )
        score = (matcher.kb.rank(primary.cls), 1 if signature else 0, -_SOURCE_ORDER.get(evidence.source, 9))
        if best is None or score > best[0]:
            best = (score, verdict)
    if best is not None:
        return dataclasses.replace(best[1], hardware=hardware)
    return CrashVerdict(
        report_id=report.id,
        cluster=report.cluster,
        node=report.node,
        boot_id=report.boot_id,
        cls=None,
        category="unknown",
        signature=None,
        evidence_path=None,
        line=None,
        at=report.time,
        reported_at=report.time,
    )


def bucket_key(verdict: CrashVerdict) -> str:
    """Key of the fleet record: the signature's bucket; without one, the class (or 'unexplained'). A signature
    that identifies no bug (no function, frames, `BUG at` or specific panic string: `signature_identified`) keys
    a record of its node only — its bucket groups one host's repeats, and other hosts sharing it are not the same
    bug (nor is their crash the kernel team's known bucket)."""
    if verdict.signature is not None:
        if not signature_identified(verdict.signature):
            host = deterministic_id(verdict.cluster, verdict.node, prefix="")[:12]
            return f"{verdict.signature.bucket}-host-{host}"
        return verdict.signature.bucket
    return f"class-{verdict.cls}" if verdict.cls else "unexplained"


def update_record(
    record: dict[str, Any] | None,
    verdict: CrashVerdict,
    *,
    kernel: str | None,
    at: datetime,
    machine_model: str | None = None,
) -> dict[str, Any] | None:
    """The bucket's fleet record with this crash counted; None when this (node, boot) was counted already."""
    boot = f"{verdict.cluster}/{verdict.node}/{verdict.boot_id}"
    rec: dict[str, Any] = dict(record) if record else {}
    boots: list[str] = list(rec.get("boots", []))
    if boot in boots:
        return None
    signature = verdict.signature
    nodes: list[str] = list(rec.get("nodes", []))
    node = f"{verdict.cluster}/{verdict.node}"
    if node not in nodes:
        nodes.append(node)
    kernels: list[str] = list(rec.get("kernels", []))
    if kernel and kernel not in kernels:
        kernels.append(kernel)
    models: list[str] = list(rec.get("machine_models", []))
    if machine_model and machine_model not in models:
        models.append(machine_model)
    rec.update(
        {
            "bucket": bucket_key(verdict),
            "cls": verdict.cls,
            "category": verdict.category,
            "kind": signature.kind if signature else None,
            "rip_func": signature.rip_func if signature else None,
            "module": signature.module if signature else None,
            "top_frames": list(signature.top_frames) if signature else [],
            "panic_string": signature.panic_string if signature else None,
            "count": int(rec.get("count", 0)) + 1,
            "nodes": nodes[-MAX_RECORD_NODES:],
            "node_count": int(rec.get("node_count", 0)) + (0 if node in rec.get("nodes", []) else 1),
            "kernels": kernels[-50:],
            "machine_models": models[-50:],
            "boots": [*boots, boot][-MAX_RECORD_BOOTS:],
            "first_seen": rec.get("first_seen") or at.isoformat(),
            "last_seen": at.isoformat(),
            "example_report_id": rec.get("example_report_id") or verdict.report_id,
        }
    )
    return rec


def is_hardware(verdict: CrashVerdict) -> bool:
    """The crash was the machine's: a fatal machine check, a fatal GHES record, an uncorrectable EDAC
    error, or any other non-warning class the knowledge base files under hardware."""
    return verdict.hardware is not None


def is_kernel_bucket(verdict: CrashVerdict) -> bool:
    """A crash with a signature that is not the hardware's: something the kernel team can fix."""
    return verdict.signature is not None and not is_hardware(verdict)


def notice_due(verdict: CrashVerdict, record: dict[str, Any]) -> bool:
    """The kernel team has not been told about this bucket yet (the record in KV says so)."""
    return is_kernel_bucket(verdict) and bool(record) and not record.get("noticed_at")


def bucket_notice(record: dict[str, Any], *, cluster: str, now: datetime, window_s: float) -> FleetFinding:
    """The once-per-bucket notice to the kernel team: a `new_crash_bucket` finding on the findings
    subject. Its id depends on the bucket only, so a retry is deduplicated by the stream."""
    bucket = str(record["bucket"])
    finding_id = deterministic_id("new_crash_bucket", bucket, prefix="finding-")
    kernels = tuple(str(k) for k in record.get("kernels", []))
    models = tuple(str(m) for m in record.get("machine_models", []))
    first = datetime.fromisoformat(record["first_seen"]) if record.get("first_seen") else now
    last = datetime.fromisoformat(record["last_seen"]) if record.get("last_seen") else now
    where = record.get("rip_func") or record.get("panic_string") or record.get("cls") or "?"
    count, nodes = int(record.get("count", 0)), int(record.get("node_count", 0))
    return FleetFinding.model_validate(
        {
            "id": finding_id,
            "finding_id": finding_id,
            "cluster": cluster,
            "time": now,
            "kind": "new_crash_bucket",
            "dimension": "crash_bucket",
            "value": bucket,
            "scope": f"bucket:{bucket}",
            "group_events": count,
            "group_nodes": nodes,
            "fleet_events": count,
            "fleet_nodes": nodes,
            "group_rate": 0.0,
            "rest_rate": 0.0,
            "ratio": 0.0,
            "test": "first crash of a signature never seen before in the fleet record",
            "affected_nodes": tuple(record.get("nodes", []))[-MAX_RECORD_NODES:],
            "signature_bucket": bucket,
            "window_s": window_s,
            "detected_at": now,
            "crash_class": record.get("cls"),
            "kernels": kernels,
            "machine_models": models,
            "first_seen": first,
            "last_seen": last,
            "message": (
                f"new crash bucket {bucket} ({record.get('kind') or record.get('cls')} in {where}):"
                f" {count} crash(es) on {nodes} node(s), kernels {', '.join(kernels) or '?'},"
                f" machine models {', '.join(models) or '?'}, first seen {first.isoformat()},"
                f" last seen {last.isoformat()}; evidence kept on the nodes (clean_disk never deletes it)"
            ),
        }
    )


class CrashBuckets:
    """The fleet record of every crash bucket in the `<bucket_prefix>-crash-buckets` KV bucket
    (`bucket.<key>`), updated with compare-and-set (see the module text)."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def get(self, key: str) -> dict[str, Any]:
        try:
            entry = await self.kv.get(f"bucket.{key}")
        except KeyNotFoundError:
            return {}
        data = json.loads(entry.value or b"{}")
        return data if isinstance(data, dict) else {}

    async def count(
        self, verdict: CrashVerdict, *, kernel: str | None, machine_model: str | None, at: datetime
    ) -> dict[str, Any]:
        """The record with this crash counted (unchanged when this boot was counted already)."""
        return await self._update(
            bucket_key(verdict),
            lambda current: update_record(current, verdict, kernel=kernel, at=at, machine_model=machine_model),
        )

    async def mark_noticed(self, key: str, *, notice_id: str, at: datetime) -> dict[str, Any]:
        """Remember that the kernel team was told about this bucket (once, across restarts and replicas)."""

        def mark(current: dict[str, Any] | None) -> dict[str, Any] | None:
            if not current or current.get("noticed_at"):
                return None
            return {**current, "noticed_at": at.isoformat(), "notice_id": notice_id}

        return await self._update(key, mark)

    async def _update(
        self, key: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> dict[str, Any]:
        kv_key = f"bucket.{key}"
        for _ in range(20):
            try:
                entry = await self.kv.get(kv_key)
                current: dict[str, Any] | None = json.loads(entry.value or b"{}")
                revision: int | None = entry.revision
            except KeyNotFoundError:
                current, revision = None, None
            updated = change(current)
            if updated is None:
                return current or {}
            data = json.dumps(updated, sort_keys=True).encode()
            try:
                if revision is None:
                    await self.kv.create(kv_key, data)
                else:
                    await self.kv.update(kv_key, data, last=revision)
            except KeyWrongLastSequenceError:
                continue  # another diagnoser replica wrote in between: read again
            except Exception as exc:
                if "wrong last sequence" in str(exc).lower() or "key exists" in str(exc).lower():
                    continue
                raise
            return updated
        msg = f"crash bucket {kv_key}: too many concurrent updates"
        raise RuntimeError(msg)


def kernel_of(verdict: CrashVerdict, report: CrashReport) -> str | None:
    if verdict.signature is not None and verdict.signature.kernel_release:
        return verdict.signature.kernel_release
    return report.kernel_release
