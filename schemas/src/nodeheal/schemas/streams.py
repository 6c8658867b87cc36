"""The JetStream layout of docs/design.md as data: streams and key-value buckets with their defaults.

Provisioning (`nodeheal streams apply`) turns these into server configuration; services only bind
to what exists. Nothing here talks to a server.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nodeheal.schemas.subjects import DEFAULT_PREFIX, PROBE_KIND, PROBER_KIND

DAY_S = 86_400.0
MIB = 1024**2
GIB = 1024**3


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    description: str
    max_age_s: float
    max_bytes: int = -1
    duplicate_window_s: float = 120.0
    deny_delete: bool = False
    deny_purge: bool = False
    max_msg_size: int = -1
    max_msgs: int = -1
    max_msgs_per_subject: int = -1
    subject_transform: tuple[str, str] | None = None
    """(source, destination) applied by the server to every stored subject; used to partition PROBES."""


@dataclass(frozen=True, slots=True)
class BucketSpec:
    name: str
    description: str
    ttl_s: float | None = None
    history: int = 1
    max_value_size: int = -1
    max_bytes: int = 64 * MIB
    """Every bucket has its own cap (deploy/nats/natsauth.py's account refuses a stream or bucket without one)."""


@dataclass(frozen=True, slots=True)
class Topology:
    streams: tuple[StreamSpec, ...]
    buckets: tuple[BucketSpec, ...] = field(default=())

    def stream(self, name: str) -> StreamSpec:
        for spec in self.streams:
            if spec.name == name:
                return spec
        msg = f"no stream named {name!r}; known: {', '.join(s.name for s in self.streams)}"
        raise KeyError(msg)

    def bucket(self, name: str) -> BucketSpec:
        for spec in self.buckets:
            if spec.name == name:
                return spec
        msg = f"no bucket named {name!r}; known: {', '.join(b.name for b in self.buckets)}"
        raise KeyError(msg)


LEASE_TTL_S = 30.0


def probe_partition_transform(prefix: str, partitions: int) -> tuple[str, str] | None:
    """With N > 0 partitions, PROBES stores `<prefix>.<kind>.<cluster>.<node>` (kind `probe` or `prober`)
    as `<prefix>.<kind>.<cluster>.<node>.<p>`, p = the server's deterministic hash of (cluster, node) mod N,
    so detector replicas can split the fleet with consumer filters and a node's agent and prober probes
    land in the same partition. Publishers are unchanged. (A stream has one transform; its source may be
    wider than the stream's subjects, only what the stream stores is transformed.)"""
    if partitions <= 0:
        return None
    src = f"{prefix}.*.*.*"
    dest = f"{prefix}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{wildcard(3)}}}}.{{{{partition({partitions},2,3)}}}}"
    return src, dest


DEFAULT_STORE_BYTES = 1 * GIB
"""What one install's streams and buckets may hold together by default (`NatsSettings.store_bytes`): small
enough for a laptop, the demo and a test server holding several installs side by side. Production sets it
from the NATS volume (`nodeheal streams apply --store-gib`, deploy/nats/values.yaml)."""

SHARES: dict[str, float] = {
    "PROBES": 0.375,  # 2.5 % went to CRASHES and crash-buckets
    "AUDIT": 0.20,
    "ANOMALIES": 0.10,
    "DIAGNOSES": 0.10,
    "CLOUD": 0.05,
    "DLQ": 0.03,
    "CRASHES": 0.02,
    "crash-buckets": 0.005,
    "inventory": 0.03,
    "leases": 0.01,
    "control": 0.01,
    "diagnoser": 0.0625,  # at most 64 MiB (`topology`)
}
"""Each stream's and bucket's share of `store_bytes` (99.25 % together): their caps, at least 1 MiB each, fit the
store from `MIN_STORE_BYTES` on, so the server never refuses one for want of room. A bucket added later needs
a share here (`BucketSpec.max_bytes`, 64 MiB, is only the default of a bucket made outside `topology`)."""

MIN_STORE_BYTES = 128 * MIB
"""The smallest store the shares fit (below it the 1 MiB floors add up to more than the store)."""

DLQ_MAX_MSGS = 200_000
DLQ_MAX_MSGS_PER_SUBJECT = 50_000
"""One DLQ subject per service (`<prefix>.dlq.<service>`): a flood from one input keeps at most this many of
its own dead letters (the oldest go first) and never evicts another service's."""
DLQ_MAX_MSG_SIZE = 256 * 1024
"""A dead letter keeps at most `schemas.dlq.MAX_RAW_BYTES` of the rejected input, so it fits."""


def topology(
    *,
    prefix: str = DEFAULT_PREFIX,
    stream_prefix: str = "",
    bucket_prefix: str = "nodeheal",
    store_bytes: int = DEFAULT_STORE_BYTES,
    lease_ttl_s: float = LEASE_TTL_S,
    probe_partitions: int = 0,
) -> Topology:
    """The streams and buckets for one subject prefix.

    `stream_prefix` / `bucket_prefix` exist so tests (and side-by-side installs) can create
    an isolated copy of the whole layout on one server.

    Every stream and bucket has its own byte cap and discards its oldest messages at the cap (never
    refuses new ones): a flood into one stream (the DLQ from a hostile edge, PROBES from a storm) costs
    that stream its history and never another stream its writes, as long as the caps together fit the
    server's store: the server reserves every cap when the stream is created and refuses one that does not
    fit. `store_bytes` is split by `SHARES`; `reserved_bytes(topology)` is what it takes.
    """
    sp = stream_prefix

    def cap(name: str) -> int:
        return max(MIB, int(store_bytes * SHARES[name]))

    return Topology(
        streams=(
            StreamSpec(
                name=f"{sp}PROBES",
                subjects=(f"{prefix}.{PROBE_KIND}.*.*", f"{prefix}.{PROBER_KIND}.*.*"),
                description="Node probes: from the node agent (probe.*.*) and the active prober (prober.*.*)",
                max_age_s=3 * DAY_S,
                max_bytes=cap("PROBES"),
                duplicate_window_s=60.0,
                subject_transform=probe_partition_transform(prefix, probe_partitions),
            ),
            StreamSpec(
                name=f"{sp}CLOUD",
                subjects=(f"{prefix}.cloud.*.*",),
                description="Normalised cloud instance system events",
                max_age_s=30 * DAY_S,
                max_bytes=cap("CLOUD"),
                duplicate_window_s=600.0,
            ),
            StreamSpec(
                name=f"{sp}ANOMALIES",
                subjects=(f"{prefix}.anomaly.*.*",),
                description="Anomalies (firing and resolved) from the detector",
                max_age_s=30 * DAY_S,
                max_bytes=cap("ANOMALIES"),
            ),
            StreamSpec(
                name=f"{sp}DIAGNOSES",
                subjects=(f"{prefix}.diagnosis.*.*", f"{prefix}.finding.fleet"),
                description="Diagnoses and fleet findings from the diagnoser",
                max_age_s=30 * DAY_S,
                max_bytes=cap("DIAGNOSES"),
            ),
            StreamSpec(
                name=f"{sp}AUDIT",
                subjects=(f"{prefix}.audit.*.*",),
                description="Remediation audit records; never deleted or purged",
                max_age_s=365 * DAY_S,
                max_bytes=cap("AUDIT"),
                duplicate_window_s=600.0,
                deny_delete=True,
                deny_purge=True,
            ),
            StreamSpec(
                name=f"{sp}CRASHES",
                subjects=(f"{prefix}.crash.*.*",),
                description="Crash reports of the node agent: the previous boot's pstore, kdump and journal evidence",
                max_age_s=365 * DAY_S,
                max_bytes=cap("CRASHES"),
                duplicate_window_s=DAY_S,  # one report per boot id, even when an agent retries much later
                max_msg_size=1024 * 1024,
            ),
            StreamSpec(
                name=f"{sp}DLQ",
                subjects=(f"{prefix}.dlq.*",),
                description="Rejected input with the reason and the raw bytes (bounded)",
                max_age_s=14 * DAY_S,
                max_bytes=cap("DLQ"),
                max_msgs=DLQ_MAX_MSGS,
                max_msgs_per_subject=DLQ_MAX_MSGS_PER_SUBJECT,
                max_msg_size=DLQ_MAX_MSG_SIZE,
            ),
        ),
        buckets=(
            BucketSpec(
                name=f"{bucket_prefix}-leases",
                description="One remediation at a time per node (create / compare-and-set only)",
                ttl_s=lease_ttl_s,
                max_bytes=cap("leases"),
            ),
            BucketSpec(
                name=f"{bucket_prefix}-inventory",
                description="Node metadata and instance id → node",
                max_bytes=cap("inventory"),
            ),
            BucketSpec(
                name=f"{bucket_prefix}-crash-buckets",
                description="One fleet record per crash bucket: count, nodes, kernels, first and last seen",
                max_bytes=cap("crash-buckets"),
            ),
            BucketSpec(
                name=f"{bucket_prefix}-control",
                description="Pause switch, approvals and per-class overrides",
                history=5,
                max_bytes=cap("control"),
            ),
            BucketSpec(
                name=f"{bucket_prefix}-diagnoser",
                description="The diagnoser's durable memory: crash signatures per host (crash.<cluster>.<node>)",
                ttl_s=8 * DAY_S,  # longer than the 7-day crash window; every new crash rewrites the key
                # 64 MiB from a 1 GiB store on (its size before it had a share), less below: the caps fit the store
                max_bytes=min(64 * MIB, cap("diagnoser")),
            ),
        ),
    )


def reserved_bytes(topo: Topology) -> int:
    """What the streams and buckets of `topo` may hold at most, together (per replica): size the
    server's JetStream store (`max_file_store`, the PVC) above this and no stream can starve another."""
    return sum(s.max_bytes for s in topo.streams) + sum(b.max_bytes for b in topo.buckets)
