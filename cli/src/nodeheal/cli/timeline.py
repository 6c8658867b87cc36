"""Incident timelines and the 1-5-10 figures, rebuilt from recorded messages. PURE: no NATS, no clock.

`nodeheal replay`, `--what-if` and the `nodeheal demo` report all compute their time-to-detect /
identify / repair with this one function, so the figures always agree. It must never talk to a
transport, read the clock or depend on the order the messages arrive in: the same messages give a
byte-identical report.

Definitions (documented for operators in docs/replay.md):

- An *anomaly episode* is one firing of an `anomaly_key` and, when it came, its resolution.
- An *incident* groups a node's overlapping episodes: an episode joins the node's open incident when
  its `fault_onset` is at or before the moment the incident's last episode resolved (an incident with
  an unresolved episode stays open).
- `onset` = the earliest `fault_onset` (first bad observation) of the incident's episodes.
- `ttd_s` = first `detected_at` − onset.
- `tti_s` = `identified_at` of the first diagnosis that is not a `resolved=True` update (a `recovered`
  verdict, said after an episode that ended while no diagnoser ran, counts) − onset.
- `ttr_s` = `repaired_at` − onset, where `repaired_at` is the last audit `verified` time when an
  action was really taken (a non-dry-run record in phase started / succeeded / failed / verified
  of an action that changes the node: not `none`, `escalate` or `wait_for_cloud_event`),
  else the time the last of its anomalies resolved. An action taken but never verified leaves the
  incident unrepaired (`ttr_s` None): nobody proved the node healthy.
- An incident *open* at the end of the window (an anomaly with no resolution in it) is repaired only
  when an action was taken and its last verification came after every still-firing anomaly was
  detected (the verification proved the node healthy; e.g. a `kernel_fault` the detector holds for
  `event_hold_s` after the reboot that cured it). Without an action, or with an anomaly detected after
  the last verification that is still firing, it is not repaired: `ttr_s` None. The demo report and
  `nodeheal replay` read the same window through this one function, so they agree.
- A machine *replaced* through the cloud API (machine rotation: a `replace` action succeeded, the
  instance released and recreated from its pool's launch template) is repaired when the replacement
  succeeded: the broken machine left the fleet, nothing of it can be verified healthy, and the silence
  of the released instance that is still firing afterwards is not a fault of any machine in the fleet.
- An *operator request* (a diagnosis with cause `operator_request`, sent by `nodeheal batch`) is no
  incident: nothing was found broken. It is listed on its own (`operator_requests`, with the audit
  records of its actions) and never joins, repairs or classifies an incident.
- 1-5-10 is cumulative from onset: detected within 60 s, identified within 300 s, repaired within 600 s.
- Percentiles are nearest-rank (the value at rank ⌈p/100 · n⌉ of the sorted sample): always an
  observed value, no interpolation.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict

from nodeheal.schemas.anomaly import Anomaly
from nodeheal.schemas.anomaly import Evidence as SchemaEvidence
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.causes import OPERATOR_REQUEST
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.ids import deterministic_id
from nodeheal.schemas.probe import NodeProbe

TimelineMessage = NodeProbe | CloudSystemEvent | Anomaly | Diagnosis | RemediationRecord
"""What `build_timeline` reads; anything else is rejected with a TypeError."""

DETECT_BUDGET_S: Final = 60.0
IDENTIFY_BUDGET_S: Final = 300.0
REPAIR_BUDGET_S: Final = 600.0
BUDGETS_S: Final = {"detect": DETECT_BUDGET_S, "identify": IDENTIFY_BUDGET_S, "repair": REPAIR_BUDGET_S}

ATTACH_GRACE_S: Final = 900.0
"""An audit record or diagnosis that names nothing we know is attached to the node's latest incident
that began before it, if it came no later than this after the incident's last anomaly resolved."""

CLOUD_LOOKBACK_S: Final = 3600.0
"""Cloud events up to this long before the onset are shown with the incident (scheduled maintenance)."""

ACTION_TAKEN_PHASES: Final = frozenset({"started", "succeeded", "failed", "verified"})
NON_REPAIR_ACTIONS: Final = frozenset({"none", "escalate", "wait_for_cloud_event"})
"""Decisions that leave the node as it is: an incident with only these recovers on its own (or by the cloud)."""

