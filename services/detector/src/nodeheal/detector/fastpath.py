"""Cheap decoding of `NodeProbe` for the hot path: msgspec Structs that mirror the fields the rules
read (and the constraints pydantic would enforce on them), nothing else.

Unknown fields are ignored (additive schema changes stay compatible). A payload that the pydantic
model would reject for a field the rules read is rejected here too, with msgspec's message (it names
the field path), so that it can go to the DLQ. This module must never import the transport.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from nodeheal.schemas.prober import MAX_PROBER_RESULTS
from nodeheal.schemas.subjects import (
    PROBE_SOURCES,
    PROBER_KIND,
    escape_token,
    is_prober_results_token,
    probe_partition,
    unescape_token,
)

Pct = Annotated[float, msgspec.Meta(ge=0, le=100)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
PosInt = Annotated[int, msgspec.Meta(ge=1)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
Utc = Annotated[datetime, msgspec.Meta(tz=True)]


class FastReachability(msgspec.Struct, frozen=True, gc=False):
    check: Literal["icmp", "tcp", "ssh_banner", "kubelet_healthz", "agent"]
    ok: bool
    target: str = ""


class FastLoad(msgspec.Struct, frozen=True, gc=False):
    load1: NonNegFloat


class FastFileSystem(msgspec.Struct, frozen=True, gc=False):
    mount: str
    used_pct: Pct
    inodes_used_pct: Pct
    readonly: bool = False


class FastFileHandles(msgspec.Struct, frozen=True, gc=False):
    allocated: NonNegInt
    max: PosInt


class FastService(msgspec.Struct, frozen=True, gc=False):
    name: str
    state: Literal["active", "inactive", "failed", "activating", "deactivating", "reloading", "unknown"]
    healthy: bool | None = None


class FastProbe(msgspec.Struct, frozen=True, gc=False, rename={"schema_": "schema"}):
    schema_: Literal["nodeheal.probe/v1"]
    cluster: Name
    node: Name
    source: Literal["agent", "prober", "simulator"]
    seq: NonNegInt
    id: str = ""
    time: Utc | None = None
    boot_id: str | None = None
    reachability: tuple[FastReachability, ...] = ()
    load: FastLoad | None = None
    cpu_count: PosInt | None = None
    filesystems: tuple[FastFileSystem, ...] = ()
    file_handles: FastFileHandles | None = None
    services: tuple[FastService, ...] = ()
    kernel_log: tuple[str, ...] = ()
    ready: bool | None = None
    full: bool = True


probe_decoder: msgspec.json.Decoder[FastProbe] = msgspec.json.Decoder(FastProbe)
"""`probe_decoder.decode(raw)` → FastProbe; raises msgspec.ValidationError / DecodeError on bad input."""


class FastProberResult(msgspec.Struct, frozen=True, gc=False):
    node: Name
    reachability: Annotated[tuple[FastReachability, ...], msgspec.Meta(min_length=1)]
    ready: bool | None = None


class FastProberResults(msgspec.Struct, frozen=True, gc=False, rename={"schema_": "schema"}):
    """`nodeheal.schemas.prober.ProberResults`: a prober batch, each entry judged as one prober `NodeProbe`."""

    schema_: Literal["nodeheal.prober-results/v1"]
    cluster: Name
    node: Name
    seq: NonNegInt
    results: Annotated[tuple[FastProberResult, ...], msgspec.Meta(min_length=1, max_length=MAX_PROBER_RESULTS)]
    source: Literal["prober"] = "prober"
    partitions: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 0
    partition: Annotated[int, msgspec.Meta(ge=0, le=1023)] = 0
    id: str = ""
    time: Utc | None = None

    def probes(self, ids: list[str] | None = None) -> list[FastProbe]:
        """Each entry as the prober `NodeProbe` it stands for (the rules see no difference); `ids` are the
        entries' evidence ids (`schemas.prober.result_id`)."""
        cluster, seq, t = self.cluster, self.seq, self.time
        return [
            FastProbe(
                schema_="nodeheal.probe/v1",
                cluster=cluster,
                node=r.node,
                source="prober",
                seq=seq,
                id=ids[i] if ids is not None else "",
                time=t,
                reachability=r.reachability,
                ready=r.ready,
            )
            for i, r in enumerate(self.results)
        ]


results_decoder: msgspec.json.Decoder[FastProberResults] = msgspec.json.Decoder(FastProberResults)


class BatchRoute(msgspec.Struct, frozen=True, gc=False):
    """What a `ProberResults` subject says: `<prefix>.prober.<cluster>.<_r token>[.<partition>]`."""

    cluster: str
    token: str
    partition: int | None  # the stored subject's partition token (None: PROBES is not partitioned)


_UNSEEN: tuple[str, str, tuple[str, ...]] = ("", "", ())


