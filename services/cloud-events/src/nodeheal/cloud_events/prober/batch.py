"""The prober's results in batches: one `ProberResults` message per partition of PROBES for up to
`max_results` nodes, instead of one `NodeProbe` per node (issue 19; docs/cloud-events.md).

Pure (no transport): `add` takes one node's checks and returns the batches that filled up, `drain` the rest;
each batch is (subject, message id, JSON body), ready for a JetStream publish with `Nats-Msg-Id`. The real
prober (`app.Prober`) and the simulator's prober publish through this same code."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nodeheal.schemas.ids import new_id
from nodeheal.schemas.prober import MAX_PROBER_RESULTS, PROBER_RESULTS_SCHEMA
from nodeheal.schemas.subjects import probe_partition, prober_results_subject, prober_results_token

DEFAULT_MAX_RESULTS = 500
"""Entries per message by default: measured at 1.2 + 0.9 µs of the server's work per result, against 15.3 +
11.7 µs as one message each (docs/BENCHMARKS.md, issue 19)."""


@dataclass(frozen=True, slots=True)
class Batch:
    subject: str
    msg_id: str
    body: bytes
    results: int


class ResultBatcher:
    """Collects one round's results per partition of PROBES (`partitions` = its partition count, 0: none)."""

    def __init__(
        self, *, cluster: str, partitions: int, prefix: str, max_results: int = DEFAULT_MAX_RESULTS, seq: int = 0
    ) -> None:
        if not 1 <= max_results <= MAX_PROBER_RESULTS:
            msg = f"max_results must be in 1 .. {MAX_PROBER_RESULTS}, not {max_results}"
            raise ValueError(msg)
        self.cluster = cluster
        self.partitions = partitions
        self.prefix = prefix
        self.max_results = max_results
        self.seq = seq
        self._pending: dict[int, list[dict[str, Any]]] = {}
        self._partition_of: dict[str, int] = {}  # node → its partition (a hash per node, once)
        self._subjects: dict[int, tuple[str, str]] = {}

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._pending.values())

    def partition_of(self, node: str) -> int:
        p = self._partition_of.get(node)
        if p is None:
            if len(self._partition_of) > 1_000_000:
                self._partition_of.clear()
            p = self._partition_of[node] = probe_partition(self.cluster, node, self.partitions)
        return p

    def add(self, node: str, reachability: Iterable[Mapping[str, Any]], ready: bool | None = None) -> list[Batch]:
        """One node's checks (`Reachability` as dicts: check, target, ok and, when set, latency_ms, error)."""
        entry: dict[str, Any] = {"node": node, "reachability": list(reachability)}
        if ready is not None:
            entry["ready"] = ready
        p = self.partition_of(node)
        entries = self._pending.setdefault(p, [])
        entries.append(entry)
        if len(entries) >= self.max_results:
            del self._pending[p]
            return [self._batch(p, entries)]
        return []

    def drain(self) -> list[Batch]:
        """Everything collected since the last batch of each partition."""
        pending, self._pending = self._pending, {}
        return [self._batch(p, entries) for p, entries in pending.items() if entries]

    def _batch(self, partition: int, entries: list[dict[str, Any]]) -> Batch:
        found = self._subjects.get(partition)
        if found is None:
            subject = prober_results_subject(self.cluster, partition, self.partitions, prefix=self.prefix)
            token = prober_results_token(self.cluster, partition, self.partitions)
            found = self._subjects[partition] = (subject, token)
        subject, token = found
        msg_id = new_id()
        doc = {
            "schema": PROBER_RESULTS_SCHEMA,
            "id": msg_id,
            "time": datetime.now(tz=UTC).isoformat(),
            "cluster": self.cluster,
            "node": token,
            "source": "prober",
            "seq": self.seq,
            "partitions": self.partitions,
            "partition": partition,
            "results": entries,
        }
        body = json.dumps(doc, separators=(",", ":")).encode()
        return Batch(subject=subject, msg_id=msg_id, body=body, results=len(entries))
