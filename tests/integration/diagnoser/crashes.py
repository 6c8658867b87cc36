"""Set-up shared by the diagnoser's crash tests: crash reports made of real kernel bytes (tests/data), the
inventory the diagnoser judges them against, and its per-bucket fleet records, read back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.crash import CrashEvidence, CrashReport
from nodeheal.schemas.inventory import inventory_key
from tests.unit.diagnoser.scenarios import CLUSTER, inventory

DATA = Path(__file__).resolve().parents[2] / "data"

BucketRecords = dict[str, dict[str, Any]]


def pstore_lines(case: str) -> list[str]:
    """The ramoops dump of a real crash in tests/data/kernel/CASE (its first line is the record header)."""
    return (DATA / "kernel" / case / "pstore" / "dmesg-ramoops-0").read_text().splitlines()


def pstore_report(node: str, boot: str, lines: list[str], *, header: str, at: datetime | None = None) -> CrashReport:
    """What the agent sends after an unexpected reboot: the previous boot's pstore record (the last 400
    lines), written 40 s before `at` when a time is given."""
    timed: dict[str, Any] = {} if at is None else {"time": at}
    return CrashReport(
        cluster=CLUSTER,
        node=node,
        boot_id=boot,
        previous_boot_id=f"{boot}-before",
        unexpected=True,
        kernel_release="6.1.0-57-cloud-amd64",
        evidence=(
            CrashEvidence(
                source="pstore",
                path="/sys/fs/pstore/dmesg-ramoops-0",
                backend="ramoops",
                record=header,
                written_at=None if at is None else at - timedelta(seconds=40),
                lines=tuple(lines[-400:]),
            ),
        ),
        **timed,
    )


async def put_inventory(nc: Client, settings: NatsSettings, models: Mapping[str, str]) -> None:
    """The inventory records of these nodes (node → machine model) in the test's inventory bucket."""
    kv = await nc.jetstream().key_value(f"{settings.bucket_prefix}-inventory")
    for node, model in models.items():
        await kv.put(inventory_key(CLUSTER, node), inventory(node, model=model).to_json())


async def bucket_records(
    nc: Client, settings: NatsSettings, done: Callable[[BucketRecords], bool], *, what: str
) -> BucketRecords:
    """The crash-bucket records (key → record) once `done` holds for them; waits up to ~20 s."""
    kv = await nc.jetstream().key_value(f"{settings.bucket_prefix}-crash-buckets")
    for _ in range(200):
        records: BucketRecords = {}
        try:
            for key in await kv.keys():
                entry = await kv.get(key)
                records[key] = json.loads(entry.value or b"{}")
        except Exception:
            records = {}
        if done(records):
            return records
        await asyncio.sleep(0.1)
    raise AssertionError(what)
