"""`nodeheal replay --what-if RULES.yaml`: re-run detection, diagnosis and planning on recorded inputs.

The sandbox is in-process only. It drives the real domain objects — `nodeheal.detector.rules.Detector`,
`nodeheal.diagnoser.reasoning.Diagnoser` (with its knowledge base) and
`nodeheal.remediator.planner.plan` — with the recorded probes, cloud events and audit records in time
order, and keeps everything they would publish in memory, marked `replay=True`. It holds no NATS
connection, so it can never publish to a live subject, take a lease or act on a node. It must never
import a transport.

RULES.yaml::

    detector:        # fields of nodeheal.detector.rules.RuleConfig
      disk_full_pct: 85
    diagnoser:       # fields of nodeheal.diagnoser.rules.DecisionConfig; durations in seconds
      rack_min_down: 2
    knowledge_base: ./kb.yaml   # optional: another knowledge base file (the diagnoser's rules.yaml format)
    policy:          # fields of nodeheal.remediator.settings.PolicySettings
      approval_required: [redeploy, reboot]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from nodeheal.cli.timeline import Incident, Timeline, TimelineMessage, build_timeline
from nodeheal.detector.fastpath import FastProbe
from nodeheal.detector.rules import Detector, RuleConfig
from nodeheal.diagnoser.crash import bucket_key, classify, kernel_of, update_record
from nodeheal.diagnoser.kb import Matcher, load_knowledge_base
from nodeheal.diagnoser.reasoning import Diagnoser, DiagnoserConfig
from nodeheal.diagnoser.rules import DecisionConfig
from nodeheal.remediator.planner import plan
from nodeheal.remediator.settings import PolicySettings
from nodeheal.schemas.anomaly import Anomaly
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.crash import CrashReport
from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.probe import NodeProbe

if TYPE_CHECKING:
    from nodeheal.cli.replay import Recording

MATCH_SLACK_S: Final = 120.0
"""A sandbox incident matches a recorded one on the same node when their spans overlap within this."""

TIME_TOLERANCE_S: Final = 1.0
"""Detection and verdict times closer than this to the recorded ones are the same decision: the sandbox's
timers and the live services' scheduling differ by milliseconds (a demo's unchanged-rules what-if listed 32
`earlier_detection` of 1–14 ms). A rule change that moves a decision moves it by a probe interval or more."""

TAIL_S: Final = 900.0
"""After the last recorded input the sandbox's timers run on for this long (or to --until if sooner)."""

_KNOWN_KEYS: Final = frozenset({"detector", "diagnoser", "knowledge_base", "policy"})


@dataclass(frozen=True)
class WhatIfRules:
    detector: RuleConfig
    diagnoser: DecisionConfig
    knowledge_base: Path | None
    policy: PolicySettings
    source: str


