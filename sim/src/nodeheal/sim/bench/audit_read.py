"""`nodeheal bench audit-read`: what a durable `nodeheal audit tail --durable NAME` read costs, before and after.

AUDIT is filled on an embedded nats-server (the production topology) with `records` remediation records over
a thousand nodes; each round then reads all of them through `read_durable` under a new durable name, each
record validated and written as `audit tail --json` writes it (a line, flushed, to /dev/null), twice in one
run:

- `before`: the acknowledgements left to nats-py's flusher (so a batch's acknowledgements stayed in the client's
  buffer while the batch was written, and a SIGKILL lost them), and the read's end taking its own last
  acknowledgements, not yet counted by the server, for another reader's (and waiting on them);
- `end_fixed_acks_buffered`: the read's end asking the consumer's state again before it waits, the
  acknowledgements still left to the flusher (what the socket hand-off below costs is `now` against this);
- `now`: each acknowledgement handed to the socket before the next record is written, and the read's end
  asking the consumer's state again before it waits (docs/audit.md).

Reported: seconds and records/s of each read, the median of `rounds`, and how many reads said they waited for
records "delivered to another reader" (there is no other reader here).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import nodeheal.cli.window as window
from nodeheal.cli.audit import record_json
from nodeheal.runtime.connect import connect
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.ids import deterministic_id
from nodeheal.schemas.subjects import audit_subject
from nodeheal.sim.embedded import EmbeddedNats

CLUSTER = "bench"


def _record(i: int, *, t0: datetime) -> RemediationRecord:
    node = f"n{i % 1000:04d}"
    action_id = f"act-{i:07d}"
    return RemediationRecord(
        id=deterministic_id("audit", node, action_id, "intent"),
        time=t0 + timedelta(milliseconds=i),
        cluster=CLUSTER,
        node=node,
        action_id=action_id,
        action="reboot",
        phase="intent",
        reason="node_crash: reboot (rung 1 of 3)",
        actor="remediator-0",
        cause="node_crash",
        rung=1,
    )


async def _fill(nc: Any, settings: NatsSettings, records: int) -> str:
    js = nc.jetstream()
    await apply_topology(js, settings.topology())
    t0 = datetime.now(tz=UTC) - timedelta(hours=1)
    for i in range(records):
        r = _record(i, t0=t0)
        await nc.publish(
            audit_subject(r.cluster, r.node, prefix=settings.prefix), r.model_dump_json(by_alias=True).encode()
        )
        if i % 1000 == 999:
            await nc.flush()
    await nc.flush()
    stream = settings.topology().stream(f"{settings.stream_prefix}AUDIT").name
    for _ in range(100):  # published without waiting for each ack: wait until the stream holds them all
        if (await js.stream_info(stream)).state.messages >= records:
            break
        await asyncio.sleep(0.1)
    return stream


async def _read(
    js: Any, *, stream: str, subject: str, durable: str, sink: io.TextIOBase, tuning: tuple[int, int]
) -> tuple[float, int, bool]:
    """One whole durable read as `audit tail --durable NAME --json` does it, with the kind's `tuning` (the read's
    `ack_send_turns`, `own_acks_checks`): seconds, records, and whether it said it waited for records held by
    another reader."""
    said = io.StringIO()
    count = 0
    started = time.perf_counter()
    with contextlib.redirect_stderr(said):
        async with contextlib.aclosing(
            window.read_durable(
                js,
                stream=stream,
                durable=durable,
                subjects=[subject],
                ack_send_turns=tuning[0],
                own_acks_checks=tuning[1],
            )
        ) as source:
            async for stored in source:
                record = RemediationRecord.model_validate_json(stored.data)
                sink.write(record_json(record, stored) + "\n")
                sink.flush()
                count += 1
    return time.perf_counter() - started, count, "another reader" in said.getvalue()


async def _run(*, records: int, rounds: int, sink: io.TextIOBase) -> dict[str, Any]:
    settings = NatsSettings(prefix="bench", stream_prefix="BENCH_", bucket_prefix="bench")
    subject = f"{settings.prefix}.audit.*.*"
    runs: dict[str, list[tuple[float, int, bool]]] = {"before": [], "end_fixed_acks_buffered": [], "now": []}
    turns, checks = window.ACK_SEND_TURNS, window.OWN_ACKS_CHECKS  # `now`: the read's defaults
    tunings = {"before": (0, 0), "end_fixed_acks_buffered": (0, checks), "now": (turns, checks)}
    with EmbeddedNats() as server:
        nc = await connect(settings.model_copy(update={"url": server.url}), name="nodeheal-bench-audit-read")
        try:
            stream = await _fill(nc, settings, records)
            js = nc.jetstream()
            for round_ in range(rounds):
                for label in runs:  # alternated: the same machine, the same run, the same stream
                    durable = f"{label}-{round_}"
                    runs[label].append(
                        await _read(
                            js, stream=stream, subject=subject, durable=durable, sink=sink, tuning=tunings[label]
                        )
                    )
        finally:
            await nc.close()
    out: dict[str, Any] = {
        "bench": "audit-read",
        "records": records,
        "rounds": rounds,
        "python": sys.version.split()[0],
    }
    for label, got in runs.items():
        seconds = statistics.median(s for s, _, _ in got)
        out[label] = {
            "read_s": round(seconds, 3),
            "records_per_s": round(records / seconds),
            "records_read": sorted({n for _, n, _ in got}),
            "reads_that_waited_on_their_own_acks": sum(w for _, _, w in got),
        }
    return out


def run_audit_read(*, records: int, rounds: int) -> dict[str, Any]:
    with open(os.devnull, "w") as sink:  # a text sink, written and flushed as stdout is
        return asyncio.run(_run(records=records, rounds=rounds, sink=sink))
