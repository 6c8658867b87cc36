"""Crash reports of the node agents (CRASHES): classified with the knowledge base, bucketed with the
crash signatures, and counted in one fleet record per bucket.

`classify()` is pure: every evidence of a report (pstore record, kdump vmcore-dmesg, journal tail)
goes through `kb.analyse`; the verdict is the most decisive class found (the KB's rank), with the
crash signature of the report that holds it (kdump and pstore hold the same crash; the first with a
signature wins on equal rank). `CrashIntake` is the transport side: a durable pull consumer on
CRASHES, bad input dead-lettered (reason + raw bytes) and acknowledged, and the bucket's fleet record
in the `<bucket_prefix>-crash-buckets` key-value bucket (`bucket.<key>`) updated with
compare-and-set — count, nodes, kernels, first and last seen, and the (node, boot) pairs already
counted, so a redelivered report is not counted twice. What the diagnosis makes of a verdict (a
bucket seen on other nodes → reboot; hardware classes → take the machine out) belongs to reasoning:
`on_verdict` hands each verdict over.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import prometheus_client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import FetchTimeoutError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from nodeheal.diagnoser.kb import Matcher, analyse
from nodeheal.runtime.jetstream import dead_letter, ensure_pull_consumer
from nodeheal.schemas.crash import CrashReport
from nodeheal.schemas.diagnosis import CrashSignature
from nodeheal.schemas.kernel import Category
from nodeheal.schemas.subjects import wildcard

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


def classify(report: CrashReport, matcher: Matcher) -> CrashVerdict:
    """The most decisive class in the report's evidence and the crash bucket that goes with it."""
    best: tuple[tuple[int, int, int], CrashVerdict] | None = None
    for evidence in report.evidence:
        analysis = analyse(evidence.lines, matcher=matcher)
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
        )
        score = (matcher.kb.rank(primary.cls), 1 if signature else 0, -_SOURCE_ORDER.get(evidence.source, 9))
        if best is None or score > best[0]:
            best = (score, verdict)
    if best is not None:
        return best[1]
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
    )


def bucket_key(verdict: CrashVerdict) -> str:
    """Key of the fleet record: the signature's bucket; without one, the class (or 'unexplained')."""
    if verdict.signature is not None:
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


VerdictHook = Callable[[CrashVerdict, dict[str, Any]], Awaitable[None]]