def load_rules(path: Path) -> WhatIfRules:
    """Read and validate RULES.yaml; every mistake is a ValueError naming the file, the key and the value."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        msg = f"{path}: not valid YAML ({exc})"
        raise ValueError(msg) from exc
    if not isinstance(raw, dict):
        msg = f"{path}: expected a mapping with keys {sorted(_KNOWN_KEYS)}, got {type(raw).__name__}"
        raise ValueError(msg)
    unknown = set(raw) - _KNOWN_KEYS
    if unknown:
        msg = f"{path}: unknown keys {sorted(unknown)}; use {sorted(_KNOWN_KEYS)}"
        raise ValueError(msg)
    # one check of every section's keys: the pydantic models ignore unknown fields (they also read the services'
    # environment), so a typo would run the sandbox on the defaults and report "no differences"
    sections: dict[str, tuple[str, set[str]]] = {
        "detector": (RuleConfig.__name__, set(RuleConfig.model_fields)),
        "policy": (PolicySettings.__name__, set(PolicySettings.model_fields)),
        "diagnoser": (DecisionConfig.__name__, {f.name for f in dataclasses.fields(DecisionConfig)}),
    }
    for section, (kind, known) in sections.items():
        given = raw.get(section) or {}
        if not isinstance(given, dict):
            msg = f"{path}: {section} must be a mapping of {kind} fields, got {type(given).__name__}"
            raise ValueError(msg)
        stray = sorted(set(given) - known)
        if stray:
            msg = f"{path}: {section}.{stray[0]} is not a {kind} field; known: {sorted(known)}"
            raise ValueError(msg)
    try:
        detector = RuleConfig.model_validate(raw.get("detector") or {})
        policy = PolicySettings.model_validate(raw.get("policy") or {})
    except ValidationError as exc:
        msg = f"{path}: {exc}"
        raise ValueError(msg) from exc
    diag_raw = raw.get("diagnoser") or {}
    values: dict[str, Any] = {}
    for key, value in diag_raw.items():
        default = getattr(DecisionConfig(), key)
        if isinstance(default, timedelta):
            if not isinstance(value, int | float):
                msg = f"{path}: diagnoser.{key}={value!r} must be a number of seconds"
                raise ValueError(msg)
            values[key] = timedelta(seconds=float(value))
        elif isinstance(default, tuple):
            values[key] = tuple(value)
        else:
            values[key] = value
    kb_path = raw.get("knowledge_base")
    kb = (path.parent / str(kb_path)).resolve() if kb_path else None
    if kb is not None and not kb.is_file():
        msg = f"{path}: knowledge_base {kb_path!r} does not exist (looked at {kb})"
        raise ValueError(msg)
    return WhatIfRules(
        detector=detector,
        diagnoser=dataclasses.replace(DecisionConfig(), **values),
        knowledge_base=kb,
        policy=policy,
        source=str(path),
    )


def audit_look_back(rules: WhatIfRules) -> timedelta:
    """How far before `--since` the what-if reads AUDIT: as far back as the sandbox's detector and diagnoser look
    at our own remediation. The detector takes downtime and a new boot id as ours for `expected_grace_s` after a
    disruptive action's intent / started / succeeded (`Detector.observe_remediation`); the diagnoser explains
    downtime by our reboot / redeploy started within `cloud_recent` (`own_remediation`) and counts the reboots /
    redeploys within `repeat_window` for its ladder (`repeated_repairs`). Live, both knew these records (the
    detector reads AUDIT as it comes, the diagnoser reads a day of it back on start)."""
    return max(
        timedelta(seconds=rules.detector.expected_grace_s),
        rules.diagnoser.cloud_recent,
        rules.diagnoser.repeat_window,
    )


@dataclass
class Sandbox:
    """What the sandbox would have published: kept here, never sent."""

    anomalies: list[Anomaly] = field(default_factory=list)
    diagnoses: list[Diagnosis] = field(default_factory=list)
    plans: dict[str, tuple[str, bool, tuple[str, ...]]] = field(default_factory=dict)  # diagnosis id → first step


def _fast(probe: NodeProbe) -> FastProbe:
    return msgspec.json.decode(probe.to_json(), type=FastProbe)


def run_sandbox(
    *,
    inputs: list[NodeProbe | CloudSystemEvent | RemediationRecord],
    rules: WhatIfRules,
    until: datetime,
    open_before: Sequence[CloudSystemEvent] = (),
    audit_before: Sequence[RemediationRecord] = (),
    crashes: Sequence[CrashReport] = (),
) -> Sandbox:
    """Drive detector → diagnoser → planner with the recorded inputs in time order. `open_before`: the cloud
    events still open when the window began (`Recording.open_before`), known from the first input on, as
    the live services knew them. `audit_before`: the AUDIT records of the look-back before the window
    (`Recording.audit_before`): given to the detector and the diagnoser before the first input, each as of its
    own time (state only: nothing is evaluated on them). `crashes`: the agents' crash reports of the window, each
    classified and counted in a crash-bucket record kept here (the live record's counts from before the window
    are not known: a bucket starts at this window's first crash) and handed to the diagnoser at its time, as the
    live diagnoser does — without them a kernel panic's episode was re-diagnosed `unexplained_reboot`."""
    box = Sandbox()
    ordered: list[NodeProbe | CloudSystemEvent | RemediationRecord | CrashReport] = sorted(
        [*inputs, *crashes], key=lambda m: (m.time, type(m).__name__, m.node, m.id)
    )
    buckets: dict[str, dict[str, Any]] = {}
    start = ordered[0].time.timestamp() if ordered else until.timestamp()
    detector = Detector(config=rules.detector, started_at=start)
    matcher = Matcher(load_knowledge_base(rules.knowledge_base))
    diagnoser = Diagnoser(matcher=matcher, config=DiagnoserConfig(decision=rules.diagnoser, replay=True))
    holds: dict[str, datetime] = {}
    cloud_by_node: dict[tuple[str, str], dict[str, CloudSystemEvent]] = {}

    def evaluate(keys: set[str], now: datetime) -> None:
        for key in sorted(keys):
            outcome = diagnoser.evaluate(key, now=now)
            if outcome.hold_until is not None:
                holds[key] = outcome.hold_until
            if outcome.diagnosis is not None:
                d = outcome.diagnosis.model_copy(update={"replay": True})
                box.diagnoses.append(d)
                if not d.resolved:
                    events = list(cloud_by_node.get((d.cluster, d.node), {}).values())
                    p = plan(diagnosis=d, cloud_events=events, policy=rules.policy, now=now)
                    first = p.steps[0] if p.steps else None
                    box.plans[d.id] = (
                        first.action if first else "none",
                        bool(first and first.needs_approval),
                        tuple(s.action for s in p.steps),
                    )

    def drain(now: datetime) -> None:
        out, detector.outbox = detector.outbox, []
        touched: set[str] = set()
        for a in out:
            marked = a.model_copy(update={"replay": True})
            box.anomalies.append(marked)
            touched |= diagnoser.on_anomaly(marked)
        due = {k for k, t in holds.items() if t <= now}
        for k in due:
            holds.pop(k)
        evaluate(touched | due, now)

    for r in sorted(audit_before, key=lambda r: (r.time, r.node, r.id)):
        detector.observe_remediation(r, now=min(start, r.time.timestamp()))
        diagnoser.on_audit(r)
    opened = datetime.fromtimestamp(start, tz=UTC)
    for ev in sorted(open_before, key=lambda e: (e.time, e.node, e.id)):
        cloud_by_node.setdefault((ev.cluster, ev.node), {})[ev.provider_event_id] = ev
        detector.observe_cloud(ev, now=start, at=min(ev.time.timestamp(), start))
        evaluate(diagnoser.on_cloud_event(ev), opened)
    for m in ordered:
        now = m.time
        detector.tick(now=now.timestamp())
        drain(now)
        if isinstance(m, NodeProbe):
            detector.observe_probe(_fast(m), now=now.timestamp())
        elif isinstance(m, CloudSystemEvent):
            cloud_by_node.setdefault((m.cluster, m.node), {})[m.provider_event_id] = m
            detector.observe_cloud(m, now=now.timestamp())
            evaluate(diagnoser.on_cloud_event(m), now)
        elif isinstance(m, CrashReport):
            verdict = classify(m, matcher)
            key = bucket_key(verdict)
            counted = update_record(buckets.get(key), verdict, kernel=kernel_of(verdict, m), at=now)
            if counted is not None:
                buckets[key] = counted
            evaluate(diagnoser.on_crash(verdict, buckets.get(key, {})), now)
        else:
            detector.observe_remediation(m, now=now.timestamp())
            diagnoser.on_audit(m)
        drain(now)
    # let the timers run after the last input (silences, holds, quiet periods), at most TAIL_S
    t = ordered[-1].time if ordered else until
    end = min(until, t + timedelta(seconds=TAIL_S))
    while t < end:
        t = min(end, t + timedelta(seconds=1))
        detector.tick(now=t.timestamp())
        drain(t)
    return box


@dataclass(frozen=True)
class Difference:
    node: str
    kind: (
        str  # earlier_detection, later_detection, not_detected, new_incident, earlier_identification,
        # later_identification, not_identified, newly_identified, other_cause, other_action, blocked_action
    )
    recorded: str | None
    what_if: str | None
    delta_s: float | None
    at: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class WhatIfOutcome:
    rules: str
    differences: list[Difference]
    timeline: Timeline
    sandbox: Sandbox
    open_before: int = 0  # cloud events open when the window began, known to the sandbox from its start
    earlier_anomalies: int = 0  # sandbox anomalies of those events with no recorded one in the window: left out

    def to_dict(self) -> dict[str, Any]:
        s = self.timeline.summary
        return {
            "rules": self.rules,
            "differences": [d.to_dict() for d in self.differences],
            "ttd_s": s.ttd_s.model_dump(),
            "tti_s": s.tti_s.model_dump(),
            "incidents": s.counts.incidents,
            "would_publish": {"anomalies": len(self.sandbox.anomalies), "diagnoses": len(self.sandbox.diagnoses)},
            "open_before_window": {"cloud_events": self.open_before, "anomalies_left_out": self.earlier_anomalies},
        }


def _overlaps(a: Incident, b: Incident) -> bool:
    slack = timedelta(seconds=MATCH_SLACK_S)
    a_end = a.recovered_at or datetime.max.replace(tzinfo=a.onset.tzinfo)
    b_end = b.recovered_at or datetime.max.replace(tzinfo=b.onset.tzinfo)
    return a.onset - slack <= b_end and b.onset - slack <= a_end


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _first_action(inc: Incident, plans: dict[str, tuple[str, bool, tuple[str, ...]]] | None) -> tuple[str, bool] | None:
    if plans is not None:
        for d in inc.diagnoses:
            if not d.resolved and d.id in plans:
                action, approval, _ = plans[d.id]
                return action, approval
        return None
    real = [a for a in inc.actions if a.action not in ("none",)]
    if not real:
        return None
    first = real[0]
    # the plan's side only: waiting for a person's approval. A `blocked` record is a live check (a budget, the
    # storm brake, the disruption rate, a lease) the sandbox does not run: counting it made every budget
    # refusal an `unblocked_action` under unchanged rules
    needs_approval = any(p.phase == "awaiting_approval" for p in first.phases)
    return first.action, needs_approval


def _identification(rec: Incident, match: Incident, at: str) -> list[Difference]:
    """When the first diagnosis came (tti), if that differs: a rule change that delays or hastens the verdict
    (a longer node_down hold, a crash-report wait) without changing detection, cause or action."""
    ri, wi = rec.identified_at, match.identified_at
    if ri is None and wi is None:
        return []
    if ri is None or wi is None:
        kind = "not_identified" if wi is None else "newly_identified"
        return [Difference(rec.node, kind, _iso(ri) if ri else None, _iso(wi) if wi else None, None, at)]
    delta = round((wi - ri).total_seconds(), 3)
    if abs(delta) < TIME_TOLERANCE_S:
        return []
    kind = "earlier_identification" if delta < 0 else "later_identification"
    return [Difference(rec.node, kind, _iso(ri), _iso(wi), delta, at)]


def compare(
    recorded: Timeline, what_if: Timeline, *, plans: dict[str, tuple[str, bool, tuple[str, ...]]]
) -> list[Difference]:
    """Every decision that differs: detection time, detection at all, cause, first action or its blocking."""
    out: list[Difference] = []
    used: set[str] = set()
    for rec in recorded.incidents:
        match = next(
            (
                w
                for w in what_if.incidents
                if w.incident_id not in used and (w.cluster, w.node) == (rec.cluster, rec.node) and _overlaps(rec, w)
            ),
            None,
        )
        at = _iso(rec.onset)
        if match is None:
            out.append(Difference(rec.node, "not_detected", ",".join(rec.kinds), None, None, at))
            continue
        used.add(match.incident_id)
        delta = round((match.detected_at - rec.detected_at).total_seconds(), 3)
        if abs(delta) < TIME_TOLERANCE_S:
            pass  # the same detection
        elif delta < 0:
            out.append(
                Difference(rec.node, "earlier_detection", _iso(rec.detected_at), _iso(match.detected_at), delta, at)
            )
        elif delta > 0:
            out.append(
                Difference(rec.node, "later_detection", _iso(rec.detected_at), _iso(match.detected_at), delta, at)
            )
        out += _identification(rec, match, at)
        if rec.cause != match.cause:
            out.append(Difference(rec.node, "other_cause", rec.cause, match.cause, None, at))
        rec_action = _first_action(rec, None)
        new_action = _first_action(match, plans)
        if rec_action is not None or new_action is not None:
            ra, rb = rec_action or ("none", False)
            na, nb = new_action or ("none", False)
            if ra != na:
                out.append(Difference(rec.node, "other_action", ra, na, None, at))
            elif rb != nb:
                out.append(Difference(rec.node, "blocked_action" if nb else "unblocked_action", ra, na, None, at))
    for w in what_if.incidents:
        if w.incident_id not in used:
            out.append(Difference(w.node, "new_incident", None, ",".join(w.kinds), None, _iso(w.onset)))
    out.sort(key=lambda d: (d.at, d.node, d.kind))
    return out


def run_what_if(*, recording: Recording, recorded: Timeline, rules: WhatIfRules) -> WhatIfOutcome:
    inputs: list[NodeProbe | CloudSystemEvent | RemediationRecord] = [
        m for m in recording.messages if isinstance(m, NodeProbe | CloudSystemEvent | RemediationRecord)
    ]
    box = run_sandbox(
        inputs=inputs,
        rules=rules,
        until=recording.until,
        open_before=recording.open_before,
        audit_before=recording.audit_before,
        crashes=recording.crashes,
    )
    # the anomalies raised by the cloud events open when the window began (their evidence names the event's
    # report), when the window holds no recorded anomaly of theirs (the live one was stored before --since):
    # not compared, not in the figures. One the window does hold (it resolved inside it) is compared as usual.
    opened = {e.id for e in recording.open_before}
    recorded_keys = {m.anomaly_key for m in recording.messages if isinstance(m, Anomaly)}
    earlier = {a.id for a in box.anomalies if opened.intersection(a.probe_ids) and a.anomaly_key not in recorded_keys}
    messages: list[TimelineMessage] = [m for m in recording.messages if isinstance(m, NodeProbe | CloudSystemEvent)]
    messages += [a for a in box.anomalies if a.id not in earlier]
    messages += [d for d in box.diagnoses if not earlier.issuperset(d.anomaly_ids)]
    timeline = build_timeline(messages)
    return WhatIfOutcome(
        rules=rules.source,
        differences=compare(recorded, timeline, plans=box.plans),
        timeline=timeline,
        sandbox=box,
        open_before=len(recording.open_before),
        earlier_anomalies=len(earlier),
    )


def render_differences(outcome: WhatIfOutcome, *, console: Console) -> None:
    table = Table(
        title=f"what-if {outcome.rules}: {len(outcome.differences)} decisions differ (sandbox, nothing published)"
    )
    for col in ("onset", "node", "difference", "recorded", "what-if", "delta s"):
        table.add_column(col)
    for d in outcome.differences:
        table.add_row(
            d.at, d.node, d.kind, d.recorded or "—", d.what_if or "—", "" if d.delta_s is None else f"{d.delta_s:+.1f}"
        )
    console.print(table)
    if outcome.open_before:
        console.print(
            f"{outcome.open_before} cloud event(s) open when the window began were known to the sandbox from its "
            f"start; {outcome.earlier_anomalies} anomaly(ies) they raised there, recorded before the window, "
            "are left out of the comparison",
            highlight=False,
        )
