"""The JetStream layout of docs/design.md as data: streams and key-value buckets with their defaults.

Provisioning (`nodeheal streams apply`) turns these into server configuration; services only bind
to what exists. Nothing here talks to a server.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nodeheal.schemas.subjects import DEFAULT_PREFIX

DAY_S = 86_400.0
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
    subject_transform: tuple[str, str] | None = None
    """(source, destination) applied by the server to every stored subject; used to partition PROBES."""


@dataclass(frozen=True, slots=True)
class BucketSpec:
    name: str
    description: str
    ttl_s: float | None = None
    history: int = 1
    max_value_size: int = -1


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
    """With N > 0 partitions, PROBES stores `<prefix>.probe.<cluster>.<node>` as
    `<prefix>.probe.<cluster>.<node>.<p>`, p = the server's deterministic hash of (cluster, node) mod N,
    so detector replicas can split the fleet with consumer filters. Publishers are unchanged."""
    if partitions <= 0:
        return None
    src = f"{prefix}.probe.*.*"
    return src, f"{prefix}.probe.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{partition({partitions},1,2)}}}}"


def topology(
    *,
    prefix: str = DEFAULT_PREFIX,
    stream_prefix: str = "",
    bucket_prefix: str = "nodeheal",
    probes_max_bytes: int = 20 * GIB,
    lease_ttl_s: float = LEASE_TTL_S,
    probe_partitions: int = 0,
) -> Topology:
    """The streams and buckets for one subject prefix.

    `stream_prefix` / `bucket_prefix` exist so tests (and side-by-side installs) can create
    an isolated copy of the whole layout on one server.
    """
    sp = stream_prefix
    return Topology(
        streams=(
            StreamSpec(
                name=f"{sp}PROBES",
                subjects=(f"{prefix}.probe.*.*",),
                description="Node probes from the agent, the prober and the simulator",
                max_age_s=3 * DAY_S,
                max_bytes=probes_max_bytes,
                duplicate_window_s=60.0,
                subject_transform=probe_partition_transform(prefix, probe_partitions),
            ),
            StreamSpec(
                name=f"{sp}CLOUD",
                subjects=(f"{prefix}.cloud.*.*",),
                description="Normalised cloud instance system events",
                max_age_s=30 * DAY_S,
                duplicate_window_s=600.0,
            ),
            StreamSpec(
                name=f"{sp}ANOMALIES",
                subjects=(f"{prefix}.anomaly.*.*",),
                description="Anomalies (firing and resolved) from the detector",
                max_age_s=30 * DAY_S,
            ),
            StreamSpec(
                name=f"{sp}DIAGNOSES",
                subjects=(f"{prefix}.diagnosis.*.*", f"{prefix}.finding.fleet"),
                description="Diagnoses and fleet findings from the diagnoser",
                max_age_s=30 * DAY_S,
            ),
            StreamSpec(
                name=f"{sp}AUDIT",
                subjects=(f"{prefix}.audit.*.*",),
                description="Remediation audit records; never deleted or purged",
                max_age_s=365 * DAY_S,
                duplicate_window_s=600.0,
                deny_delete=True,
                deny_purge=True,
            ),
            StreamSpec(
                name=f"{sp}DLQ",
                subjects=(f"{prefix}.dlq.*",),
                description="Rejected input with the reason and the raw bytes",
                max_age_s=14 * DAY_S,
            ),
        ),
        buckets=(
            BucketSpec(
                name=f"{bucket_prefix}-leases",
                description="One remediation at a time per node (create / compare-and-set only)",
                ttl_s=lease_ttl_s,
            ),
            BucketSpec(
                name=f"{bucket_prefix}-inventory",
                description="Node metadata and instance id → node",
            ),
            BucketSpec(
                name=f"{bucket_prefix}-control",
                description="Pause switch, approvals and per-class overrides",
                history=5,
            ),
            BucketSpec(
                name=f"{bucket_prefix}-diagnoser",
                description="The diagnoser's durable memory: crash signatures per host (crash.<cluster>.<node>)",
                ttl_s=8 * DAY_S,  # longer than the 7-day crash window; every new crash rewrites the key
            ),
        ),
    )
