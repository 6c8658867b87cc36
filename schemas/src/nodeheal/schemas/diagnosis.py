"""`Diagnosis`: why a node is unhealthy, how sure we are, and the ordered ladder of repairs."""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field

from nodeheal.schemas.anomaly import Evidence
from nodeheal.schemas.base import Frozen, Message, UtcDatetime
from nodeheal.schemas.kernel import Category

DIAGNOSIS_SCHEMA: Final = "nodeheal.diagnosis/v1"

ActionName = Literal[
    "none",
    "restart_service",
    "restart_agent",  # delete the node agent's pod; its DaemonSet recreates it
    "clean_disk",
    "cordon",
    "taint",
    "drain",
    "reboot",
    "redeploy",
    "accept_cloud_event",
    "wait_for_cloud_event",
    "retire",  # take the machine out of the fleet: label and taint it for replacement (after cordon + drain)
    "replace",  # release the retired instance and recreate it from its node pool's launch template (approval)
    "uncordon",
    "escalate",
]

DISRUPTIVE_ACTIONS: frozenset[str] = frozenset(
    {"drain", "reboot", "redeploy", "accept_cloud_event", "retire", "replace"}
)


class RecommendedAction(Frozen):
    action: ActionName
    reason: str
    target: str | None = Field(default=None, description="service name, disk path, cloud event id, ...")
    timeout_s: float | None = Field(default=None, gt=0, description="how long before the next rung")


class CrashSignature(Frozen):
    """A crash bucket: same kind + RIP function + top reliable frames → same bucket key."""

    kind: str
    bucket: str
    panic_string: str | None = None
    rip_func: str | None = None
    module: str | None = None
    top_frames: tuple[str, ...] = ()
    bug_at: str | None = None
    taint: str | None = None
    kernel_release: str | None = None


class FleetCorrelation(Frozen):
    """This node belongs to a group failing far above the fleet rate."""

    finding_id: str
    dimension: str = Field(description="zone, rack, machine_model, cpu_model, os, kernel, node_pool")
    value: str
    group_rate: float
    fleet_rate: float
    ratio: float
    p_value: float
    affected_nodes: int
    signature_bucket: str | None = None


class Diagnosis(Message):
    schema_: Literal["nodeheal.diagnosis/v1"] = Field(default=DIAGNOSIS_SCHEMA, alias="schema")
    anomaly_ids: tuple[str, ...] = Field(min_length=1)
    anomaly_kinds: tuple[str, ...] = ()
    category: Category
    cause: str = Field(description="a specific name, e.g. kubelet_crashloop, host_redeploy, rack_partition")
    confidence: float = Field(ge=0, le=1)
    evidence: tuple[Evidence, ...] = ()
    kernel_classes: tuple[str, ...] = ()
    crash_signature: CrashSignature | None = None
    fleet_correlation: FleetCorrelation | None = None
    recommended: tuple[RecommendedAction, ...] = ()
    fault_onset: UtcDatetime | None = None
    identified_at: UtcDatetime
    resolved: bool = Field(default=False, description="the anomalies behind it have all resolved")
    recovered: bool = Field(
        default=False,
        description="the episode fired and resolved while no diagnoser ran (e.g. inside the singleton's wait after a "
        "kill): its verdict is said after the fact, for the record, with `resolved` true — the node is already back, "
        "so it is never acted on",
    )
    ended_at: UtcDatetime | None = Field(
        default=None,
        description="when the episode ended (its last anomaly resolved), on a `recovered` verdict: `identified_at` is "
        "when the restarted diagnoser said it, later",
    )
    replay: bool = Field(default=False, description="produced by a replay sandbox; never acted upon")
    episode_id: str | None = Field(
        default=None,
        description="the fault episode this diagnosis belongs to (the id of its first anomaly); updates of a "
        "diagnosis for the same fault keep it, so the remediator continues one ladder per episode",
    )

    @property
    def episode(self) -> str:
        """The episode key: `episode_id`, else the first anomaly id (which is how the diagnoser names it)."""
        return self.episode_id or self.anomaly_ids[0]
