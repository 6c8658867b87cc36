"""`CloudSystemEvent`: one message per (provider event, observed status).

Field names and mappings: `docs/cloud-events.md` and `docs/design.md`. The message id is deterministic from
(cloud, provider_event_id, phase) so every channel that reports the same transition dedups to one
message. The raw payload is kept for audits and postmortems.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nodeheal.schemas.base import Frozen, Message, NonEmptyStr, UtcDatetime
from nodeheal.schemas.ids import deterministic_id

CLOUD_SCHEMA: Final = "nodeheal.cloud/v1"

Cloud = Literal["alibaba", "aws", "azure", "gcp"]
CLOUD_ALIASES: Final[dict[str, str]] = {"gce": "gcp"}
"""Other spellings of a `Cloud` found in stored messages: the inventory (`NodeInventory.cloud`, from the node's
`spec.providerID` scheme) calls Google's cloud `gce` where the events say `gcp`. Both stay as written on the
wire (records already in the bucket and in CLOUD keep matching); compare through `canonical_cloud`."""


def canonical_cloud(name: str | None) -> str | None:
    """The one name of a cloud, whichever message spelled it (`gce` → `gcp`; case-insensitive)."""
    if name is None:
        return None
    lowered = name.lower()
    return CLOUD_ALIASES.get(lowered, lowered)


Channel = Literal[
    "cms_notification",
    "eventbridge",
    "api_history",
    "api_fullstatus",
    "imds",
    "health_api",
    "cloud_logging",
    "metadata",
    "simulator",
]
CloudAction = Literal[
    "reboot",
    "redeploy",
    "stop",
    "terminate",
    "live_migrate",
    "freeze",
    "disk_repair",
    "network_power_maintenance",
    "state_change",
    "unknown",
]
CloudCause = Literal["planned_maintenance", "host_failure", "guest_failure", "user", "billing", "spot", "unknown"]
CloudPhase = Literal[
    "pending_approval", "scheduled", "in_progress", "completed", "avoided", "canceled", "failed", "unknown"
]
TERMINAL_PHASES: frozenset[str] = frozenset({"completed", "avoided", "canceled", "failed"})
AckMethod = Literal[
    "alibaba.RebootInstance",
    "alibaba.RedeployInstance",
    "alibaba.AcceptInquiredSystemEvent",
    "azure.StartRequests",
    "aws.RebootInstances",
    "aws.StopStartInstances",
    "aws.ModifyInstanceEventStartTime",
]
Severity = Literal["critical", "warning", "info"]


class AckOption(Frozen):
    """Something that can be done early about the event, and until when."""

    method: AckMethod
    valid_until: UtcDatetime | None = None


def cloud_event_message_id(cloud: str, provider_event_id: str, phase: str) -> str:
    return deterministic_id(cloud, provider_event_id, phase, prefix="cloud-")


class CloudEventHead(BaseModel):
    """The fields of a `CloudSystemEvent` that say which event it is and what kind, validated as the event
    validates them and nothing else (the rest of the message, `raw` included, is skipped by the JSON parser): a
    reader that keeps a few kinds of event looks here first and validates only what it keeps. Not a message of
    its own; never published."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    node: NonEmptyStr
    cloud: Cloud
    provider_event_id: str = Field(min_length=1)
    action: CloudAction


class CloudSystemEvent(Message):
    schema_: Literal["nodeheal.cloud/v1"] = Field(default=CLOUD_SCHEMA, alias="schema")
    cloud: Cloud
    channel: Channel
    provider_event_id: str = Field(min_length=1)
    provider_event_type: str
    provider_status: str | None = None
    action: CloudAction
    cause: CloudCause
    phase: CloudPhase
    is_terminal: bool = False
    instance_id: str = Field(min_length=1)
    resource_ref: str | None = None
    region: str | None = None
    zone: str | None = None
    account_id: str | None = None
    published_at: UtcDatetime | None = None
    not_before: UtcDatetime | None = None
    not_after: UtcDatetime | None = None
    deadline: UtcDatetime | None = None
    started_at: UtcDatetime | None = None
    finished_at: UtcDatetime | None = None
    expected_duration_s: int | None = None
    severity: Severity | None = None
    description: str | None = None
    source_initiator: Literal["platform", "user"] | None = None
    ack: tuple[AckOption, ...] = ()
    local_data_loss: bool = False
    is_simulated: bool = False
    extended: dict[str, Any] = Field(default_factory=dict)
    observed_at: UtcDatetime
    raw: dict[str, Any] | list[Any] | str | None = None
    node_mapped: bool | None = Field(
        default=None,
        description="True: `node` came from the inventory or a node-local poller; False: the instance was not "
        "in the inventory and `node` is the instance id; None: not mapped yet (offline normalization)",
    )

    @model_validator(mode="after")
    def _terminal_matches_phase(self) -> CloudSystemEvent:
        if self.is_terminal != (self.phase in TERMINAL_PHASES):
            msg = f"is_terminal={self.is_terminal} contradicts phase={self.phase!r}"
            raise ValueError(msg)
        return self

    @property
    def dedup_id(self) -> str:
        return cloud_event_message_id(self.cloud, self.provider_event_id, self.phase)