class CrashIntake:
    """The CRASHES consumer of the diagnoser (see the module text)."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        matcher: Matcher,
        stream: str,
        bucket: str,
        durable: str,
        prefix: str,
        service: str,
        batch_size: int = 64,
        fetch_timeout_s: float = 1.0,
        ack_wait_s: float = 30.0,
        max_deliver: int = 10,
        stopping: Callable[[], bool] = lambda: False,
        on_verdict: VerdictHook | None = None,
        machine_model: Callable[[str, str], str | None] = lambda cluster, node: None,
        registry: prometheus_client.CollectorRegistry | None = None,
    ) -> None:
        self.js = js
        self.matcher = matcher
        self.stream = stream
        self.bucket = bucket
        self.durable = durable
        self.prefix = prefix
        self.service = service
        self.batch_size = batch_size
        self.fetch_timeout_s = fetch_timeout_s
        self.ack_wait_s = ack_wait_s
        self.max_deliver = max_deliver
        self.stopping = stopping
        self.on_verdict = on_verdict
        self.machine_model = machine_model
        self._kv: KeyValue | None = None
        self.m_crashes = prometheus_client.Counter(
            "nodeheal_diagnoser_crash_reports_total",
            "Crash reports by outcome and class",
            ["outcome", "cls"],
            registry=registry or prometheus_client.CollectorRegistry(),
        )

    async def run(self, *, retry_s: float = 30.0) -> None:
        """Bind (retrying while the stream or bucket is not provisioned yet), then consume until stopped."""
        sub = None
        while sub is None and not self.stopping():
            sub = await self._bind()
            if sub is None:
                await asyncio.sleep(retry_s)
        while sub is not None and not self.stopping():
            try:
                msgs = await sub.fetch(self.batch_size, timeout=self.fetch_timeout_s)
            except (TimeoutError, FetchTimeoutError, NatsTimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("crash fetch failed; retrying", extra={"error": str(exc)})
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                await self.handle(msg)

    async def _bind(self) -> Any:
        try:
            await ensure_pull_consumer(
                self.js,
                stream=self.stream,
                durable=self.durable,
                filter_subjects=[wildcard("crash", prefix=self.prefix)],
                ack_wait_s=self.ack_wait_s,
                max_deliver=self.max_deliver,
                deliver_policy=DeliverPolicy.ALL,
            )
            sub = await self.js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
            self._kv = await self.js.key_value(self.bucket)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # provisioned by `nodeheal streams apply`; older layouts lack them
            log.warning(
                "crash reports not consumed yet: stream or bucket missing",
                extra={"stream": self.stream, "bucket": self.bucket, "error": str(exc)},
            )
            return None
        return sub

    async def _reject(self, msg: Any, reason: str) -> None:
        await dead_letter(
            self.js,
            service=self.service,
            reason=reason,
            raw=msg.data,
            subject=msg.subject,
            headers=dict(msg.headers or {}),
            prefix=self.prefix,
        )
        await msg.ack()
        self.m_crashes.labels("dead_letter", "").inc()

    async def handle(self, msg: Any) -> None:
        try:
            report = CrashReport.model_validate_json(msg.data)
        except ValidationError as exc:
            await self._reject(msg, f"not a valid CrashReport: {exc.errors()[:3]}")
            return
        try:
            verdict = classify(report, self.matcher)
        except Exception as exc:  # a knowledge-base defect must not stop the consumer
            log.exception("crash report not classified", extra={"node": report.node})
            await self._reject(msg, f"crash report could not be classified: {exc!r}"[:500])
            return
        try:
            model = self.machine_model(report.cluster, report.node)
            record = await self._count(verdict, kernel=_kernel_of(verdict, report), machine_model=model)
            if self.on_verdict is not None:
                await self.on_verdict(verdict, record)
        except Exception as exc:
            log.warning("crash record not updated; redelivered", extra={"node": report.node, "error": str(exc)})
            await msg.nak(delay=5.0)
            self.m_crashes.labels("nak", verdict.cls or "").inc()
            return
        await msg.ack()
        self.m_crashes.labels("ok", verdict.cls or "").inc()
        log.warning(
            "crash classified",
            extra={
                "node": report.node,
                "boot_id": report.boot_id,
                "cls": verdict.cls,
                "bucket": record.get("bucket"),
                "bucket_count": record.get("count"),
                "new_bucket": record.get("count") == 1,
            },
        )

    async def _count(self, verdict: CrashVerdict, *, kernel: str | None, machine_model: str | None) -> dict[str, Any]:
        assert self._kv is not None
        key = f"bucket.{bucket_key(verdict)}"
        for _ in range(20):
            try:
                entry = await self._kv.get(key)
                current: dict[str, Any] | None = json.loads(entry.value or b"{}")
                revision: int | None = entry.revision
            except KeyNotFoundError:
                current, revision = None, None
            updated = update_record(
                current, verdict, kernel=kernel, at=datetime.now(tz=UTC), machine_model=machine_model
            )
            if updated is None:
                return current or {}
            data = json.dumps(updated, sort_keys=True).encode()
            try:
                if revision is None:
                    await self._kv.create(key, data)
                else:
                    await self._kv.update(key, data, last=revision)
            except KeyWrongLastSequenceError:
                continue  # another diagnoser replica counted in between: read again
            except Exception as exc:
                if "wrong last sequence" in str(exc).lower():
                    continue
                raise
            return updated
        msg = f"crash bucket {key}: too many concurrent updates"
        raise RuntimeError(msg)


def _kernel_of(verdict: CrashVerdict, report: CrashReport) -> str | None:
    if verdict.signature is not None and verdict.signature.kernel_release:
        return verdict.signature.kernel_release
    return report.kernel_release
