"""Subject names. `<cluster>` and `<node>` tokens are escaped: any character outside
`[A-Za-z0-9-]` becomes `_XX` (its UTF-8 bytes in hex), so `cn-hangzhou.192.168.0.1` is one token
and the escaping is reversible. This module must never depend on the transport."""

from __future__ import annotations

import re

DEFAULT_PREFIX = "nodeheal"

_SAFE = re.compile(r"[A-Za-z0-9-]")
_ESCAPED = re.compile(r"((?:_[0-9A-F]{2})+)")
_TOKEN_OK = re.compile(r"^[A-Za-z0-9_-]+$")


def escape_token(value: str) -> str:
    """Make one subject token out of a cluster or node name."""
    if not value:
        msg = "a cluster or node name must not be empty"
        raise ValueError(msg)
    if _TOKEN_OK.fullmatch(value) and "_" not in value:
        return value
    out: list[str] = []
    for ch in value:
        if _SAFE.fullmatch(ch):
            out.append(ch)
        else:
            out.extend(f"_{b:02X}" for b in ch.encode())
    return "".join(out)


def unescape_token(token: str) -> str:
    def _decode(match: re.Match[str]) -> str:
        hexes = match.group(1).split("_")[1:]
        return bytes(int(h, 16) for h in hexes).decode()

    return _ESCAPED.sub(_decode, token)


def _subject(kind: str, cluster: str, node: str, prefix: str) -> str:
    return f"{prefix}.{kind}.{escape_token(cluster)}.{escape_token(node)}"


PROBE_KIND = "probe"
"""Probes a node sends about itself (the node agent; the simulator stands in for agents)."""
PROBER_KIND = "prober"
"""Probes the active prober sends about a node it checked from outside. A separate subject token, so
the server's permissions tell the two apart: an agent may publish only `probe.<its cluster>.<its node>`,
the prober only `prober.*.*`, and the detector trusts the `source` of a probe only as far as its
subject (`PROBE_SOURCES`)."""
PROBE_SOURCES: dict[str, tuple[str, ...]] = {PROBE_KIND: ("agent", "simulator"), PROBER_KIND: ("prober",)}
"""Which `NodeProbe.source` values each probe subject kind may carry."""


def probe_subject(cluster: str, node: str, *, prefix: str = DEFAULT_PREFIX) -> str:
    """Where a node agent publishes its own probes."""
    return _subject(PROBE_KIND, cluster, node, prefix)


def prober_probe_subject(cluster: str, node: str, *, prefix: str = DEFAULT_PREFIX) -> str:
    """Where the active prober publishes what it saw of a node from outside."""
    return _subject(PROBER_KIND, cluster, node, prefix)


PROBER_RESULTS_TOKEN = "_r"  # noqa: S105 (a subject token, not a secret)
"""The node token of a `ProberResults` subject starts with this: `_r<k>`. `escape_token` never produces it (an
escaped character is `_` and two upper-case hex digits), so no node name has this token."""

_FNV_OFFSET = 2166136261
_FNV_PRIME = 16777619


def fnv1a32(data: bytes) -> int:
    """FNV-1a, 32 bits: the hash of the server's `partition(N, ...)` subject transform function."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def subject_partition(cluster_token: str, node_token: str, partitions: int) -> int:
    """The partition PROBES' subject transform (`partition(N,2,3)`, `streams.probe_partition_transform`)
    gives a stored subject: FNV-1a of the cluster and node tokens (escaped, concatenated) mod N."""
    return fnv1a32((cluster_token + node_token).encode()) % partitions


def probe_partition(cluster: str, node: str, partitions: int) -> int:
    """The partition a node's probes are stored under (0 when PROBES is not partitioned)."""
    if partitions <= 0:
        return 0
    return subject_partition(escape_token(cluster), escape_token(node), partitions)


_ROUTING: dict[tuple[str, int, int], str] = {}


def prober_results_token(cluster: str, partition: int, partitions: int) -> str:
    """The node token `_r<k>` (the smallest k) under which the server stores a subject of `cluster` in
    `partition`; `_r0` when PROBES is not partitioned."""
    if partitions <= 0:
        return PROBER_RESULTS_TOKEN + "0"
    if not 0 <= partition < partitions:
        msg = f"partition {partition} is not in 0 .. {partitions - 1}"
        raise ValueError(msg)
    key = (cluster, partition, partitions)
    token = _ROUTING.get(key)
    if token is None:
        cluster_token = escape_token(cluster)
        k = 0
        while subject_partition(cluster_token, f"{PROBER_RESULTS_TOKEN}{k}", partitions) != partition:
            k += 1
        token = _ROUTING[key] = f"{PROBER_RESULTS_TOKEN}{k}"
    return token


def prober_results_subject(cluster: str, partition: int, partitions: int, *, prefix: str = DEFAULT_PREFIX) -> str:
    """Where the active prober publishes a `ProberResults` batch of the nodes of `partition`: its own subject
    kind (`prober.*.*`, its permission), with the routing token that the server hashes to `partition`."""
    return f"{prefix}.{PROBER_KIND}.{escape_token(cluster)}.{prober_results_token(cluster, partition, partitions)}"


def is_prober_results_token(token: str) -> bool:
    return token.startswith(PROBER_RESULTS_TOKEN)


def cloud_subject(cluster: str, node: str, *, prefix: str = DEFAULT_PREFIX) -> str:
    return _subject("cloud", cluster, node, prefix)


def anomaly_subject(cluster: str, node: str, *, prefix: str = DEFAULT_PREFIX) -> str:
    return _subject("anomaly", cluster, node, prefix)


def diagnosis_subject(cluster: str, node: str, *, prefix: str = DEFAULT_PREFIX) -> str:
    return _subject("diagnosis", cluster, node, prefix)


def audit_subject(cluster: str, node: str, *, prefix: str = DEFAULT_PREFIX) -> str:
    return _subject("audit", cluster, node, prefix)


def cmd_subject(cluster: str, node: str, *, prefix: str = DEFAULT_PREFIX) -> str:
    return _subject("cmd", cluster, node, prefix)


def crash_subject(cluster: str, node: str, *, prefix: str = DEFAULT_PREFIX) -> str:
    """The node agent's crash report of one boot (`CrashReport`), kept in the CRASHES stream."""
    return _subject("crash", cluster, node, prefix)


def dlq_subject(service: str, *, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}.dlq.{escape_token(service)}"


def finding_subject(*, prefix: str = DEFAULT_PREFIX) -> str:
    """Fleet-level findings (systematic risks) of the diagnoser; kept in the DIAGNOSES stream."""
    return f"{prefix}.finding.fleet"


def wildcard(kind: str, *, prefix: str = DEFAULT_PREFIX) -> str:
    """All clusters and nodes of one kind, e.g. `nodeheal.probe.*.*`."""
    return f"{prefix}.{kind}.*.*"


def parse_subject(subject: str, *, prefix: str = DEFAULT_PREFIX) -> tuple[str, str, str]:
    """`nodeheal.<kind>.<cluster>.<node>` → (kind, cluster, node), unescaped."""
    parts = subject.split(".")
    pre = prefix.split(".")
    if parts[: len(pre)] != pre or len(parts) != len(pre) + 3:
        msg = f"subject {subject!r} is not of the form {prefix}.<kind>.<cluster>.<node>"
        raise ValueError(msg)
    kind, cluster, node = parts[len(pre) :]
    return kind, unescape_token(cluster), unescape_token(node)
