"""`FleetFinding`: a fleet-level statement of the diagnoser (kept in DIAGNOSES on `finding_subject`).

Two kinds: `rate_outlier` (a group — zone, rack, machine model, CPU model, OS, kernel, node pool — has
crashes / faults far above the rest of the fleet, with a one-sided test and minimum support) and
`down_spike` (the share of down nodes in a failure domain jumped) and `sudden_rise` (a group — or the whole
fleet, `dimension="fleet"` — has far more crashes / faults now than in its own recent history).
Raised once per episode, said again (same `finding_id`, new `id`) when the episode names nodes it did not
name before (`affected_nodes`: every node named so far); a later message with `cleared=True` ends the
episode. `node` is `"fleet"`: a finding concerns a group.

`new_crash_bucket` is a notice to the kernel team, not a risk: the first crash of a crash signature the
fleet never had (`dimension="crash_bucket"`, `value` and `signature_bucket` the bucket), sent once per bucket
(the bucket's record in the `nodeheal-crash-buckets` KV remembers it), never cleared; it carries the
bucket's count (`group_events`), nodes (`group_nodes`, `affected_nodes`), `kernels`, `machine_models`,
`first_seen` and `last_seen`.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field

from nodeheal.schemas.base import Message, UtcDatetime

FINDING_SCHEMA: Final = "nodeheal.finding/v1"
FLEET_NODE: Final = "fleet"

FindingKind = Literal["rate_outlier", "down_spike", "sudden_rise", "new_crash_bucket"]


class FleetFinding(Message):
    schema_: Literal["nodeheal.finding/v1"] = Field(default=FINDING_SCHEMA, alias="schema")
    node: str = Field(default=FLEET_NODE, min_length=1, max_length=253)
    finding_id: str = Field(description="stable per (kind, dimension, value, scope, episode start)")
    kind: FindingKind
    dimension: str = Field(description="zone, rack, machine_model, cpu_model, os, kernel, node_pool")
    value: str
    scope: str = Field(description="what was counted: 'any', 'category:<c>', 'bucket:<crash bucket>', 'down'")
    group_events: int = Field(ge=0)
    group_nodes: int = Field(ge=0, description="nodes in the group (population from the inventory)")
    fleet_events: int = Field(ge=0)
    fleet_nodes: int = Field(ge=0)
    group_rate: float = Field(ge=0, description="events per node in the window (down_spike: fraction down)")
    rest_rate: float = Field(ge=0, description="the same for the rest of the fleet")
    ratio: float = Field(ge=0)
    p_value: float | None = Field(default=None, ge=0, le=1)
    test: str | None = Field(default=None, description="e.g. 'binomial one-sided, bonferroni over 37 groups'")
    affected_nodes: tuple[str, ...] = ()
    signature_bucket: str | None = None
    window_s: float = Field(gt=0)
    detected_at: UtcDatetime
    cleared: bool = False
    message: str = ""
    crash_class: str | None = Field(default=None, description="new_crash_bucket: the kernel-log class of the crash")
    kernels: tuple[str, ...] = Field(default=(), description="new_crash_bucket: kernel releases of its crashes")
    machine_models: tuple[str, ...] = Field(default=(), description="new_crash_bucket: machine models that crashed")
    first_seen: UtcDatetime | None = Field(default=None, description="new_crash_bucket: first crash of the bucket")
    last_seen: UtcDatetime | None = Field(default=None, description="new_crash_bucket: last crash of the bucket")