_ROUND = 3  # milliseconds: durations are rounded so float noise never changes the JSON


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EvidenceEntry(_Model):
    kind: str
    summary: str
    value: float | str | bool | None = None
    threshold: float | None = None
    ref: str | None = None


class AnomalyEpisode(_Model):
    anomaly_key: str
    kind: str
    subject: str | None
    severity: str
    fault_onset: datetime
    detected_at: datetime
    resolved_at: datetime | None
    expected: bool
    firing_id: str | None
    resolved_id: str | None
    evidence: tuple[EvidenceEntry, ...]


class DiagnosisEntry(_Model):
    id: str
    identified_at: datetime
    cause: str
    category: str
    confidence: float
    resolved: bool
    anomaly_ids: tuple[str, ...]
    kernel_classes: tuple[str, ...]
    recovered: bool = False  # said after the episode ended while no diagnoser ran: its only verdict
    recommended: tuple[str, ...]
    evidence: tuple[EvidenceEntry, ...]


class AuditPhase(_Model):
    phase: str
    at: datetime
    reason: str
    record_id: str
    error: str | None = None


class ActionEntry(_Model):
    action_id: str
    action: str
    target: str | None
    rung: int | None
    dry_run: bool
    diagnosis_id: str | None
    phases: tuple[AuditPhase, ...]


class CloudEntry(_Model):
    id: str
    at: datetime
    action: str
    phase: str
    cause: str
    provider_event_id: str
    not_before: datetime | None


class Budget(_Model):
    detect: bool | None
    identify: bool | None
    repair: bool | None


class Incident(_Model):
    incident_id: str
    cluster: str
    node: str
    klass: str
    onset: datetime
    detected_at: datetime
    identified_at: datetime | None
    repaired_at: datetime | None
    recovered_at: datetime | None
    ttd_s: float
    tti_s: float | None
    ttr_s: float | None
    cause: str | None
    category: str | None
    expected: bool
    open: bool
    action_taken: bool
    budget: Budget
    anomalies: tuple[AnomalyEpisode, ...]
    diagnoses: tuple[DiagnosisEntry, ...]
    actions: tuple[ActionEntry, ...]
    cloud_events: tuple[CloudEntry, ...]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted({a.kind for a in self.anomalies}))


class OperatorRequest(_Model):
    """A person's request for one node (`nodeheal batch`), with what the remediator did for it.

    Not an incident: nothing on the node was found broken, so it has no ttd / tti / ttr and is not in the
    1-5-10 figures; the anomalies its own steps cause (our reboot) are incidents of their own (expected)."""

    request_id: str
    cluster: str
    node: str
    episode_id: str | None
    requested_at: datetime
    request: DiagnosisEntry
    actions: tuple[ActionEntry, ...]


class ProbeTransition(_Model):
    """A source's probes turned bad or good (a compact lane instead of every probe)."""

    at: datetime
    source: str
    bad: bool
    reasons: tuple[str, ...]


class NodeTimeline(_Model):
    cluster: str
    node: str
    probes: int
    bad_probes: int
    first_probe: datetime | None
    last_probe: datetime | None
    probe_transitions: tuple[ProbeTransition, ...]
    cloud_events: tuple[CloudEntry, ...]
    incident_ids: tuple[str, ...]
    operator_request_ids: tuple[str, ...]
    unattached_actions: tuple[ActionEntry, ...]
    unattached_diagnoses: tuple[DiagnosisEntry, ...]


class Distribution(_Model):
    """Nearest-rank percentiles in seconds; all None when there is no sample."""

    p50: float | None
    p95: float | None
    max: float | None


class ClassSummary(_Model):
    count: int
    ttd_s: Distribution
    tti_s: Distribution
    ttr_s: Distribution
    met_1_5_10: int


class Counts(_Model):
    incidents: int
    nodes_with_incidents: int
    nodes_seen: int
    expected: int
    open: int
    identified: int
    repaired: int
    actions_taken: int
    met_detect: int
    met_identify: int
    met_repair: int
    met_1_5_10: int
    probes: int
    cloud_events: int
    anomalies: int
    diagnoses: int
    audit_records: int
    operator_requests: int


class Summary(_Model):
    ttd_s: Distribution
    tti_s: Distribution
    ttr_s: Distribution
    by_class: dict[str, ClassSummary]
    counts: Counts
    budgets_s: dict[str, float]
    percentile_method: Literal["nearest-rank"] = "nearest-rank"


