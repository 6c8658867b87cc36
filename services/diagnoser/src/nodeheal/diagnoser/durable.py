"""What the diagnoser must not forget when it is killed, and how a new process gets it back.

Every hold and verdict that spans messages is kept where a new process finds it:

- **held node_down verdicts, open episodes, peer state, our own recent actions, cloud events** are
  the input streams themselves (ANOMALIES, AUDIT, CLOUD): on start they are read again from
  `now - rebuild_lookback_s` (CLOUD from `now - rebuild_cloud_lookback_s`) into the same core, with
  nothing published. A node_down whose anomaly was acknowledged before its verdict existed is,
  after the rebuild, a firing silent anomaly with no verdict: it is held (the hold is computed from
  the anomalies' `detected_at`, so it ends when it would have) or judged at once;
- **what was already said** — the last diagnosis per node (so an unchanged verdict is not said
  again and an open episode keeps its diagnosis id), the fleet-rate events of published kernel /
  hardware diagnoses (the rate and sudden-rise tests and the crash KPI), and the active fleet
  findings (a finding is raised once and cleared once) — is read back from DIAGNOSES, over the
  look-back or the sudden-rise test's horizon (7 days + 1 bin), whichever is longer;
- **crash reports** are the CRASHES stream: read again over the look-back, classified again (pure)
  and joined with their bucket's fleet record from the `<bucket_prefix>-crash-buckets` KV bucket, so
  an episode a crash report decided is decided the same way after the restart (whether the kernel
  team was told about a bucket is in that record too: `noticed_at`);
- **crash history** (crash signatures per host for `crash_window_s`, 7 days — longer than the
  look-back) is written to the `<bucket_prefix>-diagnoser` KV bucket (`crash.<cluster>.<node>`)
  before the input that added it is acknowledged, and loaded first on start.

After the rebuild the service evaluates every node with something open: held verdicts are held or
published, an open episode whose anomalies resolved while we were away gets its resolution, and an
unchanged verdict is not published again (and would be dropped by `Nats-Msg-Id` deduplication if
it were). An episode that fired and resolved entirely while no diagnoser ran (inside the singleton's
wait after a kill) and that no diagnosis names gets its verdict after the fact, `resolved` and
`recovered` (`Diagnoser.recovered_verdicts`): judged as it stood before it ended, never acted on.
What is older than the look-back is not read: an episode whose every anomaly is older is
left as it was (its next anomaly updates it).

Test hooks: `kill_point(name)` SIGKILLs the process at a named moment, only when
`NODEHEAL_TEST_KILL_AT` names it (`name` or `name:N` for the N-th time). Names: `in_node_down_hold`
(a verdict is held and its anomalies are acknowledged), `after_publish_diagnosis` (a diagnosis is
stored, its inputs are not yet acknowledged), `unsent_kept` (a publish to DIAGNOSES failed while verdicts and
fleet findings are both kept in memory only: decided, not stored, not yet sent again; with
`NODEHEAL_TEST_KILL_UNSENT_MIN=N`, only once at least N verdicts are kept, so a test does not depend on
whether a tick's finding came before or after the last of its inputs).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import ValidationError

from nodeheal.diagnoser.crash import CrashBuckets, bucket_key, classify
from nodeheal.diagnoser.reasoning import Diagnoser
from nodeheal.diagnoser.state import node_key
from nodeheal.runtime.jetstream import read_range
from nodeheal.runtime.kvwatch import last_values
from nodeheal.runtime.startup import patiently
from nodeheal.schemas.anomaly import Anomaly
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.causes import OPERATOR_REQUEST
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.crash import CrashReport
from nodeheal.schemas.diagnosis import CrashSignature, Diagnosis
from nodeheal.schemas.finding import FleetFinding
from nodeheal.schemas.subjects import escape_token, finding_subject, unescape_token, wildcard

log = logging.getLogger("nodeheal.diagnoser")

KILL_ENV = "NODEHEAL_TEST_KILL_AT"
KILL_UNSENT_MIN_ENV = "NODEHEAL_TEST_KILL_UNSENT_MIN"
KILL_POINTS = frozenset({"in_node_down_hold", "after_publish_diagnosis", "unsent_kept"})
_kill_hits: dict[str, int] = {}


async def kill_point(name: str, nc: Client | None = None) -> None:
    """SIGKILL this process here when `NODEHEAL_TEST_KILL_AT` is `name` (or `name:N`, the N-th time).
    Pending publishes (acks included) are flushed to the server first, so the kill lands exactly
    after what came before it. Does nothing when the variable is not set."""
    wanted = os.environ.get(KILL_ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    _kill_hits[name] = _kill_hits.get(name, 0) + 1
    if _kill_hits[name] < (int(nth) if nth else 1):
        return
    if nc is not None:
        with contextlib.suppress(Exception):
            await nc.flush(timeout=5)
    log.warning("test kill point reached: SIGKILL", extra={"kill_point": name})
    os.kill(os.getpid(), signal.SIGKILL)


def kill_unsent_min() -> int:
    """The number of unsent verdicts `unsent_kept` waits for (`NODEHEAL_TEST_KILL_UNSENT_MIN`, 1 if not set)."""
    return int(os.environ.get(KILL_UNSENT_MIN_ENV) or 1)


@dataclass
class RebuildReport:
    since: datetime
    cloud_since: datetime
    history_since: datetime
    read: dict[str, int] = field(default_factory=dict)
    crash_histories: int = 0
    open_nodes: set[str] = field(default_factory=set)
    recovered: list[Diagnosis] = field(default_factory=list)
    """verdicts of episodes that fired and ended while no diagnoser ran, to publish (`resolved`, `recovered`)"""


def crash_key(cluster: str, node: str) -> str:
    return f"crash.{escape_token(cluster)}.{escape_token(node)}"


class DurableState:
    """The diagnoser's durable side: the rebuild on start and the crash-history bucket."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        diagnoser: Diagnoser,
        streams: dict[str, str],
        prefix: str,
        bucket: KeyValue | None,
        lookback: timedelta,
        cloud_lookback: timedelta,
        history_lookback: timedelta | None = None,
        keep_trace: Callable[[str, dict[str, str] | None], None] | None = None,
        crash_buckets: CrashBuckets | None = None,
    ) -> None:
        self.js = js
        self.diagnoser = diagnoser
        self.streams = streams
        self.prefix = prefix
        self.bucket = bucket
        self.lookback = lookback
        self.cloud_lookback = cloud_lookback
        # what was said is read back further: the fleet's own-history test needs its whole horizon
        self.history_lookback = max(lookback, history_lookback or lookback)
        self.keep_trace = keep_trace  # an incident's trace continues across the restart
        self.crash_buckets = crash_buckets

    # ------------------------------------------------------------------ crash history (KV)

    async def save(self) -> None:
        """Write the crash history of every node that gained a crash report since the last save.
        Called before the input that added it is acknowledged."""
        if self.bucket is None:
            return
        for key in sorted(self.diagnoser.crash_dirty):
            ctx = self.diagnoser.fleet.nodes.get(key)
            if ctx is None:
                continue
            payload = [{"at": at.isoformat(), "signature": sig.model_dump(mode="json")} for at, sig in ctx.crashes]
            key, value, bucket = crash_key(ctx.cluster, ctx.node), json.dumps(payload).encode(), self.bucket
            await patiently(f"crash history {key}", functools.partial(bucket.put, key, value))
        self.diagnoser.crash_dirty.clear()

    async def _load_crashes(self) -> int:
        bucket = self.bucket
        if bucket is None:
            return 0
        entries = await patiently("crash histories", functools.partial(last_values, bucket, "crash.>"))
        loaded = 0
        for entry in entries:
            key = entry.key
            _, cluster, node = key.split(".", 2)
            try:
                items = json.loads(entry.value or b"[]")
                history = [
                    (datetime.fromisoformat(i["at"]), CrashSignature.model_validate(i["signature"])) for i in items
                ]
            except Exception as exc:
                log.warning("unreadable crash history ignored", extra={"key": key, "error": str(exc)[:200]})
                continue
            self.diagnoser.restore_crashes(unescape_token(cluster), unescape_token(node), history)
            loaded += 1
        return loaded

    # ------------------------------------------------------------------ the rebuild

    async def rebuild(self, *, now: datetime) -> RebuildReport:
        diag = self.diagnoser
        report = RebuildReport(
            since=now - self.lookback,
            cloud_since=now - self.cloud_lookback,
            history_since=now - self.history_lookback,
        )
        report.crash_histories = await self._load_crashes()

        def cloud(msg: Msg) -> None:
            diag.on_cloud_event(CloudSystemEvent.model_validate_json(msg.data))

        def audit(msg: Msg) -> None:
            diag.on_audit(RemediationRecord.model_validate_json(msg.data))

        def anomaly(msg: Msg) -> None:
            item = Anomaly.model_validate_json(msg.data)
            if not item.replay:
                diag.restore_anomaly(item)
                if self.keep_trace is not None:
                    self.keep_trace(item.id, msg.headers)

        said: dict[str, Diagnosis] = {}
        named: set[str] = set()  # every anomaly id a diagnosis names: those episodes were said

        def diagnosis(msg: Msg) -> None:
            data = json.loads(msg.data)
            if isinstance(data, dict) and str(data.get("schema", "")).startswith("nodeheal.finding/"):
                diag.restore_finding(FleetFinding.model_validate(data))
                return
            item = Diagnosis.model_validate(data)
            if item.replay or item.cause == OPERATOR_REQUEST:
                return  # not ours: `nodeheal batch` requests are no faults (rates) and no verdict of ours
            diag.restore_fault_event(item)
            named.update(item.anomaly_ids)
            if not item.recovered:  # an episode said after the fact is no verdict that stands for the node
                said[node_key(item.cluster, item.node)] = item

        p = self.prefix
        report.read["cloud"] = await self._read("CLOUD", [wildcard("cloud", prefix=p)], report.cloud_since, cloud)
        report.read["audit"] = await self._read("AUDIT", [wildcard("audit", prefix=p)], report.since, audit)
        report.read["anomalies"] = await self._read("ANOMALIES", [wildcard("anomaly", prefix=p)], report.since, anomaly)
        reports: dict[str, CrashReport] = {}

        def crash(msg: Msg) -> None:
            item = CrashReport.model_validate_json(msg.data)
            reports[item.id] = item

        if "CRASHES" in self.streams:
            report.read["crashes"] = await self._read("CRASHES", [wildcard("crash", prefix=p)], report.since, crash)
        report.read["diagnoses"] = await self._read(
            "DIAGNOSES", [wildcard("diagnosis", prefix=p), finding_subject(prefix=p)], report.history_since, diagnosis
        )
        for key, last in said.items():
            diag.restore_published(key, last)
        # crash reports last: what was said about their nodes is known (an open episode is not opened
        # again, a crash a diagnosis counted is not counted alone); their findings and facts are back
        for item in reports.values():
            try:
                verdict = classify(item, diag.matcher)
            except Exception as exc:  # the live consumer dead-letters what cannot be classified
                log.debug("crash report not replayed", extra={"id": item.id, "error": str(exc)[:200]})
                continue
            buckets = self.crash_buckets
            record = (
                await patiently("crash bucket record", functools.partial(buckets.get, bucket_key(verdict)))
                if buckets is not None
                else {}
            )
            with contextlib.suppress(Exception):
                diag.on_crash(verdict, record)
        # episodes that fired and ended while no diagnoser ran: judged after the crash reports that explain them
        report.recovered = diag.recovered_verdicts(named, now=now)
        report.open_nodes = diag.open_nodes()
        diag.crash_dirty.clear()  # what was loaded or replayed is already where it belongs
        log.info(
            "diagnoser state rebuilt",
            extra={
                "since": report.since.isoformat(),
                "lookback_s": self.lookback.total_seconds(),
                "cloud_since": report.cloud_since.isoformat(),
                "diagnoses_since": report.history_since.isoformat(),
                "read": report.read,
                "crash_histories": report.crash_histories,
                "open_nodes": len(report.open_nodes),
                "recovered": len(report.recovered),
                "findings": len(diag.fleet.findings),
            },
        )
        return report

    async def _read(self, base: str, subjects: list[str], since: datetime, apply: Callable[[Msg], None]) -> int:
        """Everything stored on the stream since `since`, once (`nodeheal.runtime.jetstream.read_range`:
        resumes after the last message applied when JetStream goes away mid-read), through a consumer named
        `diagnoser-read-…`. A message that does not validate is skipped (the live consumer dead-letters it)."""

        def apply_valid(msg: Msg) -> None:
            with contextlib.suppress(ValidationError, ValueError, TypeError):
                apply(msg)

        stream = self.streams[base]
        return await read_range(
            self.js,
            stream=stream,
            filters=subjects,
            name="diagnoser-read",
            on_msg=apply_valid,
            since=since,
            batch=1000,
            what=f"rebuild read of {stream}",
        )