class ProbeIdentity:
    """The server authorised the subject, not the body: a probe counts only if its body names the
    cluster and node of its subject (`<prefix>.<kind>.<cluster>.<node>[.<partition>]`) and a `source`
    its subject kind may carry (`PROBE_SOURCES`: an agent's `probe.*.*` never carries a prober's view,
    the prober's `prober.*.*` never an agent's).

    Hot path: one dict lookup per probe (subject → expected names, parsed once per subject) and three
    string comparisons; the subject tokens are checked to be the canonical escaping of the names they
    decode to, so two spellings of one node cannot exist."""

    def __init__(self, *, prefix: str, max_subjects: int = 500_000) -> None:
        self._skip = len(prefix.split("."))
        self._prefix = prefix
        self._max = max_subjects
        self._expected: dict[str, tuple[str, str, tuple[str, ...]] | None] = {}
        self._routes: dict[str, BatchRoute | None] = {}
        self._node_partition: dict[tuple[str, str], int] = {}

    def route(self, subject: str) -> BatchRoute | None:
        """The route of a `ProberResults` subject (the prober's kind, a `_r<k>` token); None for any other
        subject. One dict lookup per message once the subject was seen."""
        try:
            return self._routes[subject]
        except KeyError:
            pass
        if len(self._routes) >= self._max:
            self._routes.clear()
        parts = subject.split(".")
        route: BatchRoute | None = None
        if len(parts) in (self._skip + 3, self._skip + 4) and parts[self._skip] == PROBER_KIND:
            cluster_token, token = parts[self._skip + 1], parts[self._skip + 2]
            if is_prober_results_token(token):
                partition = parts[self._skip + 3] if len(parts) == self._skip + 4 else None
                try:
                    cluster = unescape_token(cluster_token)
                    canonical = escape_token(cluster) == cluster_token
                except (ValueError, UnicodeDecodeError):
                    canonical = False
                if canonical and (partition is None or partition.isdigit()):
                    route = BatchRoute(
                        cluster=cluster, token=token, partition=None if partition is None else int(partition)
                    )
                else:
                    # a batch token on a malformed subject: a route nothing matches, so it is rejected
                    route = BatchRoute(cluster="", token="", partition=None)
        self._routes[subject] = route
        return route

    def batch_mismatch(
        self, subject: str, route: BatchRoute, batch: FastProberResults, *, partitions: int
    ) -> str | None:
        """None if the batch may speak for its nodes: its body names the cluster and token of its subject, it was
        placed for this stream's partition count, and every node of it is in the partition the server stored
        it under (so two detector replicas never judge one node); else the reason (for the DLQ)."""
        if batch.cluster != route.cluster or batch.node != route.token:
            return (
                f"node mismatch: the subject {subject!r} is cluster {route.cluster!r} token {route.token!r},"
                f" the body says cluster {batch.cluster!r} token {batch.node!r}"
            )
        if batch.partitions != partitions:
            return (
                f"partition mismatch: the batch was placed for {batch.partitions} partitions of PROBES, the detector"
                f" reads {partitions}; give the prober the stream's NATS__PROBE_PARTITIONS"
            )
        stored = route.partition if route.partition is not None else 0
        if batch.partition != stored:
            return f"partition mismatch: the batch says partition {batch.partition}, the server stored it in {stored}"
        if partitions:
            cache = self._node_partition
            if len(cache) >= self._max:
                cache.clear()
            cluster = batch.cluster
            for r in batch.results:
                key = (cluster, r.node)
                p = cache.get(key)
                if p is None:
                    p = cache[key] = probe_partition(cluster, r.node, partitions)
                if p != stored:
                    return (
                        f"partition mismatch: node {r.node!r} is in partition {p}, the batch in {stored}; a batch"
                        " carries the nodes of its own partition only"
                    )
        return None

    def mismatch(self, subject: str, probe: FastProbe) -> str | None:
        """None if the probe may speak for the node of its subject, else the reason (for the DLQ)."""
        expected = self._expected.get(subject, _UNSEEN)
        if expected is _UNSEEN:
            expected = self._learn(subject)
        if expected is not None and probe.node == expected[1] and probe.cluster == expected[0]:
            if probe.source in expected[2]:
                return None
            return (
                f"node mismatch: source {probe.source!r} may not publish on {subject!r}"
                f" (that subject carries {', '.join(expected[2])} probes)"
            )
        if expected is None:
            return f"node mismatch: {subject!r} is not of the form {self._prefix}.<kind>.<cluster>.<node>"
        return (
            f"node mismatch: the subject is cluster {expected[0]!r} node {expected[1]!r},"
            f" the body says cluster {probe.cluster!r} node {probe.node!r}"
        )

    def _learn(self, subject: str) -> tuple[str, str, tuple[str, ...]] | None:
        if len(self._expected) >= self._max:
            self._expected.clear()  # more subjects than nodes × kinds × partitions: start over
        parts = subject.split(".")
        expected: tuple[str, str, tuple[str, ...]] | None = None
        if len(parts) in (self._skip + 3, self._skip + 4):
            kind, cluster_token, node_token = parts[self._skip : self._skip + 3]
            sources = PROBE_SOURCES.get(kind)
            try:
                cluster, node = unescape_token(cluster_token), unescape_token(node_token)
                canonical = escape_token(cluster) == cluster_token and escape_token(node) == node_token
            except (ValueError, UnicodeDecodeError):
                canonical = False
            if sources is not None and canonical:
                expected = (cluster, node, sources)
        self._expected[subject] = expected
        return expected