class Timeline(_Model):
    incidents: tuple[Incident, ...]
    nodes: tuple[NodeTimeline, ...]
    summary: Summary
    operator_requests: tuple[OperatorRequest, ...] = ()

    def to_report(self) -> dict[str, object]:
        """The report shape shared with `nodeheal demo`: summary keys at the top, then `incidents` and
        `operator_requests`."""
        summary = self.summary.model_dump(mode="json")
        return {
            **summary,
            "incidents": [i.model_dump(mode="json") for i in self.incidents],
            "operator_requests": [r.model_dump(mode="json") for r in self.operator_requests],
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        import json

        return json.dumps(self.to_report(), indent=indent, sort_keys=True, ensure_ascii=False)


# --------------------------------------------------------------------------------------------- helpers


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile: the value at rank ⌈p/100 · n⌉ of the sorted sample (None if empty)."""
    if not values:
        return None
    if not 0 < p <= 100:
        msg = f"percentile p={p} is outside (0, 100]"
        raise ValueError(msg)
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def distribution(values: Sequence[float]) -> Distribution:
    return Distribution(p50=percentile(values, 50), p95=percentile(values, 95), max=max(values) if values else None)


def _seconds(delta: timedelta) -> float:
    return round(delta.total_seconds(), _ROUND)


def _evidence(items: Iterable[SchemaEvidence]) -> tuple[EvidenceEntry, ...]:
    return tuple(
        EvidenceEntry(kind=e.kind, summary=e.summary, value=e.value, threshold=e.threshold, ref=e.ref) for e in items
    )


def default_class(incident: Incident) -> str:
    """The class an incident is summarised under: its diagnosis cause, else its first anomaly kind."""
    if incident.cause:
        return incident.cause
    return incident.anomalies[0].kind


def _probe_reasons(probe: NodeProbe) -> tuple[str, ...]:
    """Obvious badness a person reads off a probe. A display aid: the detector's rules decide anomalies."""
    reasons: list[str] = []
    for r in probe.reachability:
        if not r.ok:
            reasons.append(f"unreachable:{r.check}")
    if probe.ready is False:
        reasons.append("not_ready")
    for fs in probe.filesystems:
        if fs.readonly:
            reasons.append(f"readonly:{fs.mount}")
    for svc in probe.services:
        if svc.state in ("failed", "inactive") or svc.healthy is False:
            reasons.append(f"service:{svc.name}={svc.state}")
    return tuple(sorted(set(reasons)))


NodeKey = tuple[str, str]


def _episodes(anomalies: Iterable[Anomaly]) -> list[AnomalyEpisode]:
    """Pair firing and resolved messages of each anomaly_key, in time order."""
    by_key: dict[str, list[Anomaly]] = defaultdict(list)
    for a in anomalies:
        by_key[a.anomaly_key].append(a)
    out: list[AnomalyEpisode] = []
    for key in sorted(by_key):
        msgs = sorted(by_key[key], key=lambda a: (a.detected_at, 0 if a.status == "firing" else 1, a.time, a.id))
        pairs: list[tuple[Anomaly | None, Anomaly | None]] = []
        current: Anomaly | None = None
        for a in msgs:
            if a.status == "firing":
                if current is not None and current.detected_at == a.detected_at:
                    continue  # the same firing re-published (a new id): keep the first
                if current is not None:
                    pairs.append((current, None))  # fired again without a resolution in between
                current = a
            else:
                if current is not None:
                    pairs.append((current, a))
                    current = None
                elif pairs and pairs[-1][1] is not None and pairs[-1][1].detected_at == a.detected_at:
                    continue  # a duplicate resolution
                else:
                    pairs.append((None, a))  # the window began after it fired
        if current is not None:
            pairs.append((current, None))
        for firing, resolved in pairs:
            base = firing if firing is not None else resolved
            assert base is not None
            resolved_at = None
            if resolved is not None:
                resolved_at = resolved.resolved_at or resolved.time
            out.append(
                AnomalyEpisode(
                    anomaly_key=key,
                    kind=base.kind,
                    subject=base.subject,
                    severity=base.severity,
                    fault_onset=base.fault_onset,
                    detected_at=base.detected_at,
                    resolved_at=resolved_at,
                    expected=base.expected or (resolved is not None and resolved.expected),
                    firing_id=firing.id if firing is not None else None,
                    resolved_id=resolved.id if resolved is not None else None,
                    evidence=_evidence(base.evidence),
                )
            )
    return out


class _Draft:
    """An incident being assembled."""

    def __init__(self, cluster: str, node: str) -> None:
        self.cluster = cluster
        self.node = node
        self.episodes: list[AnomalyEpisode] = []
        self.diagnoses: list[DiagnosisEntry] = []
        self.records: list[RemediationRecord] = []
        self.cloud: list[CloudEntry] = []

    @property
    def onset(self) -> datetime:
        return min(e.fault_onset for e in self.episodes)

    @property
    def end(self) -> datetime | None:
        """When the last episode resolved; None while any is unresolved."""
        if any(e.resolved_at is None for e in self.episodes):
            return None
        return max(e.resolved_at for e in self.episodes if e.resolved_at is not None)

    def covers(self, at: datetime, *, grace_s: float) -> bool:
        end = self.end
        return self.onset <= at and (end is None or at <= end + timedelta(seconds=grace_s))

    def ids(self) -> set[str]:
        ids: set[str] = set()
        for e in self.episodes:
            ids.add(e.anomaly_key)
            if e.firing_id:
                ids.add(e.firing_id)
            if e.resolved_id:
                ids.add(e.resolved_id)
        return ids


class _Request:
    """An operator request being assembled: its diagnosis and the audit records of its actions."""

    def __init__(self, diagnosis: Diagnosis) -> None:
        self.diagnosis = diagnosis
        self.records: list[RemediationRecord] = []

    def finish(self) -> OperatorRequest:
        d = self.diagnosis
        return OperatorRequest(
            request_id=d.id,
            cluster=d.cluster,
            node=d.node,
            episode_id=d.episode_id,
            requested_at=d.identified_at,
            request=_diagnosis_entry(d),
            actions=_actions(self.records),
        )


def _latest_request(requests: Sequence[_Request], at: datetime) -> _Request | None:
    """The node's latest operator request made at or before `at` (else its first one)."""
    before = [rq for rq in requests if rq.diagnosis.identified_at <= at]
    if before:
        return before[-1]
    return requests[0] if requests else None


def _latest_covering(drafts: Sequence[_Draft], at: datetime, *, grace_s: float) -> _Draft | None:
    for draft in reversed(drafts):  # drafts are in onset order
        if draft.covers(at, grace_s=grace_s):
            return draft
    return None


def _diagnosis_entry(d: Diagnosis) -> DiagnosisEntry:
    return DiagnosisEntry(
        id=d.id,
        identified_at=d.identified_at,
        cause=d.cause,
        category=d.category,
        confidence=d.confidence,
        resolved=d.resolved,
        recovered=d.recovered,
        anomaly_ids=tuple(d.anomaly_ids),
        kernel_classes=tuple(d.kernel_classes),
        recommended=tuple(r.action + (f"({r.target})" if r.target else "") for r in d.recommended),
        evidence=_evidence(d.evidence),
    )


def _cloud_entry(c: CloudSystemEvent) -> CloudEntry:
    return CloudEntry(
        id=c.id,
        at=c.observed_at,
        action=c.action,
        phase=c.phase,
        cause=c.cause,
        provider_event_id=c.provider_event_id,
        not_before=c.not_before,
    )


def _actions(records: Iterable[RemediationRecord]) -> tuple[ActionEntry, ...]:
    by_action: dict[str, list[RemediationRecord]] = defaultdict(list)
    for r in records:
        by_action[r.action_id].append(r)
    entries: list[ActionEntry] = []
    for action_id, recs in by_action.items():
        recs.sort(key=lambda r: (r.time, r.phase, r.id))
        first = recs[0]
        entries.append(
            ActionEntry(
                action_id=action_id,
                action=first.action,
                target=first.target,
                rung=first.rung,
                dry_run=any(r.dry_run for r in recs),
                diagnosis_id=first.diagnosis_id,
                phases=tuple(
                    AuditPhase(phase=r.phase, at=r.time, reason=r.reason, record_id=r.id, error=r.error) for r in recs
                ),
            )
        )
    entries.sort(key=lambda a: (a.phases[0].at, a.rung if a.rung is not None else -1, a.action_id))
    return tuple(entries)


def _finish(draft: _Draft, class_of: Callable[[Incident], str]) -> Incident:
    episodes = sorted(draft.episodes, key=lambda e: (e.fault_onset, e.detected_at, e.anomaly_key))
    onset = min(e.fault_onset for e in episodes)
    detected_at = min(e.detected_at for e in episodes)
    diagnoses = tuple(sorted(draft.diagnoses, key=lambda d: (d.identified_at, d.resolved, d.id)))
    live = [d for d in diagnoses if not d.resolved or d.recovered]  # a recovered verdict identified it, late
    first = live[0] if live else None
    identified_at = first.identified_at if first else None
    recovered_at = draft.end
    actions = _actions(draft.records)
    action_taken = any(
        not a.dry_run and a.action not in NON_REPAIR_ACTIONS and any(p.phase in ACTION_TAKEN_PHASES for p in a.phases)
        for a in actions
    )
    verified = [p.at for a in actions if not a.dry_run for p in a.phases if p.phase == "verified"]
    # a machine replaced through the cloud API (rotation) is repaired when the replacement succeeded: the
    # broken machine left the fleet, so nothing of it can be verified healthy, and what its silence still
    # raises afterwards is the absence of a machine that no longer exists
    replaced = [
        p.at for a in actions if not a.dry_run and a.action == "replace" for p in a.phases if p.phase == "succeeded"
    ]
    repaired_at = (max(verified + replaced) if verified or replaced else None) if action_taken else recovered_at
    if (
        repaired_at is not None
        and not replaced
        and any(e.resolved_at is None and e.detected_at > repaired_at for e in episodes)
    ):
        repaired_at = None  # still firing at the window end and never proven healthy after it fired
    ttd_s = _seconds(detected_at - onset)
    tti_s = _seconds(identified_at - onset) if identified_at else None
    ttr_s = _seconds(repaired_at - onset) if repaired_at else None
    cloud = tuple(sorted({c.id: c for c in draft.cloud}.values(), key=lambda c: (c.at, c.phase, c.id)))
    key_episode = episodes[0]
    incident = Incident(
        incident_id=deterministic_id(
            draft.cluster, draft.node, onset.isoformat(), key_episode.anomaly_key, prefix="inc-"
        ),
        cluster=draft.cluster,
        node=draft.node,
        klass="",
        onset=onset,
        detected_at=detected_at,
        identified_at=identified_at,
        repaired_at=repaired_at,
        recovered_at=recovered_at,
        ttd_s=ttd_s,
        tti_s=tti_s,
        ttr_s=ttr_s,
        cause=first.cause if first else None,
        category=first.category if first else None,
        expected=all(e.expected for e in episodes),
        open=recovered_at is None,
        action_taken=action_taken,
        budget=Budget(
            detect=ttd_s <= DETECT_BUDGET_S,
            identify=None if tti_s is None else tti_s <= IDENTIFY_BUDGET_S,
            repair=None if ttr_s is None else ttr_s <= REPAIR_BUDGET_S,
        ),
        anomalies=tuple(episodes),
        diagnoses=diagnoses,
        actions=actions,
        cloud_events=cloud,
    )
    return incident.model_copy(update={"klass": class_of(incident)})


def _met_all(i: Incident) -> bool:
    return bool(i.budget.detect and i.budget.identify and i.budget.repair)


def summarize(
    incidents: Sequence[Incident],
    *,
    nodes_seen: int = 0,
    message_counts: dict[str, int] | None = None,
) -> Summary:
    """ttd/tti/ttr distributions over all incidents, per class (`Incident.klass`), and counts."""
    mc = message_counts or {}

    def dists(group: Sequence[Incident]) -> tuple[Distribution, Distribution, Distribution]:
        return (
            distribution([i.ttd_s for i in group]),
            distribution([i.tti_s for i in group if i.tti_s is not None]),
            distribution([i.ttr_s for i in group if i.ttr_s is not None]),
        )

    groups: dict[str, list[Incident]] = defaultdict(list)
    for i in incidents:
        groups[i.klass].append(i)
    by_class: dict[str, ClassSummary] = {}
    for klass in sorted(groups):
        ttd, tti, ttr = dists(groups[klass])
        by_class[klass] = ClassSummary(
            count=len(groups[klass]), ttd_s=ttd, tti_s=tti, ttr_s=ttr, met_1_5_10=sum(map(_met_all, groups[klass]))
        )
    ttd, tti, ttr = dists(incidents)
    counts = Counts(
        incidents=len(incidents),
        nodes_with_incidents=len({(i.cluster, i.node) for i in incidents}),
        nodes_seen=nodes_seen,
        expected=sum(i.expected for i in incidents),
        open=sum(i.open for i in incidents),
        identified=sum(i.identified_at is not None for i in incidents),
        repaired=sum(i.repaired_at is not None for i in incidents),
        actions_taken=sum(i.action_taken for i in incidents),
        met_detect=sum(bool(i.budget.detect) for i in incidents),
        met_identify=sum(bool(i.budget.identify) for i in incidents),
        met_repair=sum(bool(i.budget.repair) for i in incidents),
        met_1_5_10=sum(map(_met_all, incidents)),
        probes=mc.get("probes", 0),
        cloud_events=mc.get("cloud_events", 0),
        anomalies=mc.get("anomalies", 0),
        diagnoses=mc.get("diagnoses", 0),
        audit_records=mc.get("audit_records", 0),
        operator_requests=mc.get("operator_requests", 0),
    )
    return Summary(ttd_s=ttd, tti_s=tti, ttr_s=ttr, by_class=by_class, counts=counts, budgets_s=dict(BUDGETS_S))


# ------------------------------------------------------------------------------------------ the function


def build_timeline(
    messages: Iterable[TimelineMessage],
    *,
    class_of: Callable[[Incident], str] = default_class,
    include_expected: bool = True,
) -> Timeline:
    """Rebuild every node's incidents from the messages of a window (any order, duplicates allowed).

    `class_of` names the class an incident is summarised under (default: diagnosis cause, else the
    first anomaly kind). With `include_expected=False`, incidents whose anomalies were all expected
    (cloud maintenance, our own reboots) are left out of the incidents and the figures.
    """
    seen: set[tuple[str, str]] = set()
    probes: dict[NodeKey, list[NodeProbe]] = defaultdict(list)
    clouds: dict[NodeKey, list[CloudSystemEvent]] = defaultdict(list)
    anomalies: dict[NodeKey, list[Anomaly]] = defaultdict(list)
    diagnoses: dict[NodeKey, list[Diagnosis]] = defaultdict(list)
    records: dict[NodeKey, list[RemediationRecord]] = defaultdict(list)
    for m in messages:
        kind = type(m).__name__
        if (kind, m.id) in seen:
            continue  # redelivered / republished with the same id
        seen.add((kind, m.id))
        key = (m.cluster, m.node)
        if isinstance(m, NodeProbe):
            probes[key].append(m)
        elif isinstance(m, CloudSystemEvent):
            clouds[key].append(m)
        elif isinstance(m, Anomaly):
            anomalies[key].append(m)
        elif isinstance(m, Diagnosis):
            diagnoses[key].append(m)
        elif isinstance(m, RemediationRecord):
            records[key].append(m)
        else:  # pragma: no cover - guarded by the type, kept for callers without mypy
            msg = f"build_timeline got a {kind}; it reads probes, cloud events, anomalies, diagnoses, audit records"
            raise TypeError(msg)

    node_keys = sorted(set(probes) | set(clouds) | set(anomalies) | set(diagnoses) | set(records))
    incidents: list[Incident] = []
    operator_requests: list[OperatorRequest] = []
    nodes: list[NodeTimeline] = []
    for key in node_keys:
        cluster, node = key
        drafts: list[_Draft] = []
        for ep in sorted(
            _episodes(anomalies.get(key, [])), key=lambda e: (e.fault_onset, e.detected_at, e.anomaly_key)
        ):
            current = drafts[-1] if drafts else None
            if current is not None:
                end = current.end
                if end is None or ep.fault_onset <= end:
                    current.episodes.append(ep)
                    continue
            draft = _Draft(cluster, node)
            draft.episodes.append(ep)
            drafts.append(draft)

        # operator requests are their own entries; other diagnoses join incidents by the anomaly ids /
        # keys they name, else by time on the node
        requests: list[_Request] = []
        unattached_diag: list[DiagnosisEntry] = []
        for d in sorted(diagnoses.get(key, []), key=lambda d: (d.identified_at, d.id)):
            if d.cause == OPERATOR_REQUEST:
                requests.append(_Request(d))
                continue
            named = set(d.anomaly_ids)
            target = next((dr for dr in drafts if dr.ids() & named), None)
            if target is None:
                target = _latest_covering(drafts, d.identified_at, grace_s=ATTACH_GRACE_S)
            entry = _diagnosis_entry(d)
            if target is None:
                unattached_diag.append(entry)
            else:
                target.diagnoses.append(entry)

        # audit records: by diagnosis id, then by action id (a later phase of the same action), else by time;
        # a record of an operator request (its diagnosis, episode or cause) goes to the request, never to
        # an incident
        diag_owner: dict[str, _Draft | _Request] = {d.id: dr for dr in drafts for d in dr.diagnoses}
        diag_owner.update({rq.diagnosis.id: rq for rq in requests})
        episode_request = {rq.diagnosis.episode: rq for rq in requests}
        action_owner: dict[str, _Draft | _Request] = {}
        unattached_rec: list[RemediationRecord] = []
        pending: list[RemediationRecord] = []
        for r in sorted(records.get(key, []), key=lambda r: (r.time, r.id)):
            owner = diag_owner.get(r.diagnosis_id) if r.diagnosis_id else None
            if owner is not None:
                owner.records.append(r)
                action_owner.setdefault(r.action_id, owner)
            else:
                pending.append(r)
        for r in pending:
            owner = action_owner.get(r.action_id)
            if owner is None and (r.cause == OPERATOR_REQUEST or r.episode_id in episode_request):
                owner = episode_request.get(r.episode_id or "") or _latest_request(requests, r.time)
            if owner is None:
                owner = _latest_covering(drafts, r.time, grace_s=ATTACH_GRACE_S)
            if owner is None:
                unattached_rec.append(r)
            else:
                owner.records.append(r)
                action_owner.setdefault(r.action_id, owner)

        node_cloud = [_cloud_entry(c) for c in clouds.get(key, [])]
        for c in node_cloud:
            for dr in drafts:
                end = dr.end
                if dr.onset - timedelta(seconds=CLOUD_LOOKBACK_S) <= c.at and (end is None or c.at <= end):
                    dr.cloud.append(c)

        finished = [_finish(dr, class_of) for dr in drafts]
        if not include_expected:
            finished = [i for i in finished if not i.expected]
        incidents.extend(finished)
        node_requests = [rq.finish() for rq in requests]
        operator_requests.extend(node_requests)

        node_probes = sorted(probes.get(key, []), key=lambda p: (p.time, p.source, p.seq, p.id))
        evidence_ids = {pid for a in anomalies.get(key, []) for pid in a.probe_ids}
        transitions: list[ProbeTransition] = []
        last_bad: dict[str, bool] = {}
        bad_count = 0
        for p in node_probes:
            if not p.full and p.id not in evidence_ids:
                continue  # an agent heartbeat shows no services or file systems: no good/bad verdict of its own
            reasons = _probe_reasons(p)
            if p.id in evidence_ids:
                reasons = (*reasons, "anomaly_evidence")
            bad = bool(reasons)
            bad_count += bad
            if last_bad.get(p.source) != bad:
                transitions.append(ProbeTransition(at=p.time, source=p.source, bad=bad, reasons=reasons))
                last_bad[p.source] = bad
        nodes.append(
            NodeTimeline(
                cluster=cluster,
                node=node,
                probes=len(node_probes),
                bad_probes=bad_count,
                first_probe=node_probes[0].time if node_probes else None,
                last_probe=node_probes[-1].time if node_probes else None,
                probe_transitions=tuple(transitions),
                cloud_events=tuple(sorted(node_cloud, key=lambda c: (c.at, c.phase, c.id))),
                incident_ids=tuple(i.incident_id for i in finished),
                operator_request_ids=tuple(rq.request_id for rq in node_requests),
                unattached_actions=_actions(unattached_rec),
                unattached_diagnoses=tuple(unattached_diag),
            )
        )

    incidents.sort(key=lambda i: (i.onset, i.cluster, i.node, i.incident_id))
    message_counts = {
        "probes": sum(map(len, probes.values())),
        "cloud_events": sum(map(len, clouds.values())),
        "anomalies": sum(map(len, anomalies.values())),
        "diagnoses": sum(map(len, diagnoses.values())),
        "audit_records": sum(map(len, records.values())),
        "operator_requests": len(operator_requests),
    }
    summary = summarize(incidents, nodes_seen=len(node_keys), message_counts=message_counts)
    operator_requests.sort(key=lambda rq: (rq.requested_at, rq.cluster, rq.node, rq.request_id))
    return Timeline(
        incidents=tuple(incidents), nodes=tuple(nodes), summary=summary, operator_requests=tuple(operator_requests)
    )
